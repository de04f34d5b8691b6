"""Optimisers and global gradient-norm clipping. State is plain arrays, for checkpoints.

Each update is one fused, vectorised pass over a parameter and its gradient (Numba), with
the clipping factor folded in: on PTB the separate NumPy passes (scale the gradients,
form ``lr * g``, subtract) cost more than the recurrence itself.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import RnngenError
from .jit import kernel
from .lanes import SERIAL, Lanes

# Vectorised loops: no ZeroDivisionError branches, reassociation for the reductions; NaN and
# inf keep their meaning, since divergence detection reads them from the gradient norm.
LOOP_OPTIONS = {"nogil": True, "error_model": "numpy", "fastmath": {"contract", "arcp", "afn", "reassoc", "nsz"}}

OPTIMIZERS = ("sgd", "adagrad", "adam")
DEFAULT_LR = {"sgd": 1.0, "adagrad": 0.1, "adam": 0.002}


@kernel(**LOOP_OPTIONS)
def _sum_squares(g):
    g = g.ravel()
    acc = 0.0
    for i in range(g.size):                                      # indexed: vectorises, 10x the iterator
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


def global_norm(grads: dict[str, np.ndarray], lanes: Lanes = SERIAL) -> float:
    """Joint L2 norm of all gradients (inf or nan when any entry is); one array per task on
    ``lanes``, added up in a fixed order."""
    squares = dict.fromkeys(grads, 0.0)

    def add(name):
        squares[name] = _sum_squares(grads[name])

    with lanes:
        for name in grads:
            lanes.submit(add, name)
    return math.sqrt(sum(squares.values()))


def clip_scale(norm: float, max_norm: float) -> float:
    """Factor that brings the joint gradient norm down to ``max_norm`` (0 disables clipping)."""
    return max_norm / (norm + 1e-6) if max_norm > 0 and norm > max_norm else 1.0


class Optimizer:
    """Updates parameters in place. ``state`` maps names to arrays (saved with checkpoints)."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.state: dict[str, np.ndarray] = {}
        self.steps = 0

    def step(self, params, grads, lr: float, scale: float = 1.0, lanes: Lanes = SERIAL):
        """One update with the gradients multiplied by ``scale`` (the clipping factor); one
        parameter array per task on ``lanes``."""
        self.steps += 1
        with lanes:
            for name, p in params.items():
                lanes.submit(self.update, name, p, grads[name], lr, scale)

    def load_state(self, state: dict[str, np.ndarray], steps: int):
        if set(state) != set(self.state):
            raise RnngenError("optimiser state does not match the model")
        for k, v in state.items():
            self.state[k][...] = v
        self.steps = steps


class SGD(Optimizer):
    def update(self, name, p, g, lr, scale):
        _sgd(p, g, p.dtype.type(lr * scale))


class Adagrad(Optimizer):
    eps = 1e-8

    def __init__(self, params):
        super().__init__(params)
        self.state = {f"{k}.sum_sq": np.zeros_like(v) for k, v in params.items()}

    def update(self, name, p, g, lr, scale):
        t = p.dtype.type
        _adagrad(p, g, self.state[f"{name}.sum_sq"], t(lr), t(scale), t(self.eps))


class Adam(Optimizer):
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, params):
        super().__init__(params)
        for k, v in params.items():
            self.state[f"{k}.m"] = np.zeros_like(v)
            self.state[f"{k}.v"] = np.zeros_like(v)

    def update(self, name, p, g, lr, scale):
        t = p.dtype.type
        step = lr * math.sqrt(1 - self.beta2 ** self.steps) / (1 - self.beta1 ** self.steps)
        _adam(p, g, self.state[f"{name}.m"], self.state[f"{name}.v"], t(step), t(scale),
              t(self.beta1), t(self.beta2), t(self.eps))


def make_optimizer(name: str, params: dict[str, np.ndarray]) -> Optimizer:
    try:
        return {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}[name](params)
    except KeyError:
        raise RnngenError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})") from None
