"""Optimisers and global gradient-norm clipping. State is plain arrays, for checkpoints.

Each update is one fused, vectorised pass over a parameter and its gradient (Numba), with
the clipping factor folded in: separate NumPy passes (scale the gradients, form ``lr * g``,
subtract) would each read and write every parameter again. The embedding's gradient
is a :class:`RowGrad`, non-zero only in the rows of the chunk's tokens, and SGD and Adagrad
update only those rows. Big arrays are updated (and their norms taken) in one piece per lane.
"""

from __future__ import annotations

import math

import numpy as np

from .config import OPTIMIZER_NAMES
from .errors import RnngenError
from .jit import SUM_OPTIONS, kernel
from .lanes import SERIAL, Lanes
from .rowgrad import RowGrad

# The kernels' options with reassociation (for the reductions) and no signed zeros; NaN and
# inf keep their meaning, since divergence detection reads them from the gradient norm.
LOOP_OPTIONS = {**SUM_OPTIONS, "fastmath": SUM_OPTIONS["fastmath"] | {"nsz"}}

# Arrays with at least this many values are updated and summed in one piece per lane: the
# output layer's weights (hidden x vocabulary values) would otherwise keep one thread busy alone.
SPLIT_MIN = 1 << 18
# Parameters trained apart, by their own SGD inside the training step: the hashed n-gram
# weights (rnngen.maxent), millions of values of which a step touches a few slices.
APART = ("direct",)


@kernel(**LOOP_OPTIONS)
def _sum_squares(g):
    g = g.ravel()
    acc = 0.0
    for i in range(g.size):                                      # indexed: LLVM vectorises it, not an iterator
        x = np.float64(g[i])
        acc += x * x
    return acc


@kernel(**LOOP_OPTIONS)
def _sgd(p, g, step):
    p, g = p.ravel(), g.ravel()
    for i in range(p.size):
        p[i] -= step * g[i]                                      # θ <- θ - lr·s·g


@kernel(**LOOP_OPTIONS)
def _adagrad(p, g, acc, lr, scale, eps):
    p, g, acc = p.ravel(), g.ravel(), acc.ravel()
    for i in range(p.size):
        gi = scale * g[i]
        acc[i] += gi * gi                                        # G <- G + g²
        p[i] -= lr * gi / (np.sqrt(acc[i]) + eps)                # θ <- θ - lr·g/√G


@kernel(**LOOP_OPTIONS)
def _adam(p, g, m, v, step, scale, beta1, beta2, eps):
    p, g, m, v = p.ravel(), g.ravel(), m.ravel(), v.ravel()
    for i in range(p.size):
        gi = scale * g[i]
        m[i] = beta1 * m[i] + (1 - beta1) * gi                   # m <- β1·m + (1-β1)·g
        v[i] = beta2 * v[i] + (1 - beta2) * gi * gi              # v <- β2·v + (1-β2)·g²
        p[i] -= step * m[i] / (np.sqrt(v[i]) + eps)              # θ <- θ - α_t·m/(√v + ε)


@kernel(**LOOP_OPTIONS)
def _sgd_rows(p, rows, g, step):
    for i in range(rows.size):
        _sgd(p[rows[i]], g[i], step)                             # the rows of θ that g touches


@kernel(**LOOP_OPTIONS)
def _adagrad_rows(p, rows, g, acc, lr, scale, eps):
    for i in range(rows.size):
        _adagrad(p[rows[i]], g[i], acc[rows[i]], lr, scale, eps)


def _pieces(size: int, lanes: Lanes) -> list[slice]:
    """The flat index ranges an array of ``size`` values is handled in: one per lane if big."""
    return [slice(a, b) for a, b in lanes.split(size)] if size >= SPLIT_MIN else [slice(0, size)]


def _flat(a: np.ndarray, part: slice) -> np.ndarray:
    """A view of ``a``'s values ``part`` in C order (parameters and state are contiguous)."""
    return a.reshape(-1)[part]


def _norm_pieces(g: np.ndarray | RowGrad, lanes: Lanes) -> list[np.ndarray]:
    """What global_norm sums for one gradient: a RowGrad's values, or the array (in one piece
    per lane if big)."""
    if isinstance(g, RowGrad):
        return [g.values]
    return [_flat(g, part) for part in _pieces(g.size, lanes)]


def global_norm(grads: dict[str, np.ndarray | RowGrad], lanes: Lanes = SERIAL) -> float:
    """Joint L2 norm of all gradients (inf or nan when any entry is); one task per array (or
    per piece of a big one) on ``lanes``, added up in a fixed order."""
    pieces = [piece for g in grads.values() for piece in _norm_pieces(g, lanes)]
    squares = [0.0] * len(pieces)

    def add(k):
        squares[k] = _sum_squares(pieces[k])

    with lanes:
        for k in range(len(pieces)):
            lanes.submit(add, k)
    return math.sqrt(sum(squares))


def clip_scale(norm: float, max_norm: float) -> float:
    """Factor that brings the joint gradient norm down to ``max_norm`` (0 disables clipping)."""
    return max_norm / (norm + 1e-6) if max_norm > 0 and norm > max_norm else 1.0


class Optimizer:
    """Updates parameters in place. ``state`` maps names to arrays (saved with checkpoints):
    for each parameter ``k`` and each of the class's ``slots``, ``k.<slot>``, shaped as ``k``."""

    slots: tuple[str, ...] = ()
    # Does a zero gradient leave a parameter and its state unchanged? Then a RowGrad's update
    # can skip its zero rows (update_rows) and still equal the dense update.
    zero_is_no_op = True

    def __init__(self, params: dict[str, np.ndarray]):
        self.state = {f"{k}.{slot}": np.zeros_like(v) for k, v in params.items() if k not in APART
                      for slot in self.slots}
        self.steps = 0

    @classmethod
    def state_shapes(cls, param_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The names and shapes of ``state`` for parameters of these shapes, without making it."""
        return {f"{k}.{slot}": shape for k, shape in param_shapes.items() if k not in APART for slot in cls.slots}

    def step(self, params, grads, lr: float, scale: float = 1.0, lanes: Lanes = SERIAL):
        """One update with the gradients multiplied by ``scale`` (the clipping factor); one
        task per parameter array (or per piece of a big one) on ``lanes``."""
        self.steps += 1
        with lanes:
            for name, p in params.items():
                if name in APART:
                    continue
                g = grads[name]
                if isinstance(g, RowGrad) and self.zero_is_no_op:
                    lanes.submit(self.update_rows, name, p, g, lr, scale)
                    continue
                g = np.asarray(g)
                for part in _pieces(p.size, lanes):
                    lanes.submit(self.update, name, part, p, g, lr, scale)

    def load_state(self, state: dict[str, np.ndarray], steps: int):
        if set(state) != set(self.state):
            raise RnngenError("optimiser state does not match the model")
        for k, v in state.items():
            self.state[k][...] = v
        self.steps = steps


class SGD(Optimizer):
    def update(self, name, part, p, g, lr, scale):
        _sgd(_flat(p, part), _flat(g, part), p.dtype.type(lr * scale))

    def update_rows(self, name, p, g: RowGrad, lr, scale):
        _sgd_rows(p, g.rows, g.values, p.dtype.type(lr * scale))


class Adagrad(Optimizer):
    slots = ("sum_sq",)
    eps = 1e-8

    def update(self, name, part, p, g, lr, scale):
        t = p.dtype.type
        _adagrad(_flat(p, part), _flat(g, part), _flat(self.state[f"{name}.sum_sq"], part), t(lr), t(scale),
                 t(self.eps))

    def update_rows(self, name, p, g: RowGrad, lr, scale):
        t = p.dtype.type
        _adagrad_rows(p, g.rows, g.values, self.state[f"{name}.sum_sq"], t(lr), t(scale), t(self.eps))


class Adam(Optimizer):
    slots = ("m", "v")
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    zero_is_no_op = False                                        # momentum moves rows without gradient

    def update(self, name, part, p, g, lr, scale):
        t = p.dtype.type
        step = lr * math.sqrt(1 - self.beta2 ** self.steps) / (1 - self.beta1 ** self.steps)
        _adam(_flat(p, part), _flat(g, part), _flat(self.state[f"{name}.m"], part),
              _flat(self.state[f"{name}.v"], part), t(step), t(scale), t(self.beta1), t(self.beta2), t(self.eps))


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}     # under the names of config.OPTIMIZER_NAMES


def optimizer_class(name: str) -> type[Optimizer]:
    if name not in OPTIMIZERS:
        raise RnngenError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZER_NAMES)})")
    return OPTIMIZERS[name]


def make_optimizer(name: str, params: dict[str, np.ndarray]) -> Optimizer:
    return optimizer_class(name)(params)
