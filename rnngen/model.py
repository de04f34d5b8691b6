"""The language model: embedding -> stacked recurrent layers -> softmax over the vocabulary.

    e_t = E[x_t]                          (embedding lookup == U x_t for one-hot x_t)
    h_t = cell(e_t, h_{t-1})              (one per layer; layer k's output is k+1's input)
    o_t = softmax(h_t V + c)              (the whole chunk's logits are one matrix product)

Training loss for a chunk is the summed negative log-likelihood of its targets divided by
the batch size (Zaremba et al. 2014), so SGD with lr 1 and clip 5 matches their setup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .cells import CELLS, make_cell
from .errors import RnngenError
from .kernels import scatter_add_rows


@dataclass
class ModelConfig:
    """Architecture. ``embed`` 0 means "same as hidden"."""

    vocab_size: int
    cell: str = "rnn"
    hidden: int = 128
    layers: int = 1
    embed: int = 0
    activation: str = "tanh"
    dropout: float = 0.0
    tie_weights: bool = False

    def __post_init__(self):
        if self.cell not in CELLS:
            raise RnngenError(f"unknown cell {self.cell!r} (choose from {', '.join(CELLS)})")
        if self.activation not in ("tanh", "relu"):
            raise RnngenError(f"unknown activation {self.activation!r} (choose tanh or relu)")
        for name in ("vocab_size", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise RnngenError(f"--{name.replace('_', '-')} must be at least 1")
        if self.embed < 0:
            raise RnngenError("--embed must be at least 1 (or 0 for the hidden size)")
        if not 0.0 <= self.dropout < 1.0:
            raise RnngenError("--dropout must be in [0, 1)")
        if self.tie_weights and self.embed_size != self.hidden:
            raise RnngenError("--tie-weights needs --embed equal to --hidden")

    @property
    def embed_size(self) -> int:
        return self.embed or self.hidden

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in a fixed order."""
        cell = make_cell(self.cell, self.activation)
        shapes = {"embed": (self.vocab_size, self.embed_size)}
        n_in = self.embed_size
        for layer in range(self.layers):
            for k, s in cell.param_shapes(n_in, self.hidden).items():
                shapes[f"l{layer}.{k}"] = s
            n_in = self.hidden
        if not self.tie_weights:
            shapes["out.W"] = (self.hidden, self.vocab_size)
        shapes["out.b"] = (self.vocab_size,)
        return shapes


class Model:
    """Parameters plus the forward and backward passes. Dtype follows the parameters."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray]):
        self.config = config
        self.params = params
        self.cell = make_cell(config.cell, config.activation)

    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, dtype=np.float32) -> "Model":
        rng = np.random.default_rng(seed)
        cell = make_cell(config.cell, config.activation)
        p = {"embed": rng.uniform(-0.1, 0.1, (config.vocab_size, config.embed_size)).astype(dtype)}
        n_in = config.embed_size
        for layer in range(config.layers):
            for k, v in cell.init_params(n_in, config.hidden, rng, dtype).items():
                p[f"l{layer}.{k}"] = v
            n_in = config.hidden
        if not config.tie_weights:
            p["out.W"] = rng.uniform(-0.1, 0.1, (config.hidden, config.vocab_size)).astype(dtype)
        p["out.b"] = np.zeros(config.vocab_size, dtype=dtype)
        return cls(config, p)

    @property
    def dtype(self):
        return self.params["out.b"].dtype

    def num_params(self) -> int:
        return sum(v.size for v in self.params.values())

    def zero_state(self, batch: int) -> np.ndarray:
        """Initial recurrent state: (layers, state parts, batch, hidden)."""
        c = self.config
        return np.zeros((c.layers, self.cell.state_parts, batch, c.hidden), dtype=self.dtype)

    def out_weight(self) -> np.ndarray:
        """V of o_t = softmax(h_t V + c), shape (hidden, vocab); the embedding if tied."""
        return self.params["embed"].T if self.config.tie_weights else self.params["out.W"]

    def layer_params(self, layer: int) -> dict[str, np.ndarray]:
        prefix = f"l{layer}."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> list[np.ndarray]:
        """Inverted-dropout masks for each non-recurrent connection: the embedding output,
        between layers and before the softmax (Zaremba et al. 2014); never the recurrence."""
        keep = 1.0 - self.config.dropout
        sizes = [self.config.embed_size] + [self.config.hidden] * self.config.layers
        return [(rng.random((T, B, d)) < keep).astype(self.dtype) / self.dtype.type(keep)
                for d in sizes]

    def hidden_forward(self, inputs: np.ndarray, state: np.ndarray, masks=None):
        """Top-layer outputs (T, B, H) for token ids (T, B); also caches and final state."""
        x = self.params["embed"][inputs]
        if masks is not None:
            x = x * masks[0]
        caches, new_state = [], np.empty_like(state)
        for layer in range(self.config.layers):
            x, cache, new_state[layer] = self.cell.forward(self.layer_params(layer), x, state[layer])
            caches.append(cache)
            if masks is not None:
                x = x * masks[layer + 1]
        return x, caches, new_state

    def logits(self, top: np.ndarray) -> np.ndarray:
        """h V + c for rows of top-layer states (N, H) -> (N, V)."""
        out = top @ self.out_weight()
        out += self.params["out.b"]
        return out

    def token_logprobs(self, inputs: np.ndarray, targets: np.ndarray, state: np.ndarray):
        """log p(target | history) for each position (T, B), and the final state. No gradients."""
        T, B = inputs.shape
        top, _, new_state = self.hidden_forward(inputs, state)
        logits = self.logits(top.reshape(T * B, -1))
        return log_softmax_pick(logits, targets.reshape(-1)).reshape(T, B), new_state

    def loss_and_grads(self, inputs, targets, state, masks=None):
        """Summed NLL of the chunk, gradients of (summed NLL / batch), and the final state.

        ``inputs``/``targets`` are token ids (T, B); ``state`` comes from the previous chunk
        and is treated as a constant (truncated BPTT). ``masks`` are dropout masks from
        :meth:`dropout_masks`, or None for no dropout.
        """
        T, B = inputs.shape
        N = T * B
        p, cfg = self.params, self.config
        top, caches, new_state = self.hidden_forward(inputs, state, masks)
        top2 = top.reshape(N, -1)
        probs = self.logits(top2)
        logp = softmax_xent_grad(probs, targets.reshape(-1), 1.0 / B)   # probs -> dL/dlogits
        dlogits = probs
        grads = {"embed": np.zeros_like(p["embed"])}
        d_out_w = top2.T @ dlogits
        if cfg.tie_weights:
            grads["embed"] += d_out_w.T
        else:
            grads["out.W"] = d_out_w
        grads["out.b"] = dlogits.sum(axis=0)
        dx = (dlogits @ self.out_weight().T).reshape(T, B, -1)
        for layer in range(cfg.layers - 1, -1, -1):
            if masks is not None:
                dx = dx * masks[layer + 1]
            dx, lg, _ = self.cell.backward(self.layer_params(layer), caches[layer], dx, state[layer])
            for k, v in lg.items():
                grads[f"l{layer}.{k}"] = v
        if masks is not None:
            dx = dx * masks[0]
        scatter_add_rows(grads["embed"], inputs.reshape(-1), np.ascontiguousarray(dx.reshape(N, -1)))
        return -float(logp.sum()), {k: grads[k] for k in p}, new_state


def log_softmax_pick(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[i, targets[i]] for each row, computed stably. Destroys logits."""
    rows = np.arange(len(targets))
    picked = logits[rows, targets]
    m = logits.max(axis=1)
    logits -= m[:, None]
    np.exp(logits, out=logits)
    return picked - m - np.log(logits.sum(axis=1))


def softmax_xent_grad(logits: np.ndarray, targets: np.ndarray, scale: float) -> np.ndarray:
    """Per-row log p[target]; turns ``logits`` in place into scale * (softmax - onehot)."""
    rows = np.arange(len(targets))
    picked = logits[rows, targets]
    m = logits.max(axis=1)
    logits -= m[:, None]
    np.exp(logits, out=logits)
    z = logits.sum(axis=1)
    logits *= (scale / z)[:, None].astype(logits.dtype)
    logits[rows, targets] -= logits.dtype.type(scale)
    return picked - m - np.log(z)
