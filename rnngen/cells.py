"""Recurrent cells: parameters, and forward/backward of one layer over a chunk.

A cell turns a layer's input sequence ``x`` (T, B, n_in) and initial state into an output
sequence (T, B, H). The input projection ``x U + b`` and all weight gradients are whole-
chunk matrix products (BLAS); the step-by-step recurrence runs in the Numba kernels of
``kernels.py``.
"""

from __future__ import annotations

import numpy as np

from . import kernels


class Cell:
    """Shared plumbing; subclasses name their gates and call their kernels."""

    name = ""
    gates = 1          # gate blocks in W_x / W_h (4 for LSTM, 3 for GRU)
    state_parts = 1    # arrays carried between chunks (h, plus c for LSTM)

    def __init__(self, activation: str = "tanh"):
        self.relu = activation == "relu"

    def param_shapes(self, n_in: int, hidden: int) -> dict[str, tuple[int, ...]]:
        gh = self.gates * hidden
        return {"W_x": (n_in, gh), "W_h": (hidden, gh), "b": (gh,)}

    def init_params(self, n_in: int, hidden: int, rng: np.random.Generator, dtype) -> dict:
        bound = 1.0 / np.sqrt(hidden)
        return {k: rng.uniform(-bound, bound, size=s).astype(dtype)
                for k, s in self.param_shapes(n_in, hidden).items()}

    def forward(self, P: dict, x: np.ndarray, state0: np.ndarray):
        """Run the layer over a chunk. Returns (h sequence, cache for backward, final state)."""
        T, B, n_in = x.shape
        xproj = (x.reshape(T * B, n_in) @ P["W_x"] + P["b"]).reshape(T, B, -1)
        h, cache, state_T = self.recur(P, xproj, state0)
        return h, (x, h, cache), state_T

    def backward(self, P: dict, fcache, dh: np.ndarray, state0: np.ndarray):
        """Truncated BPTT over the chunk. Returns (dL/dx, parameter gradients, dL/dstate0)."""
        x, h, cache = fcache
        T, B, n_in = x.shape
        N = T * B
        dpre, drec, dstate0, grads = self.recur_backward(P, cache, h, dh, state0)
        h_prev = np.concatenate((state0[0][None], h[:-1])).reshape(N, -1)
        dpre2 = dpre.reshape(N, -1)
        grads["W_x"] = x.reshape(N, n_in).T @ dpre2
        grads["b"] = dpre2.sum(axis=0)
        grads["W_h"] = h_prev.T @ drec.reshape(N, -1)
        dx = (dpre2 @ P["W_x"].T).reshape(T, B, n_in)
        return dx, grads, dstate0


class RNNCell(Cell):
    """Vanilla (Elman) RNN: s_t = f(x_t U + s_{t-1} W + b)."""

    name = "rnn"

    def recur(self, P, xproj, state0):
        T, B, _ = xproj.shape
        s = np.empty((T, B, state0.shape[-1]), dtype=xproj.dtype)
        kernels.rnn_forward(xproj, P["W_h"], state0[0], self.relu, s)
        return s, None, s[-1][None].copy()

    def recur_backward(self, P, cache, s, ds, state0):
        dpre = np.empty((s.shape[0], s.shape[1], s.shape[2]), dtype=s.dtype)
        ds0 = kernels.rnn_backward(np.ascontiguousarray(ds), s, P["W_h"], self.relu, dpre)
        return dpre, dpre, ds0[None], {}


CELLS = {"rnn": RNNCell}


def make_cell(name: str, activation: str = "tanh") -> Cell:
    return CELLS[name](activation)
