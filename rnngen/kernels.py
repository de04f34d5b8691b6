"""Numba kernels: the per-time-step recurrence of each cell, forward and backward.

Each kernel runs a whole chunk of T time steps for a batch of B streams. The input
projection ``x_t U + b`` of the whole chunk is one matrix product done by the caller
(``xproj``), and so are the weight gradients afterwards; what must run step by step —
the recurrent product ``s_{t-1} W`` and the elementwise non-linearities — runs here.

Conventions: arrays are C-contiguous, time-major ``(T, B, ...)``; weights are stored
input-major (``W`` has shape ``(H, G*H)``) so that a row of states times ``W`` gives the
gate pre-activations. Backward kernels write ``dpre``, the gradient of the loss with
respect to ``xproj``, and return the gradient with respect to the initial state.
"""

import ctypes
import glob
import os

import numpy as np
from numba import njit


def _single_thread_kernel_blas() -> None:
    """Run the BLAS that Numba calls (SciPy's OpenBLAS) on one thread.

    The per-step products in these kernels are small; with SciPy's OpenBLAS pool and
    NumPy's (a separate copy) both spinning threads on 2 cores, one training step was
    measured 500x slower (540 ms instead of 1 ms for a chunk's recurrence). NumPy's BLAS,
    which does the big whole-chunk products, keeps its threads.
    """
    try:
        import scipy
    except ImportError:
        return
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                break


_single_thread_kernel_blas()


# --- vanilla RNN: s_t = f(x_t U + s_{t-1} W + b) ------------------------------------

@njit(cache=True)
def rnn_forward(xproj, W, s0, relu, s):
    """Fill ``s[t]`` with s_t = f(x_t U + b + s_{t-1} W), f = tanh or relu."""
    T, B, H = s.shape
    rec = np.empty((B, H), dtype=s.dtype)
    s_prev = s0
    for t in range(T):
        np.dot(s_prev, W, rec)                                      # s_{t-1} W
        for b in range(B):
            for j in range(H):
                a = xproj[t, b, j] + rec[b, j]
                s[t, b, j] = max(a, 0.0) if relu else np.tanh(a)   # s_t = f(a_t)
        s_prev = s[t]


@njit(cache=True)
def rnn_backward(ds, s, W, relu, dpre):
    """BPTT through the chunk: ds[t] is dL/ds_t from above; returns dL/ds_0 (initial)."""
    T, B, H = s.shape
    ds_next = np.zeros((B, H), dtype=s.dtype)                      # dL/ds_t via s_{t+1}
    Wt = W.T
    for t in range(T - 1, -1, -1):
        for b in range(B):
            for j in range(H):
                g = ds[t, b, j] + ds_next[b, j]
                st = s[t, b, j]
                dpre[t, b, j] = (g if st > 0.0 else 0.0) if relu else g * (1.0 - st * st)
        np.dot(dpre[t], Wt, ds_next)                                # dL/ds_{t-1} = da_t W^T
    return ds_next


# --- embeddings ----------------------------------------------------

@njit(cache=True)
def scatter_add_rows(dst, rows, src):
    """dst[rows[i]] += src[i]: the embedding gradient without a dense one-hot product."""
    n, d = src.shape
    for i in range(n):
        r = rows[i]
        for j in range(d):
            dst[r, j] += src[i, j]


# --- sampling -----------------------------------------------------------------------

@njit(cache=True)
def sample_rows(logits, temperature, top_k, top_p, uniforms, out):
    """Draw one token id per row of logits.

    p_i ∝ exp(logit_i / temperature), restricted to the ``top_k`` most likely tokens
    (0 = all) and then to the smallest most-likely set whose mass reaches ``top_p``;
    the draw inverts the CDF at ``uniforms[b]``. Temperature 0 is the argmax.
    """
    B, V = logits.shape
    for b in range(B):
        row = logits[b]
        if temperature == 0.0:
            out[b] = np.argmax(row)
            continue
        m = row.max()
        probs = np.exp((row.astype(np.float64) - m) / temperature)
        if (0 < top_k < V) or top_p < 1.0:
            order = np.argsort(-probs, kind="mergesort")        # most likely first, stable
            keep = V if top_k <= 0 else min(top_k, V)
            if top_p < 1.0:
                kept_mass = probs[order[:keep]].sum()
                cum = 0.0
                for r in range(keep):
                    cum += probs[order[r]]
                    if cum >= top_p * kept_mass:
                        keep = r + 1
                        break
            total = probs[order[:keep]].sum()
            target = uniforms[b] * total
            cum = 0.0
            out[b] = order[keep - 1]
            for r in range(keep):
                cum += probs[order[r]]
                if cum > target:
                    out[b] = order[r]
                    break
        else:
            target = uniforms[b] * probs.sum()
            cum = 0.0
            out[b] = V - 1
            for i in range(V):
                cum += probs[i]
                if cum > target:
                    out[b] = i
                    break
