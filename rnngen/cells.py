"""Recurrent cells: parameters, and forward/backward of one layer over a chunk.

A cell turns a layer's input sequence ``x`` (T, B, n_in) and initial state into an output
sequence (T, B, H). The input projection ``x U + b`` is one matrix product (BLAS) per slice
of time steps (the whole chunk, or half of it in a training step on two lanes), the weight
gradients one per chunk; the step-by-step recurrence runs in the Numba kernels of
``kernels.py``.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .blas import matmul
from .config import GATES, STATE_PARTS, layer_shapes
from .lanes import SERIAL, Lanes


class Cell:
    """Shared plumbing; subclasses name their gates and call their kernels."""

    name = ""          # one of config.CELL_NAMES
    gates = 1          # gate blocks in W_x / W_h (config.GATES: 4 for LSTM, 3 for GRU)
    state_parts = 1    # arrays carried between chunks (config.STATE_PARTS: h, plus c for LSTM)

    def __init__(self, activation: str = "tanh"):
        self.relu = activation == "relu"

    def init_params(self, n_in: int, hidden: int, rng: np.random.Generator, dtype) -> dict:
        """The layer's parameters (:func:`rnngen.config.layer_shapes`), uniform in ±1/sqrt(hidden)."""
        bound = 1.0 / np.sqrt(hidden)
        return {k: rng.uniform(-bound, bound, size=s).astype(dtype)
                for k, s in layer_shapes(self.name, n_in, hidden).items()}

    def forward(self, P: dict, x: np.ndarray, state0: np.ndarray):
        """Run the layer over a chunk. Returns (h sequence, cache for backward, final state)."""
        out = self.buffers(x.shape[0], x.shape[1], state0.shape[-1], x.dtype)
        self.steps(P, x, out, 0, x.shape[0], state0)
        return self.finish(x, out, state0)

    def project(self, P: dict, x: np.ndarray, a: int, b: int) -> np.ndarray:
        """The input projection x_t U + b of time steps a..b, as one product: (b-a, B, gates·H)."""
        T, B, n_in = x[a:b].shape
        xproj = matmul(x[a:b].reshape(T * B, n_in), P["W_x"])                       # x U + b
        xproj += P["b"]
        return xproj.reshape(T, B, -1)

    def steps(self, P: dict, x: np.ndarray, out: dict, a: int, b: int, state0: np.ndarray,
              xproj: np.ndarray | None = None) -> None:
        """Time steps a..b of a chunk into ``out`` (from :meth:`buffers`): their input projection
        (``xproj`` if made ahead by :meth:`project`), then the recurrence. Slices of a chunk run
        in order, so that the layer above can start on one slice while this layer computes the next."""
        self.recur(P, self.project(P, x, a, b) if xproj is None else xproj, out, a, b, state0)

    def backward(self, P: dict, fcache, dh: np.ndarray, state0: np.ndarray, lanes: Lanes = SERIAL):
        """Truncated BPTT over the chunk. Returns (dL/dx, parameter gradients, dL/dstate0).
        dL/dx comes first: the layer below waits for it. The weight gradients are side tasks
        on ``lanes``, their arrays filled once the lanes are drained."""
        x, h, cache = fcache
        T, B, n_in = x.shape
        N = T * B
        dpre, drec, dstate0, grads = self.recur_backward(P, cache, h, dh, state0)
        dpre2, drec2 = dpre.reshape(N, -1), drec.reshape(N, -1)
        grads.update({k: np.empty_like(P[k]) for k in ("W_x", "W_h", "b")})
        h_prev = np.concatenate((state0[0][None], h[:-1])).reshape(N, -1)
        for cols in lanes.split(dpre2.shape[1]):        # in one piece per lane: smaller tasks at the step's end
            lanes.submit(_input_weight_grads, x.reshape(N, n_in), dpre2, grads, slice(*cols))
            lanes.submit(_recurrent_weight_grad, h_prev, drec2, grads, slice(*cols))
        dx = matmul(dpre2, P["W_x"].T).reshape(T, B, n_in)
        return dx, grads, dstate0


def _input_weight_grads(x2, dpre2, grads, cols: slice) -> None:
    matmul(x2.T, dpre2[:, cols], out=grads["W_x"][:, cols])              # dU = x^T dpre
    np.sum(dpre2[:, cols], axis=0, out=grads["b"][cols])


def _recurrent_weight_grad(h_prev, drec2, grads, cols: slice) -> None:
    matmul(h_prev.T, drec2[:, cols], out=grads["W_h"][:, cols])          # dW = h_{t-1}^T drec


class RNNCell(Cell):
    """Vanilla (Elman) RNN: s_t = f(x_t U + s_{t-1} W + b)."""

    name = "rnn"
    gates, state_parts = GATES[name], STATE_PARTS[name]

    def buffers(self, T, B, H, dtype):
        return {"h": np.empty((T, B, H), dtype=dtype)}                  # s_t, named h as in the other cells

    def recur(self, P, xproj, out, a, b, state0):
        s_prev = np.ascontiguousarray(state0[0]) if a == 0 else out["h"][a - 1]
        kernels.rnn_forward(xproj, P["W_h"], s_prev, self.relu, out["h"][a:b])

    def finish(self, x, out, state0):
        s = out["h"]
        return s, (x, s, None), s[-1][None].copy()

    def recur_backward(self, P, cache, s, ds, state0):
        dpre = np.empty((s.shape[0], s.shape[1], s.shape[2]), dtype=s.dtype)
        ds0 = kernels.rnn_backward(np.ascontiguousarray(ds), s, P["W_h"], self.relu, dpre)
        return dpre, dpre, ds0[None], {}


class LSTMCell(Cell):
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate). Gate blocks [i, f, g, o]:
    c_t = f*c_{t-1} + i*g, h_t = o*tanh(c_t). State: state0[0] = h, state0[1] = c."""

    name = "lstm"
    gates, state_parts = GATES[name], STATE_PARTS[name]

    def init_params(self, n_in, hidden, rng, dtype):
        p = super().init_params(n_in, hidden, rng, dtype)
        p["b"][hidden:2 * hidden] = 1.0          # forget-gate bias 1: remember by default
        return p

    def buffers(self, T, B, H, dtype):
        return {"h": np.empty((T, B, H), dtype=dtype), "c": np.empty((T, B, H), dtype=dtype),
                "tc": np.empty((T, B, H), dtype=dtype), "acts": np.empty((T, B, 4 * H), dtype=dtype)}

    def recur(self, P, xproj, out, a, b, state0):
        h, c, tc, acts = out["h"], out["c"], out["tc"], out["acts"]
        h_prev, c_prev = (np.ascontiguousarray(state0[0]), np.ascontiguousarray(state0[1])) if a == 0 \
            else (h[a - 1], c[a - 1])
        kernels.lstm_forward(xproj, P["W_h"], h_prev, c_prev, h[a:b], c[a:b], tc[a:b], acts[a:b])

    def finish(self, x, out, state0):
        h, c = out["h"], out["c"]
        return h, (x, h, (c, out["tc"], out["acts"], np.ascontiguousarray(state0[1]))), np.stack((h[-1], c[-1]))

    def recur_backward(self, P, cache, h, dh, state0):
        c, tc, acts, c0 = cache
        dpre = np.empty_like(acts)
        dh0, dc0 = kernels.lstm_backward(np.ascontiguousarray(dh), c, tc, acts, P["W_h"], c0, dpre)
        return dpre, dpre, np.stack((dh0, dc0)), {}


class GRUCell(Cell):
    """GRU, PyTorch/cuDNN formulation. Gate blocks [r, z, n]:
    n = tanh(x W_xn + b_n + r*(h W_hn + b_hn)), h_t = (1-z)*n + z*h_{t-1}.
    ``b_hn`` is a separate (H,) parameter because r multiplies it."""

    name = "gru"
    gates, state_parts = GATES[name], STATE_PARTS[name]

    def buffers(self, T, B, H, dtype):
        return {"h": np.empty((T, B, H), dtype=dtype), "acts": np.empty((T, B, 3 * H), dtype=dtype),
                "hn": np.empty((T, B, H), dtype=dtype)}

    def recur(self, P, xproj, out, a, b, state0):
        h, acts, hn = out["h"], out["acts"], out["hn"]
        h_prev = np.ascontiguousarray(state0[0]) if a == 0 else h[a - 1]
        kernels.gru_forward(xproj, P["W_h"], P["b_hn"], h_prev, h[a:b], acts[a:b], hn[a:b])

    def finish(self, x, out, state0):
        h = out["h"]
        return h, (x, h, (out["acts"], out["hn"], np.ascontiguousarray(state0[0]))), h[-1][None].copy()

    def recur_backward(self, P, cache, h, dh, state0):
        acts, hn, h0 = cache
        H = h.shape[-1]
        dpre = np.empty_like(acts)
        drec = np.empty_like(acts)
        dh0 = kernels.gru_backward(np.ascontiguousarray(dh), h, acts, hn, P["W_h"], h0, dpre, drec)
        return dpre, drec, dh0[None], {"b_hn": drec[:, :, 2 * H:].sum(axis=(0, 1))}


CELLS = {cell.name: cell for cell in (RNNCell, GRUCell, LSTMCell)}     # config.CELL_NAMES, in its order


def make_cell(name: str, activation: str = "tanh") -> Cell:
    return CELLS[name](activation)
