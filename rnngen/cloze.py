"""The bidirectional (cloze) model: p(x_t | every other token of the line).

Two stacks of the same cell read a line in opposite directions, each from the line's
boundary: the forward stack (layers ``l<k>``, as in the language model) reads
``<eos> x_1 .. x_{n-1}``, the backward stack (layers ``r<k>``) reads ``<eos> x_n .. x_2``.
For position t the output layer sees the sum of the forward stack's top state after
x_{t-1} and the backward stack's top state after x_{t+1}:

    f_t = forward stack after <eos> x_1 .. x_{t-1}
    b_t = backward stack after <eos> x_n .. x_{t+1}
    p(x_t | x_1 .. x_{t-1}, x_{t+1} .. x_n) = softmax((f_t + b_t) V + c)

Neither stack ever reads x_t on its way to position t, and the directions meet only in
the output layer, so the answer cannot leak into its own prediction (a deep bidirectional
RNN that feeds both directions into each next layer would let position t see x_t through
the layer above). The sum, rather than the concatenation [f_t; b_t], keeps the output
layer the language model's own: the same shapes (tying and the class softmax work as
they do there) and the same cost per token, the largest part of a step for a large
vocabulary.

Lines are the unit of training: the training stream is cut at ``<eos>`` into lines, lines
of the same length are batched together (so there is no padding), and a line longer than
``bptt`` tokens is cut into windows of ``bptt`` tokens that overlap by half, each read as
a line of its own (the words of the overlap are trained twice). Scoring and filling read
whole lines of any length.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .cells import make_cell
from .config import ModelConfig, RnngenError
from .lanes import SERIAL, Lanes
from .model import Model

MAX_ROWS = 512          # (position, line) rows per output-layer product at inference
BATCH_LINES = 64        # lines read side by side at inference


class ClozeModel(Model):
    """A :class:`Model` with a second, backward stack; ``inputs``/``targets`` of
    :meth:`loss_and_grads` are a batch of whole lines of the same length: ``targets`` the
    lines' tokens (T, B), ``inputs`` the same shifted down by one behind ``<eos>``, as the
    language model reads them."""

    @classmethod
    def init(cls, config: ModelConfig, seed: int = 0, dtype=np.float32) -> ClozeModel:
        """The forward stack and output layer as :meth:`Model.init` makes them for ``seed``,
        the backward stack drawn after them."""
        params = Model.init(replace(config, direction="forward"), seed, dtype).params
        rng = np.random.default_rng([seed, 1])
        cell = make_cell(config.cell, config.activation)
        n_in = config.embed_size
        for layer in range(config.layers):
            for k, v in cell.init_params(n_in, config.hidden, rng, dtype).items():
                params[f"r{layer}.{k}"] = v
            n_in = config.hidden
        return cls(config, {k: params[k].copy() for k in config.param_shapes()})

    def dropout_masks(self, rng: np.random.Generator, T: int, B: int):
        """One list of masks per direction (see :meth:`Model.dropout_masks`)."""
        return super().dropout_masks(rng, T, B), super().dropout_masks(rng, T, B)

    def tops(self, inputs: np.ndarray, targets: np.ndarray, masks=None):
        """The output layer's input f_t + b_t (T, B, H) for each target, and both stacks'
        caches with their inputs: ((forward inputs, caches), (backward inputs, caches))."""
        T, B = targets.shape
        back = np.empty_like(inputs)                 # <eos> x_n .. x_2
        back[0] = inputs[0]
        back[1:] = targets[::-1][:-1]
        mf, mb = masks if masks is not None else (None, None)
        zero = self.zero_state(B)
        f, fcaches, _ = self.hidden_forward(inputs, zero, mf, "l")
        b, bcaches, _ = self.hidden_forward(back, zero, mb, "r")
        return f + b[::-1], ((inputs, fcaches, mf), (back, bcaches, mb))

    def loss_and_grads(self, inputs, targets, state, masks=None, lanes: Lanes = SERIAL, batch=None, before=None):
        """Summed NLL of every token of the lines, the gradients of (summed NLL / lines), and
        ``state`` unchanged: both stacks start from zeros at each line's boundary. ``batch``
        and ``before`` (:meth:`Model.loss_and_grads`) do not apply: lines are not split over
        ranks and a cloze model has no n-gram features."""
        T, B = targets.shape
        N = T * B
        with lanes:
            top, stacks = self.tops(inputs, targets, masks)
            logp, dtop, grads = self.output.loss_grad(self.params, top.reshape(N, -1), targets.reshape(-1),
                                                      1.0 / B, lanes)
            dtop = dtop.reshape(T, B, -1)
            dxs = [self._stack_backward(name, stack, d, grads, lanes)
                   for name, stack, d in zip("lr", stacks, (dtop, np.ascontiguousarray(dtop[::-1])))]
        ids = np.concatenate([ids.reshape(-1) for ids, _, _ in stacks])
        self.add_embed_grad(grads, ids, np.concatenate([dx.reshape(N, -1) for dx in dxs]))
        return -float(logp.sum()), {k: grads[k] for k in self.params}, state

    def _stack_backward(self, stack: str, cached, dx, grads: dict, lanes: Lanes):
        """BPTT through one direction's layers (``cached``: what :meth:`tops` returns for it),
        top down; returns dL/d(the embedding's output)."""
        _, caches, masks = cached
        zero = self.zero_state(dx.shape[1])
        for layer in range(self.config.layers - 1, -1, -1):
            if masks is not None:
                dx = dx * masks[layer + 1]
            dx, lg, _ = self.cell.backward(self.layer_params(layer, stack), caches[layer], dx, zero[layer], lanes)
            grads.update({f"{stack}{layer}.{k}": v for k, v in lg.items()})
        return dx * masks[0] if masks is not None else dx

    def line_logprobs(self, lines: np.ndarray) -> np.ndarray:
        """log p(x_t | the rest of the line) (T, B) for lines of one length (T, B), no gradients."""
        top = self.line_tops(lines)
        T, B = lines.shape
        flat, ids = top.reshape(T * B, -1), lines.reshape(-1)
        out = np.empty(T * B, dtype=np.float64)
        for a in range(0, T * B, MAX_ROWS):
            out[a:a + MAX_ROWS] = self.output.logprobs(self.params, flat[a:a + MAX_ROWS], ids[a:a + MAX_ROWS])
        return out.reshape(T, B)

    def line_tops(self, lines: np.ndarray, eos: int = 0) -> np.ndarray:
        """The output layer's input (T, B, H) at every position of lines of one length (T, B)."""
        inputs = np.empty_like(lines)
        inputs[0] = eos
        inputs[1:] = lines[:-1]
        return self.tops(inputs, lines)[0]



def build_model(config: ModelConfig, params: dict[str, np.ndarray]) -> Model:
    """The model a configuration describes: a :class:`ClozeModel` when bidirectional."""
    return (ClozeModel if config.bidirectional else Model)(config, params)


def init_model(config: ModelConfig, seed: int = 0, dtype=np.float32) -> Model:
    """A freshly initialised model of either kind (:meth:`Model.init`)."""
    return (ClozeModel if config.bidirectional else Model).init(config, seed, dtype)


# --- lines ------------------------------------------------------------------------------

def split_lines(ids: np.ndarray, eos: int = 0) -> list[np.ndarray]:
    """The lines of an id stream (each closed by ``eos``; a last line may lack it), without
    their ``eos``; empty lines are left out: they hold nothing to predict."""
    ends = np.flatnonzero(np.asarray(ids) == eos)
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(ids)]))
    return [np.asarray(ids[a:b], dtype=np.int32) for a, b in zip(starts, stops) if b > a]


def windows(line: np.ndarray, length: int) -> list[np.ndarray]:
    """``line`` if it has at most ``length`` tokens, else windows of ``length`` tokens that
    overlap by half, the last one ending with the line."""
    n = len(line)
    if n <= length:
        return [line]
    stride = max(1, length // 2)
    starts = list(range(0, n - length, stride)) + [n - length]
    return [line[s:s + length] for s in starts]


class LineBatches:
    """A cloze model's training data: batches of up to ``batch_size`` lines (or windows of
    lines, see :func:`windows`) of one length, in an order shuffled once by ``seed``.
    Read like :class:`rnngen.train.Chunks`: ``count`` batches, ``chunk(i)`` gives the i-th
    as (inputs, targets), (T, B) each."""

    def __init__(self, ids: np.ndarray, batch_size: int, max_length: int, seed: int = 0, eos: int = 0):
        rng = np.random.default_rng([seed, 2])
        by_length: dict[int, list[np.ndarray]] = {}
        for line in split_lines(ids, eos):
            for piece in windows(line, max_length):
                by_length.setdefault(len(piece), []).append(piece)
        self.batches = []
        for length in sorted(by_length):
            pieces = by_length[length]
            order = rng.permutation(len(pieces))
            for a in range(0, len(pieces), batch_size):
                self.batches.append(np.stack([pieces[i] for i in order[a:a + batch_size]], axis=1))
        if not self.batches:
            raise RnngenError("the training corpus has no non-empty line to train a bidirectional model on")
        self.order = rng.permutation(len(self.batches))
        self.eos = eos

    @property
    def count(self) -> int:
        return len(self.batches)

    def chunk(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        targets = self.batches[self.order[i]]
        inputs = np.empty_like(targets)
        inputs[0] = self.eos
        inputs[1:] = targets[:-1]
        return inputs, targets

    def before(self, i: int, n: int) -> None:
        """No inputs before a batch of lines: a cloze model has no n-gram features."""
        return None


def group_by_length(lines: list[np.ndarray], batch: int = BATCH_LINES):
    """(indices, (T, B) array) for the non-empty ``lines`` in batches of one length."""
    by_length: dict[int, list[int]] = {}
    for i, line in enumerate(lines):
        if len(line):
            by_length.setdefault(len(line), []).append(i)
    for length in sorted(by_length):
        idx = by_length[length]
        for a in range(0, len(idx), batch):
            group = idx[a:a + batch]
            yield group, np.stack([lines[i] for i in group], axis=1).astype(np.int32)


def lines_logprobs(model: ClozeModel, lines: list[np.ndarray]) -> list[np.ndarray]:
    """log p(x_t | the rest of its line) for every token of every line (float64 arrays)."""
    out = [np.zeros(0)] * len(lines)
    for group, batch in group_by_length(lines):
        lp = model.line_logprobs(batch)
        for col, i in enumerate(group):
            out[i] = lp[:, col]
    return out


def cloze_stream_logprob(model: ClozeModel, ids: np.ndarray) -> tuple[float, int]:
    """Summed log p(x_t | the rest of its line) over the lines of an id stream, and the
    token count (``<eos>`` not counted: it is never predicted): the cloze perplexity."""
    lps = lines_logprobs(model, split_lines(ids))
    return float(sum(lp.sum() for lp in lps)), int(sum(len(lp) for lp in lps))
