"""The hierarchical softmax (Morin & Bengio 2005), over a Huffman tree as in word2vec and
faster-rnnlm: ``--softmax hs``.

The words are the leaves of a binary tree built from their counts (``config.huffman_tree``:
frequent words sit near the root). Each of its V-1 inner nodes n has a weight row W_n
(``hs.W[n]``, contiguous) and a bias b_n (``hs.b[n]``); for the top-layer state h

    z_n = h · W_n + b_n + Σ_k direct[(base_k + n) & mask]     (the last term: hashed n-gram features)
    p(w | h) = Π over the inner nodes n on w's path  σ(z_n) if w is under n's first child,
                                                     σ(-z_n) if under its second.

At every node the two branches' probabilities add up to 1, so the V leaves' do too: an exact
distribution (scores and samples stay exact). A token costs 3·H multiply-adds per node of
its path (z_n, dh, dW_n), about 3·H·log2 V in all, against 3·H·V for the full softmax. Each
token has nodes of its own, so there are no big matrix products to hand to BLAS: the kernels
below walk each row's path, all in one compiled loop.

The hashed n-gram ("direct", maxent) features: ``bases`` (N, K) int64 holds row i's K hashes,
``direct`` the hashed weights (a power of two of them, ``mask`` = their count - 1). With K = 0
they do nothing. Their gradient is scale · g_n at (base_k + n) & mask for every node n of
a row's path, g_n = dL_token/dz_n: the kernel writes each row's nodes and scale · g_n, and
a :class:`rnngen.maxent.HashedGrad` applies them (the SGD step in the training step).
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import kernels  # Numba reads kernels.log_sigmoid, a module attribute, compiled
from .jit import SUM_OPTIONS, kernel
from .lanes import SERIAL, Lanes
from .maxent import HashedGrad
from .rowgrad import RowGrad

NO_TREE = np.zeros((0, 2), dtype=np.int64)          # the sampling kernel's ``children`` for other layers


@kernel(**SUM_OPTIONS)
def node_logit(h, W, b, n, bases_i, direct, mask):
    """z_n = h · W_n + b_n + Σ_k direct[(bases_i[k] + n) & mask]."""
    z = b[n]
    for j in range(len(h)):
        z += h[j] * W[n, j]                                        # h · W_n
    for k in range(len(bases_i)):
        z += direct[(bases_i[k] + n) & mask]                       # + the row's hashed n-gram weights
    return z


@kernel(**SUM_OPTIONS)
def path_logprobs(top, targets, W, b, starts, nodes, codes, bases, direct, mask, logp):
    """logp[i] = log p(targets[i] | top[i]): the sum over the target's path of log σ(±z_n)."""
    for i in range(top.shape[0]):
        w = targets[i]
        total = 0.0
        for j in range(starts[w], starts[w + 1]):
            n = nodes[j]
            z = node_logit(top[i], W, b, n, bases[i], direct, mask)
            log_sig, _ = kernels.log_sigmoid(z)
            total += log_sig if codes[j] == 0 else log_sig - z     # log σ(-z) = log σ(z) - z
        logp[i] = total


@kernel(**SUM_OPTIONS)
def path_loss_grad(top, targets, W, b, starts, nodes, codes, bases, direct, mask, scale,
                   slot, logp, dtop, dW, db, path, dz):
    """For L = -scale Σ_i log p(targets[i] | top[i]), row by row: logp[i], dtop[i] = dL/dh_i,
    and added into dW[slot[n]] and db[n] the gradient of each inner node n on the row's path.
    ``dtop`` is written, ``dW`` and ``db`` accumulated (zero them first). With n-gram
    features, path[i, :d] are the row's d nodes and dz[i, :d] their dL/dz_n (path[i, d:] = -1)."""
    H = top.shape[1]
    one, zero, s = top.dtype.type(1.0), top.dtype.type(0.0), top.dtype.type(scale)
    for i in range(top.shape[0]):
        h, dh, w = top[i], dtop[i], targets[i]
        dh[:] = 0
        total = 0.0
        for j in range(starts[w], starts[w + 1]):
            n, r = nodes[j], slot[nodes[j]]
            z = node_logit(h, W, b, n, bases[i], direct, mask)
            log_sig, sig = kernels.log_sigmoid(z)
            first = codes[j] == 0                                  # w under n's first child: p σ(z)
            total += log_sig if first else log_sig - z             # log p += log σ(±z_n)
            g = top.dtype.type(sig) - (one if first else zero)        # g = dL_token/dz_n = σ(z_n) - [first]
            gs = s * g
            if bases.shape[1]:
                path[i, j - starts[w]] = n                             # dL/dz_n: the n-gram weights' gradient
                dz[i, j - starts[w]] = gs
            for c in range(H):
                dh[c] += gs * W[n, c]                              # dh += s g W_n
                dW[r, c] += gs * h[c]                              # dW_n += s g h
            db[n] += gs                                            # db_n += s g
        logp[i] = total


@kernel
def mark_paths(targets, starts, nodes, touched):
    """touched[n] = True for every inner node n on a target's path."""
    for i in range(len(targets)):
        for j in range(starts[targets[i]], starts[targets[i] + 1]):
            touched[nodes[j]] = True


def tree_paths(tree: list, V: int):
    """Each word's path as CSR arrays (starts (V+1,), nodes, codes): word w's inner nodes are
    nodes[starts[w]:starts[w+1]], leaf to root, and codes says which child the path takes
    there (0 first, 1 second). Built level by level: one NumPy pass per tree depth."""
    children = np.asarray(tree, dtype=np.int64)
    parent = np.full(2 * V - 1, -1, dtype=np.int64)
    parent[children] = np.arange(len(children)) // 2               # inner node m = id V + m
    side = np.zeros(2 * V - 1, dtype=np.int8)
    side[children] = np.arange(len(children)) % 2
    root = 2 * V - 2
    levels, cur = [], np.arange(V)
    while True:
        alive = np.flatnonzero(cur != root)
        if not len(alive):
            break
        levels.append((alive, parent[cur[alive]], side[cur[alive]]))
        cur[alive] = V + parent[cur[alive]]
    lengths = np.zeros(V, dtype=np.int64)
    for words, _, _ in levels:
        lengths[words] += 1
    starts = np.concatenate(([0], np.cumsum(lengths)))
    nodes, codes = np.empty(starts[-1], dtype=np.int64), np.empty(starts[-1], dtype=np.int8)
    for depth, (words, node, code) in enumerate(levels):
        nodes[starts[words] + depth], codes[starts[words] + depth] = node, code
    return starts, nodes, codes


class HierarchicalSoftmax:
    """The output layer ``hs``: same interface as softmax.FullSoftmax (prepare, packed,
    sample_form, logprobs, all_logprobs, loss_grad); the keyword ``bases`` carries the
    n-gram features (see the module's docstring)."""

    SPARSE_MIN = 1 << 16          # dW as a RowGrad (the touched nodes' rows) from this many weights on

    def __init__(self, config):
        self.V = config.vocab_size
        self.children = np.asarray(config.tree, dtype=np.int64).reshape(config.inner_nodes, 2)  # (V-1, 2)
        self.starts, self.nodes, self.codes = tree_paths(config.tree, self.V)
        self.depth = int(np.diff(self.starts).max())               # the longest path

    def mean_path(self, counts) -> float:
        """The mean path length (nodes per token) for tokens with these counts."""
        counts = np.asarray(counts, dtype=np.float64)
        return float(np.diff(self.starts) @ counts / counts.sum())

    def prepare(self, p) -> None:
        """Nothing to do: hs.W and hs.b are used as they are."""

    def packed(self, p):
        """Nothing to pack: no big products."""
        return contextlib.nullcontext()

    def sample_form(self, p):
        """The output-layer arguments of ``kernels.sample_lines``: the nodes' weights as
        (H, V-1) columns and biases in place of a softmax's, no classes, and the tree."""
        W = p["hs.W"]
        return (np.ascontiguousarray(W.T), p["hs.b"], np.zeros((W.shape[1], 1), dtype=W.dtype),
                np.zeros(1, dtype=W.dtype), np.array([0, self.V], dtype=np.int64), self.children)

    def _direct(self, p, top, bases):
        """(bases, direct, mask): the n-gram features' arguments, or none (K = 0)."""
        if bases is None:
            return np.zeros((len(top), 0), dtype=np.int64), np.zeros(1, dtype=top.dtype), 0
        direct = p["direct"]
        return np.ascontiguousarray(bases, dtype=np.int64), direct, len(direct) - 1

    def logprobs(self, p, top, targets, bases=None):
        top = np.ascontiguousarray(top)
        logp = np.empty(len(top))
        path_logprobs(top, np.asarray(targets, dtype=np.int64), p["hs.W"], p["hs.b"], self.starts, self.nodes,
                      self.codes, *self._direct(p, top, bases), logp)
        return logp

    def all_logprobs(self, p, top, bases=None):
        """log p(w | h) over the vocabulary (N, V): every node's z in one product, then
        the tree from the root down (kernels.tree_logprobs)."""
        z = top @ p["hs.W"].T + p["hs.b"]                          # z_n = h · W_n + b_n, all n
        if bases is not None:
            kernels.add_direct(z, np.ascontiguousarray(bases, dtype=np.int64), p["direct"], 0)    # node n: + d[b + n]
        out = np.empty((len(top), self.V), dtype=top.dtype)
        kernels.tree_logprobs_rows(z, self.children, out)
        return out

    def loss_grad(self, p, top, targets, scale, lanes: Lanes = SERIAL, bases=None):
        """(log p[target] per row, dL/dtop, gradients) for L = -scale Σ log p, on the calling
        thread. dL/d hs.W is a RowGrad over the nodes the targets' paths touch when the
        layer is large (it saves zeroing, and the optimiser's pass over, the other rows)."""
        W, targets, top = p["hs.W"], np.asarray(targets, dtype=np.int64), np.ascontiguousarray(top)
        if W.size >= self.SPARSE_MIN:
            touched = np.zeros(len(W), dtype=np.bool_)
            mark_paths(targets, self.starts, self.nodes, touched)
            rows = np.flatnonzero(touched)
            slot = np.zeros(len(W), dtype=np.int64)
            slot[rows] = np.arange(len(rows))
            dW = np.zeros((len(rows), W.shape[1]), dtype=W.dtype)
        else:
            rows, slot, dW = None, np.arange(len(W)), np.zeros_like(W)
        db = np.zeros_like(p["hs.b"])
        logp, dtop = np.empty(len(top)), np.empty_like(top)
        depth = self.depth if bases is not None else 0                # the paths' nodes, for the n-grams' grad
        path, dz = np.full((len(top), depth), -1, dtype=np.int64), np.zeros((len(top), depth), dtype=top.dtype)
        features = self._direct(p, top, bases)
        path_loss_grad(top, targets, W, p["hs.b"], self.starts, self.nodes, self.codes, *features, float(scale),
                       slot, logp, dtop, dW, db, path, dz)
        grads = {"hs.W": dW if rows is None else RowGrad(rows, dW, W.shape), "hs.b": db}
        if bases is not None:
            grads["direct"] = HashedGrad(p["direct"].size, top.dtype)
            grads["direct"].add_nodes(features[0], path, dz)
        return logp, dtop, grads
