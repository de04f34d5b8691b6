"""Output layers: p(w | h) from the top-layer state h, exactly normalised.

``full``   o = softmax(h V + c) over the whole vocabulary: 3·H·|V| multiply-adds per token
           forward and backward.
``class``  Mikolov et al. (2011): words are binned by frequency into C classes, each a
           contiguous id range, and p(w | h) = p(class(w) | h) · p(w | class(w), h) — two
           small softmaxes, about H·(C + |V|/C) per token. Still a proper distribution, so
           scores and samples stay exact.
``hs``     hierarchical softmax over a Huffman tree of the words (rnngen.hsoftmax): about
           H·(mean path length) per token, ~log2 |V|.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .blas import Packed, exp_in_place, matmul
from .config import frequency_classes as frequency_classes  # re-exported: it was defined here
from .hsoftmax import NO_TREE, HierarchicalSoftmax
from .jit import interpreting
from .kernels import add_direct, row_sums, softmax_grad_rows, softmax_xent_rows
from .lanes import SERIAL, Lanes
from .maxent import HashedGrad


def _exp_shifted(logits: np.ndarray, targets: np.ndarray, logits_of=None, scale=None):
    """In place, logits <- exp(logits - s) per row, and with ``scale`` then
    <- scale * (softmax - onehot(targets)). Returns (target logit minus s, row sums in
    float64): the pieces of a stable log-softmax.

    With ``logits_of`` (rows -> those rows' logits afresh) s is 0 wherever that is exact:
    a language model's logits are far from exp's overflow (88 in float32), and skipping the
    row max saves two of the few passes over the (tokens x vocabulary) matrix. Rows whose
    sum overflowed or came near underflow (or are NaN) are computed again with s = row max.
    """
    picked = logits[np.arange(len(targets)), targets]
    if logits_of is None:
        m = logits.max(axis=1)
        picked -= m
        logits -= m[:, None]
    exp_in_place(logits)
    z = np.empty(len(targets))
    info = np.finfo(logits.dtype)
    lo, hi = info.tiny / info.eps, info.max
    if scale is not None:
        softmax_grad_rows(logits, targets, scale, lo, hi, z)    # rows outside (lo, hi) left as they are
    elif interpreting():
        np.sum(logits, axis=1, dtype=np.float64, out=z)         # a few rows: NumPy beats a Python loop
    else:
        row_sums(logits, z)
    if logits_of is not None:
        redo = np.flatnonzero(~((z > lo) & (z < hi)))
        if len(redo):
            fresh = logits_of(redo)
            picked[redo], z[redo] = _exp_shifted(fresh, targets[redo], scale=scale)
            logits[redo] = fresh
    return picked, z


def softmax_xent_grad(logits: np.ndarray, targets: np.ndarray, scale: float, logits_of=None) -> np.ndarray:
    """Per-row log p[target]; turns ``logits`` in place into scale * (softmax - onehot).
    ``logits_of``: see ``_exp_shifted``."""
    picked, z = _exp_shifted(logits, targets, logits_of, scale)
    return picked - np.log(z)


def log_softmax_pick(logits: np.ndarray, targets: np.ndarray, logits_of=None) -> np.ndarray:
    """log softmax(logits)[i, targets[i]] for each row, computed stably. Destroys logits."""
    picked, z = _exp_shifted(logits, targets, logits_of)
    return picked - np.log(z)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def _same_array(a, b) -> bool:
    return a.ctypes.data == b.ctypes.data and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype


class FullSoftmax:
    def __init__(self, config):
        self.tied = config.tie_weights
        self._frozen = None              # the weights' blas.Packed inside `with packed(p)`

    def weight(self, p):
        """V of o = softmax(h V + c), shape (hidden, vocab); the embedding if tied."""
        return p["embed"].T if self.tied else p["out.W"]

    def class_form(self, p):
        """(V, c, class V, class c, class bounds): this layer as a class softmax; the full
        softmax is one class holding every word. What the sampling kernel takes."""
        W = self.weight(p)
        return (np.ascontiguousarray(W), p["out.b"], np.zeros((W.shape[0], 1), dtype=W.dtype),
                np.zeros(1, dtype=W.dtype), np.array([0, W.shape[1]], dtype=np.int64))

    def sample_form(self, p):
        """The output-layer arguments of ``kernels.sample_lines``: the class form and no tree."""
        return (*self.class_form(p), NO_TREE)

    def prepare(self, p) -> None:
        """Store out.W (H, V) and out.b (V,) as the rows of one (H+1, V) array; ``p`` then
        holds views of it. [h, 1] [V; c] is h V + c, and [h, 1]^T dlogits is the gradient of
        both: the bias costs no pass of its own over the (tokens x vocabulary) logits."""
        if self.tied:
            return
        W, c = p["out.W"], p["out.b"]
        stacked = np.concatenate((W, c[None]))
        p["out.W"], p["out.b"] = stacked[:-1], stacked[-1]

    def _right(self, p):
        """The right operand of the logits' product: the stacked [V; c] (see :meth:`prepare`)
        or V alone."""
        stacked = _stacked(p)
        return self.weight(p) if stacked is None else stacked

    @contextlib.contextmanager
    def packed(self, p):
        """Within the block, the logits of ``p``'s output weights (which must not change
        there) are products with one packed copy of them: for a scoring job's many row
        pieces (:class:`rnngen.blas.Packed`), which then skip packing the same weights again
        in every product."""
        before = self._frozen
        self._frozen = Packed(self._right(p))
        try:
            yield
        finally:
            self._frozen = before

    def _logits(self, p, top, bases=None):
        """h V + c (+ the n-gram features of ``bases``, :mod:`rnngen.maxent`) for rows h of
        ``top``; also [h, 1] when out.W and out.b are stacked."""
        right, frozen = self._right(p), self._frozen
        product = frozen.matmul if frozen is not None and _same_array(frozen.b, right) else lambda a: matmul(a, right)
        if _stacked(p) is None:
            out = product(top)
            out += p["out.b"]
            h1 = None
        else:
            h1 = np.empty((len(top), right.shape[0]), dtype=top.dtype)
            h1[:, :-1] = top
            h1[:, -1] = 1.0
            out = product(h1)
        if bases is not None:
            add_direct(out, bases, p["direct"], 0)                      # + sum_n d[b_n + w]
        return out, h1

    def logprobs(self, p, top, targets, bases=None):
        """log p(target | h) for rows of ``top``; ``bases`` (rows, K): n-gram contexts or None."""
        return log_softmax_pick(self._logits(p, top, bases)[0], targets,
                                lambda rows: self._logits(p, top[rows], _rows(bases, rows))[0])

    def all_logprobs(self, p, top, bases=None):
        return log_softmax(self._logits(p, top, bases)[0])

    def loss_grad(self, p, top, targets, scale, lanes: Lanes = SERIAL, bases=None):
        """(log p[target] per row, dL/dtop, gradients) for L = -scale * sum log p, the rows
        split over ``lanes`` (see :meth:`loss_grad_rows`). With n-gram contexts ``bases``
        the gradients hold "direct", a :class:`rnngen.maxent.HashedGrad`."""
        rows, result = self.loss_grad_rows(p, top, targets, scale, bases)
        lanes.map_rows(rows, len(top))
        return result(lanes)

    def loss_grad_rows(self, p, top, targets, scale, bases=None):
        """:meth:`loss_grad` in pieces: ``rows(a, b)`` does rows a..b of ``top`` (any order,
        any thread, once each row of ``top`` is final), then ``result(lanes)`` returns what
        loss_grad returns. It leaves the weight gradient [h, 1]^T dlogits to ``lanes`` as side
        tasks, in column pieces: its arrays are filled once the lanes are drained."""
        stacked, W = _stacked(p), self.weight(p)
        N, (H, V) = len(top), W.shape
        h1 = np.empty((N, H + 1), dtype=top.dtype)
        dlogits = np.empty((N, V), dtype=top.dtype)
        dtop = np.empty_like(top)
        logp = np.empty(N, dtype=np.float64)

        def rows(a, b):
            h1[a:b, :-1] = top[a:b]
            h1[a:b, -1] = 1.0
            if stacked is not None:
                matmul(h1[a:b], stacked, out=dlogits[a:b])                       # o = h V + c
            else:
                matmul(top[a:b], W, out=dlogits[a:b])
                dlogits[a:b] += p["out.b"]
            if bases is not None:
                add_direct(dlogits[a:b], bases[a:b], p["direct"], 0)            # + sum_n d[b_n + w]
            logp[a:b] = softmax_xent_grad(dlogits[a:b], targets[a:b], scale,     # do = s(softmax(o) - y)
                                          lambda r: self._logits(p, top[a:b][r], _rows(bases, slice(a, b), r))[0])
            matmul(dlogits[a:b], W.T, out=dtop[a:b])                             # dh = do V^T

        def result(lanes: Lanes):
            d_stacked = np.empty((H + 1, V), dtype=top.dtype)
            for a, b in lanes.split(V, per_lane=4):
                lanes.submit(matmul, h1.T, dlogits[:, a:b], d_stacked[:, a:b])     # [dV; dc] = [h, 1]^T do
            grads = {"out.b": d_stacked[-1]}
            if bases is not None:
                grads["direct"] = HashedGrad(p["direct"].size, top.dtype)
                grads["direct"].add(bases, dlogits)                            # dd = do at each b_n + w
            if self.tied:
                grads["embed"] = d_stacked[:-1].T
            else:
                grads["out.W"] = d_stacked[:-1]
            return logp, dtop, grads

        return rows, result


def _rows(bases, *index):
    """``bases`` indexed by each of ``index`` in turn, or None without n-gram features."""
    if bases is None:
        return None
    for i in index:
        bases = bases[i]
    return np.ascontiguousarray(bases)


def _stacked(p):
    """The (H+1, V) array whose rows are out.W and out.b (see FullSoftmax.prepare), or None
    when they are separate arrays."""
    W, c = p.get("out.W"), p["out.b"]
    stacked = getattr(W, "base", None)
    if (stacked is None or c.base is not stacked or stacked.shape != (W.shape[0] + 1, W.shape[1])
            or W.ctypes.data != stacked.ctypes.data or c.ctypes.data != stacked[-1].ctypes.data):
        return None
    return stacked


class ClassSoftmax(FullSoftmax):
    def __init__(self, config):
        super().__init__(config)
        self.n_classes = config.n_classes       # an RnngenError when the bounds are not set
        self.bounds = np.asarray(config.class_bounds, dtype=np.int64)
        self.word_class = np.repeat(np.arange(self.n_classes), np.diff(self.bounds))

    def prepare(self, p) -> None:
        """Nothing to do: each class's words take their own slices of out.W and out.b."""

    def packed(self, p):
        """Nothing to pack: the products are per class, each with a slice of the weights."""
        return contextlib.nullcontext()

    def class_form(self, p):
        return np.ascontiguousarray(self.weight(p)), p["out.b"], p["cls.W"], p["cls.b"], self.bounds

    def _groups(self, targets):
        """(class, rows whose target is in it) for every class that occurs."""
        cls = self.word_class[targets]
        order = np.argsort(cls, kind="stable")
        counts = np.bincount(cls, minlength=self.n_classes)
        starts = np.concatenate(([0], np.cumsum(counts)))
        return cls, [(c, order[starts[c]:starts[c + 1]]) for c in np.flatnonzero(counts)]

    def _class_logits(self, p, top, bases):
        """h V_C + c_C (+ n-gram features: the columns after the vocabulary's)."""
        out = top @ p["cls.W"] + p["cls.b"]
        if bases is not None:
            add_direct(out, bases, p["direct"], len(self.word_class))
        return out

    def _word_logits(self, p, h, s, e, bases):
        """h V[:, s:e] + c[s:e] (+ n-gram features) for the words s..e-1 of one class."""
        out = h @ self.weight(p)[:, s:e] + p["out.b"][s:e]
        if bases is not None:
            add_direct(out, bases, p["direct"], s)
        return out

    def logprobs(self, p, top, targets, bases=None):
        cls, groups = self._groups(targets)
        logp = log_softmax_pick(self._class_logits(p, top, bases), cls)      # log p(class | h)
        for c, rows in groups:
            s, e = self.bounds[c], self.bounds[c + 1]
            logits = self._word_logits(p, top[rows], s, e, _rows(bases, rows))
            logp[rows] += log_softmax_pick(logits, targets[rows] - s)   # + log p(w | class, h)
        return logp

    def all_logprobs(self, p, top, bases=None):
        out = self._word_logits(p, top, 0, len(self.word_class), bases)
        cls_logp = log_softmax(self._class_logits(p, top, bases))
        for c in range(self.n_classes):
            s, e = self.bounds[c], self.bounds[c + 1]
            out[:, s:e] = log_softmax(out[:, s:e]) + cls_logp[:, c:c + 1]
        return out

    def loss_grad(self, p, top, targets, scale, lanes: Lanes = SERIAL, bases=None):
        """As FullSoftmax.loss_grad, on the calling thread alone: its products are per class."""
        cls, groups = self._groups(targets)
        dcls = self._class_logits(p, top, bases)
        logp = softmax_xent_grad(dcls, cls, scale)
        hashed = None if bases is None else HashedGrad(p["direct"].size, top.dtype)
        if hashed is not None:
            hashed.add(bases, dcls, len(self.word_class))
        dtop = dcls @ p["cls.W"].T
        W = self.weight(p)
        d_w = np.empty_like(W)                 # written class by class: no pass to zero it first
        d_b = np.empty_like(p["out.b"])
        absent = np.ones(self.n_classes, dtype=bool)
        for c, rows in groups:
            s, e = self.bounds[c], self.bounds[c + 1]
            h = top[rows]
            dlogits = self._word_logits(p, h, s, e, _rows(bases, rows))
            word_logp = np.empty(len(rows))
            softmax_xent_rows(dlogits, targets[rows] - s, scale, word_logp)
            logp[rows] += word_logp                                   # + log p(w | class, h)
            np.matmul(h.T, dlogits, out=d_w[:, s:e])
            np.sum(dlogits, axis=0, out=d_b[s:e])
            dtop[rows] += dlogits @ W[:, s:e].T
            if hashed is not None:
                hashed.add(_rows(bases, rows), dlogits, s)
            absent[c] = False
        for c in np.flatnonzero(absent):        # classes no target fell in: zero gradient
            d_w[:, self.bounds[c]:self.bounds[c + 1]] = 0
            d_b[self.bounds[c]:self.bounds[c + 1]] = 0
        grads = {"out.b": d_b, "cls.W": top.T @ dcls, "cls.b": dcls.sum(axis=0)}
        if hashed is not None:
            grads["direct"] = hashed
        if self.tied:
            grads["embed"] = d_w.T
        else:
            grads["out.W"] = d_w
        return logp, dtop, grads


OUTPUTS = {"full": FullSoftmax, "class": ClassSoftmax, "hs": HierarchicalSoftmax}   # config.SOFTMAX_NAMES, in order
