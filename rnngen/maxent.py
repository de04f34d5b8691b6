"""Hashed n-gram maximum-entropy features: the "direct connections" of RNNME (Mikolov et al. 2011).

Each of the last n-1 inputs' n-gram contexts (n = 2 .. order) is hashed to a base b_n, and
word w's logit gets the weight at b_n + w of one shared array d (indices wrap around its
power-of-two size):

    o_t[w] = h_t V[:, w] + c[w] + sum_n d[(b_n(x_t, .., x_{t-n+2}) + w) mod |d|]

A word's weights for one context sit side by side, so a class (a contiguous id range) or the
whole vocabulary is a contiguous slice of d. The class softmax's class logits take columns
V + c of the same slices. The softmax stays exactly normalised: the features only add to
logits. Trained by plain SGD on the hashed weights (as RNNME is), outside the optimiser and
the clipping: the gradient of d is scatter-added from the output layer's dlogits
(:class:`HashedGrad`), a few slices per token where a dense array would be millions of values.
"""

from __future__ import annotations

import numpy as np

from .kernels import context_bases, sgd_direct, sgd_direct_nodes


def history(order: int) -> int:
    """Inputs before a position that its contexts read (the newest input aside)."""
    return max(order - 2, 0)


def contexts(inputs: np.ndarray, order: int, size: int, before: np.ndarray | None = None, eos: int = 0):
    """Bases (T, B, order-1) for token ids ``inputs`` (T, B); ``before`` (order-2, B): the
    inputs that came just before (oldest first), by default ``eos`` (a stream's or line's start)."""
    T, B = inputs.shape
    K = order - 1
    prior = np.full((K - 1, B), eos, dtype=np.int32)              # the K-1 inputs before, eos-padded
    n = 0 if before is None else min(len(before), K - 1)
    if n:
        prior[K - 1 - n:] = before[len(before) - n:]
    out = np.empty((T, B, K), dtype=np.int64)
    context_bases(np.ascontiguousarray(inputs), prior, size - 1, out)
    return out


class HashedGrad:
    """The gradient of the hashed weights d: blocks (bases (n, K), dlogits (n, w), offset),
    each adding dlogits[i, j] at (bases[i, k] + offset + j) mod |d|. ``np.asarray`` gives
    it dense (for tests); :meth:`sgd` applies it."""

    def __init__(self, size: int, dtype):
        self.size, self.dtype, self.shape = size, np.dtype(dtype), (size,)
        self.blocks: list[tuple[np.ndarray, np.ndarray, int]] = []

    def add(self, bases: np.ndarray, dlogits: np.ndarray, offset: int = 0) -> None:
        """dlogits[i, j] at (bases[i, k] + offset + j) mod |d|: a slice of words per context."""
        self.blocks.append((bases, dlogits, offset))

    def add_nodes(self, bases: np.ndarray, nodes: np.ndarray, dz: np.ndarray) -> None:
        """dz[i, j] at (bases[i, k] + nodes[i, j]) mod |d|, up to a node -1: a tree's path per row."""
        self.blocks.append((bases, dz, nodes))

    def sgd(self, direct: np.ndarray, step: float) -> None:
        """d <- d - step * gradient."""
        t = direct.dtype.type
        for bases, values, where in self.blocks:
            bases, values = np.ascontiguousarray(bases), np.ascontiguousarray(values)
            if isinstance(where, np.ndarray):
                sgd_direct_nodes(direct, bases, where, values, t(step))
            else:
                sgd_direct(direct, bases, values, where, t(step))

    def __array__(self, dtype=None, copy=None):
        dense = np.zeros(self.size, dtype=self.dtype)
        self.sgd(dense, -1.0)
        return dense if dtype is None else dense.astype(dtype)
