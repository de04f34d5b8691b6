"""The language model: embedding -> stacked recurrent layers -> softmax over the vocabulary.

    e_t = E[x_t]                          (embedding lookup == onehot(x_t) E)
    h_t = cell(e_t, h_{t-1})              (one per layer; layer k's output is k+1's input)
    o_t = softmax(h_t V + c + sum_n d[b_n + .])   (the whole chunk's logits are one matrix product;
                                          the hashed n-gram features d are optional, rnngen.maxent)

Training loss for a chunk is the summed negative log-likelihood of its targets divided by
the batch size (Zaremba et al. 2014), so SGD with lr 1 and clip 5 matches their setup.

Notation (textbook -> code; ``rnngen/reference.py`` writes out every formula in NumPy).
The code multiplies row vectors, one row per stream of the batch: ``x_t U`` with U of shape
(n_in, G·H) is the textbook's ``U x_t`` with U transposed. G gate blocks sit side by side
in the columns: 1 (RNN), 3 (GRU [r, z, n]), 4 (LSTM [i, f, g, o]).

    textbook  code                   shape          meaning
    x_t       inputs[t]              (B,)           token ids at step t; targets[t] = x_{t+1}
    E         embed                  (|V|, D)       embedding: E[x_t] = onehot(x_t) E
    U         l<k>.W_x               (n_in, G·H)    layer k's input weights (n_in = D, then H)
    W         l<k>.W_h               (H, G·H)       layer k's recurrent weights
    b         l<k>.b                 (G·H,)         layer k's bias
    b_hn      l<k>.b_hn              (H,)           GRU only: the bias inside r*(h W_n + b_hn)
    s_t, h_t  h[t]                   (B, H)         hidden state; c_t: the LSTM's cell state
    V         out.W (tied: embed.T)  (H, |V|)       output weights
    c         out.b                  (|V|,)         output bias
    V_C, c_C  cls.W, cls.b           (H, C), (C,)   class softmax: p(k | h) = softmax(h V_C + c_C)
    m_k       masks[k]               (T, B, D|H)    inverted-dropout masks: 0 or 1/keep
    d         direct                 (size,)        hashed n-gram weights (rnngen.maxent)
    b_n       bases[..., n-2]        (T, B, K)      hash of the n-gram context x_t .. x_{t-n+2}
    state     state                  (L, P, B, H)   carried between chunks: P = 1 [h], 2 [h, c]

T steps per chunk, B streams, L layers, D the embedding size, H the hidden size, C the
number of classes, |V| the vocabulary.
"""

from __future__ import annotations

import numpy as np

from .cells import make_cell
from .config import ModelConfig
from .kernels import scatter_add_rows
from .lanes import SERIAL, Lanes
from .maxent import contexts, history
from .rowgrad import RowGrad
from .softmax import OUTPUTS

__all__ = ["Model", "ModelConfig"]      # ModelConfig's home is rnngen.config; importable here too


class Model:
    """Parameters plus the forward and backward passes. Dtype follows the parameters.
    The model owns ``params``: the output layer may store some of them together (views of
    one array, see FullSoftmax.prepare); update them in place."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray]):
        self.config = config
        self.params = params
        self.cell = make_cell(config.cell, config.activation)
        self.output = OUTPUTS[config.softmax](config)
        self.output.prepare(params)

    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, dtype=np.float32) -> Model:
        rng = np.random.default_rng(seed)
        cell = make_cell(config.cell, config.activation)
        p = {"embed": rng.uniform(-0.1, 0.1, (config.vocab_size, config.embed_size)).astype(dtype)}
        n_in = config.embed_size
        for layer in range(config.layers):
            for k, v in cell.init_params(n_in, config.hidden, rng, dtype).items():
                p[f"l{layer}.{k}"] = v
            n_in = config.hidden
        for name, shape in config.output_shapes().items():
            zero = name.endswith(".b") or name == "direct"
            p[name] = (np.zeros(shape) if zero else rng.uniform(-0.1, 0.1, shape)).astype(dtype)
        return cls(config, p)

    @property
    def dtype(self):
        return self.params["embed"].dtype

    def num_params(self) -> int:
        return sum(v.size for v in self.params.values())

    def zero_state(self, batch: int) -> np.ndarray:
        """Initial recurrent state: (layers, state parts, batch, hidden)."""
        return np.zeros(self.config.state_shape(batch), dtype=self.dtype)

    def layer_params(self, layer: int, stack: str = "l") -> dict[str, np.ndarray]:
        """Layer ``layer``'s parameters under their names in the cell; ``stack`` "r" names
        a bidirectional model's backward stack (:mod:`rnngen.cloze`)."""
        prefix = f"{stack}{layer}."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> list[np.ndarray]:
        """Inverted-dropout masks for each non-recurrent connection: the embedding output,
        between layers and before the softmax (Zaremba et al. 2014); never the recurrence."""
        keep = 1.0 - self.config.dropout
        sizes = [self.config.embed_size] + [self.config.hidden] * self.config.layers
        return [(rng.random((T, B, d)) < keep).astype(self.dtype) / self.dtype.type(keep)
                for d in sizes]

    def hidden_forward(self, inputs: np.ndarray, state: np.ndarray, masks=None, stack: str = "l"):
        """Top-layer outputs (T, B, H) for token ids (T, B); also caches and final state.
        ``stack``: which stack of layers (see :meth:`layer_params`)."""
        x = self.params["embed"][inputs]
        if masks is not None:
            x = x * masks[0]
        caches, new_state = [], np.empty_like(state)
        for layer in range(self.config.layers):
            x, cache, new_state[layer] = self.cell.forward(self.layer_params(layer, stack), x, state[layer])
            caches.append(cache)
            if masks is not None:
                x = x * masks[layer + 1]
        return x, caches, new_state

    @property
    def history(self) -> int:
        """Inputs before a chunk that its n-gram contexts read (0 without n-gram features)."""
        return history(self.config.direct_order)

    def contexts(self, inputs: np.ndarray, before: np.ndarray | None = None) -> np.ndarray | None:
        """The n-gram context bases (T, B, K) of token ids (T, B) (:func:`rnngen.maxent.contexts`),
        or None without n-gram features. ``before`` (history, B): the inputs before the chunk,
        oldest first; None: the chunk starts a stream or a line (after ``<eos>``)."""
        cfg = self.config
        return contexts(inputs, cfg.direct_order, cfg.direct_size, before) if cfg.direct_order else None

    def next_logprobs(self, top: np.ndarray, bases: np.ndarray | None = None) -> np.ndarray:
        """log p(w | h) over the whole vocabulary for rows of top-layer states (N, H) -> (N, V);
        ``bases`` (N, K): their n-gram contexts (:meth:`contexts`), with n-gram features."""
        return self.output.all_logprobs(self.params, top, bases)

    def token_logprobs(self, inputs: np.ndarray, targets: np.ndarray, state: np.ndarray, before=None):
        """log p(target | history) for each position (T, B), and the final state. No gradients."""
        top, _, new_state = self.hidden_forward(inputs, state)
        return self.top_logprobs(top, targets, self.contexts(inputs, before)), new_state

    def top_logprobs(self, top: np.ndarray, targets: np.ndarray, bases: np.ndarray | None = None) -> np.ndarray:
        """log p(target | top-layer state) for states (T, B, H) and targets (T, B); ``bases``
        (T, B, K): the positions' n-gram contexts, with n-gram features."""
        T, B = targets.shape
        flat = None if bases is None else bases.reshape(T * B, -1)
        return self.output.logprobs(self.params, top.reshape(T * B, -1), targets.reshape(-1), flat).reshape(T, B)

    def loss_and_grads(self, inputs, targets, state, masks=None, lanes: Lanes = SERIAL, batch: int | None = None,
                       before: np.ndarray | None = None):
        """Summed NLL of the chunk, gradients of (summed NLL / batch), and the final state.
        The embedding's gradient is a :class:`rnngen.rowgrad.RowGrad` (only the chunk's tokens'
        rows) unless the weights are tied; ``np.asarray`` makes any gradient dense.

        ``inputs``/``targets`` are token ids (T, B); ``state`` comes from the previous chunk
        and is treated as a constant (truncated BPTT). ``masks`` are dropout masks from
        :meth:`dropout_masks`, or None for no dropout. ``lanes`` (:class:`rnngen.lanes.Lanes`)
        spreads the step over threads; by default it runs on the calling thread. ``batch`` is
        the batch size the loss is divided by (default: the chunk's B; a rank of a
        data-parallel job passes the global batch's, see :mod:`rnngen.distributed`). ``before``:
        the inputs before the chunk, for the n-gram features (:meth:`contexts`); their
        gradient "direct" is a :class:`rnngen.maxent.HashedGrad`.
        """
        T, B = inputs.shape
        scale = 1.0 / (batch or B)
        N = T * B
        p, cfg = self.params, self.config
        bases = self.contexts(inputs, before)
        bases = None if bases is None else bases.reshape(N, -1)
        with lanes:
            if lanes.count > 1 and cfg.softmax == "full" and T > 1:
                caches, new_state, (logp, dtop, grads) = self._forward_in_halves(inputs, targets, state, masks, lanes,
                                                                                   scale, bases)
            else:
                top, caches, new_state = self.hidden_forward(inputs, state, masks)
                logp, dtop, grads = self.output.loss_grad(p, top.reshape(N, -1), targets.reshape(-1), scale, lanes,
                                                          bases)
            dx = dtop.reshape(T, B, -1)
            for layer in range(cfg.layers - 1, -1, -1):
                if masks is not None:
                    dx = dx * masks[layer + 1]
                dx, lg, _ = self.cell.backward(self.layer_params(layer), caches[layer], dx, state[layer], lanes)
                grads.update({f"l{layer}.{k}": v for k, v in lg.items()})
        if masks is not None:
            dx = dx * masks[0]
        self.add_embed_grad(grads, inputs.reshape(-1), dx.reshape(N, -1))
        return -float(logp.sum()), {k: grads[k] for k in p}, new_state

    def add_embed_grad(self, grads: dict, ids: np.ndarray, dx: np.ndarray) -> None:
        """dE[x_t] += dx_t for the rows ``dx`` (N, D) read at token ids ``ids`` (N,): a
        RowGrad, or added to the output layer's share in ``grads["embed"]`` when tied."""
        dx = np.ascontiguousarray(dx)
        tied = grads.get("embed")                            # the output layer's share, if tied
        if tied is None:
            grads["embed"] = RowGrad.of_rows(ids, dx, self.params["embed"].shape)
        else:
            grads["embed"] = np.ascontiguousarray(tied)
            scatter_add_rows(grads["embed"], ids, dx)

    def _forward_in_halves(self, inputs, targets, state, masks, lanes: Lanes, scale: float, bases=None):
        """The forward pass and the output layer of a training step on two lanes, the chunk's
        time steps in two halves: the worker runs layer l+1 on the first half while this
        thread runs layer l on the second, then the output layer of the first half while this
        thread finishes the top layer and does the output layer of the second half. The input
        projections of the second halves are made ahead, where a thread would otherwise wait:
        layer 0's by the worker while this thread runs layer 0's first half, layer l+1's by
        this thread once it has run layer l. Returns (caches, final state, what
        output.loss_grad_rows' result returns)."""
        T, B = inputs.shape
        L, half = self.config.layers, T // 2
        params = [self.layer_params(layer) for layer in range(L)]
        outs = [self.cell.buffers(T, B, self.config.hidden, self.dtype) for _ in range(L)]
        xs = [self.params["embed"][inputs]]                        # each layer's input; xs[L]: the top
        if masks is not None:
            xs[0] *= masks[0]
        xs += [out["h"] if masks is None else np.empty_like(out["h"]) for out in outs]
        rows, result = self.output.loss_grad_rows(self.params, xs[L].reshape(T * B, -1), targets.reshape(-1), scale,
                                                  bases)
        ahead = {}                                                 # layer -> its second half's x U + b

        def project_second_half(k):
            ahead[k] = self.cell.project(params[k], xs[k], half, T)

        def layer(k, a, b):
            self.cell.steps(params[k], xs[k], outs[k], a, b, state[k], ahead.pop(k) if a == half else None)
            if masks is not None:
                np.multiply(outs[k]["h"][a:b], masks[k + 1][a:b], out=xs[k + 1][a:b])

        lanes.submit(project_second_half, 0)
        layer(0, 0, half)
        lanes.drain()
        for k in range(L - 1):
            lanes.submit(layer, k + 1, 0, half)
            layer(k, half, T)
            project_second_half(k + 1)
            lanes.drain()
        lanes.submit(rows, 0, half * B)
        layer(L - 1, half, T)
        rows(half * B, T * B)
        lanes.drain()                                            # dL/dtop complete: backward may start
        caches, new_state = [], np.empty_like(state)
        for k in range(L):
            _, cache, new_state[k] = self.cell.finish(xs[k], outs[k], state[k])
            caches.append(cache)
        return caches, new_state, result(lanes)
