"""Optimisers and global gradient-norm clipping. State is plain arrays, for checkpoints."""

from __future__ import annotations

import numpy as np

from .errors import RnngenError

OPTIMIZERS = ("sgd", "adagrad", "adam")
DEFAULT_LR = {"sgd": 1.0, "adagrad": 0.1, "adam": 0.002}


def clip_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients together so their joint L2 norm is at most max_norm; return the norm."""
    norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


class Optimizer:
    """Updates parameters in place. ``state`` maps names to arrays (saved with checkpoints)."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.state: dict[str, np.ndarray] = {}
        self.steps = 0

    def step(self, params, grads, lr: float):
        self.steps += 1
        for name, p in params.items():
            self.update(name, p, grads[name], lr)

    def load_state(self, state: dict[str, np.ndarray], steps: int):
        if set(state) != set(self.state):
            raise RnngenError("optimiser state does not match the model")
        for k, v in state.items():
            self.state[k][...] = v
        self.steps = steps


class SGD(Optimizer):
    def update(self, name, p, g, lr):
        p -= lr * g                                             # theta <- theta - lr g


class Adagrad(Optimizer):
    def __init__(self, params):
        super().__init__(params)
        self.state = {f"{k}.sum_sq": np.zeros_like(v) for k, v in params.items()}

    def update(self, name, p, g, lr):
        acc = self.state[f"{name}.sum_sq"]
        acc += g * g                                            # G <- G + g^2
        p -= lr * g / (np.sqrt(acc) + 1e-8)                     # theta <- theta - lr g / sqrt(G)


class Adam(Optimizer):
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, params):
        super().__init__(params)
        for k, v in params.items():
            self.state[f"{k}.m"] = np.zeros_like(v)
            self.state[f"{k}.v"] = np.zeros_like(v)

    def update(self, name, p, g, lr):
        m, v = self.state[f"{name}.m"], self.state[f"{name}.v"]
        m *= self.beta1
        m += (1 - self.beta1) * g                               # m <- b1 m + (1-b1) g
        v *= self.beta2
        v += (1 - self.beta2) * g * g                           # v <- b2 v + (1-b2) g^2
        t = self.steps
        step = lr * np.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        p -= (step * m / (np.sqrt(v) + self.eps)).astype(p.dtype)


def make_optimizer(name: str, params: dict[str, np.ndarray]) -> Optimizer:
    try:
        return {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}[name](params)
    except KeyError:
        raise RnngenError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})") from None
