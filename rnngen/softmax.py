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
from .kernels import add_direct, class_softmax_rows, row_sums, softmax_grad_rows
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


# Classes of at least this many words have their products done by blas.matmul (MKL's sgemm
# where MKL is the choice), smaller ones by np.matmul: a ctypes call costs a few µs more, and
# MKL's small products are no faster; on the few large classes (most of the multiply-adds:
# rare words) MKL's are 1.3-2.5 times as fast.
LARGE_CLASS = 512


def _product(cols: slice):
    """The matrix product for a class of words ``cols`` (see LARGE_CLASS)."""
    return matmul if cols.stop - cols.start >= LARGE_CLASS else np.matmul


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

    def _by_class(self, targets):
        """(order, class of each sorted row, starts): the rows sorted (stably) by the class of
        their target, so that class c's rows are order[starts[c]:starts[c + 1]]."""
        cls = self.word_class[targets]
        order = np.argsort(cls, kind="stable")
        starts = np.concatenate(([0], np.cumsum(np.bincount(cls, minlength=self.n_classes))))
        return order, cls[order], starts

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

    def _word_block(self, p, h, y, bases, rows, cols, scale, logp, dbias):
        """One class: its rows ``rows`` of the sorted states h, targets y, n-gram bases, and
        its words ``cols``. Writes logp[rows] = log p(w | class, h) and dbias = dc_C; returns
        do = scale (p(. | class, h) - y) for those rows, a new array."""
        out = _product(cols)(h[rows], self.weight(p)[:, cols])              # o = h V_C
        if bases is not None:
            add_direct(out, bases[rows], p["direct"], cols.start)            # + sum_n d[b_n + w]
        class_softmax_rows(out, p["out.b"][cols], y[rows] - cols.start, scale, logp[rows], dbias)
        return out

    def _blocks(self, starts):
        """(its sorted rows, its words) as slices, for each class in turn."""
        b = self.bounds
        return [(slice(starts[c], starts[c + 1]), slice(b[c], b[c + 1])) for c in range(self.n_classes)]

    def logprobs(self, p, top, targets, bases=None):
        order, cls, starts = self._by_class(targets)
        h, y, b = top[order], targets[order], _rows(bases, order)          # each class's rows a slice
        logp = log_softmax_pick(self._class_logits(p, h, b), cls)           # log p(class | h)
        word_logp = np.zeros(len(h))                                        # 0 in one-word classes
        for rows, cols in self._blocks(starts):
            if rows.start < rows.stop and cols.stop - cols.start > 1:       # NumPy: also for jobs run as Python
                logits = self._word_logits(p, h[rows], cols.start, cols.stop, _rows(b, rows))
                word_logp[rows] = log_softmax_pick(logits, y[rows] - cols.start)
        out = np.empty(len(top))
        out[order] = logp + word_logp                                       # + log p(w | class, h)
        return out

    def all_logprobs(self, p, top, bases=None):
        out = self._word_logits(p, top, 0, len(self.word_class), bases)
        cls_logp = log_softmax(self._class_logits(p, top, bases))
        for c in range(self.n_classes):
            s, e = self.bounds[c], self.bounds[c + 1]
            out[:, s:e] = log_softmax(out[:, s:e]) + cls_logp[:, c:c + 1]
        return out

    def loss_grad(self, p, top, targets, scale, lanes: Lanes = SERIAL, bases=None):
        """As FullSoftmax.loss_grad. The rows are sorted by class once, so that each class's
        rows are a slice of one gathered copy of ``top`` and of dL/dtop (one gather, one
        scatter back); the classes are split over ``lanes``: each writes its own columns of
        the word gradient and its own rows of dL/dtop."""
        order, cls, starts = self._by_class(targets)
        h, y, b = top[order], targets[order], _rows(bases, order)
        hT = np.ascontiguousarray(h.T)                                      # the weight gradients' left operand
        dcls = self._class_logits(p, h, b)
        logp = softmax_xent_grad(dcls, cls, scale)                          # log p(class | h)
        W = self.weight(p)
        d_w, d_b = np.empty_like(W), np.empty_like(p["out.b"])              # written class by class
        dh, word_logp = np.empty_like(h), np.empty(len(h))
        blocks = self._blocks(starts)
        dlogits = [None] * self.n_classes

        def classes(first, stop):
            for c in range(first, stop):
                rows, cols = blocks[c]
                if rows.start == rows.stop or cols.stop - cols.start == 1:  # no target, or one word:
                    d_w[:, cols], d_b[cols] = 0, 0                          # p(w | class, h) = 1, do = 0
                    dh[rows], word_logp[rows] = 0, 0
                    continue
                dl = dlogits[c] = self._word_block(p, h, y, b, rows, cols, scale, word_logp, d_b[cols])
                product = _product(cols)
                product(dl, W[:, cols].T, out=dh[rows])                     # dh = do V_C^T ...
                product(hT[:, rows], dl, out=d_w[:, cols])                  # dV_C = h^T do

        for first, stop in self._pieces(starts, lanes):
            lanes.submit(classes, first, stop)
        lanes.drain()
        dh += dcls @ p["cls.W"].T                                           # ... + dcls V_class^T
        dtop, out = np.empty_like(top), np.empty(len(top))
        dtop[order], out[order] = dh, logp + word_logp                      # log p(class | h) + log p(w | class, h)
        grads = {"out.b": d_b, "cls.W": hT @ dcls, "cls.b": dcls.sum(axis=0)}
        if bases is not None:
            grads["direct"] = hashed = HashedGrad(p["direct"].size, top.dtype)
            hashed.add(b, dcls, len(self.word_class))
            for (rows, cols), dl in zip(blocks, dlogits):
                if dl is not None:
                    hashed.add(b[rows], dl, cols.start)
        if self.tied:
            grads["embed"] = d_w.T
        else:
            grads["out.W"] = d_w
        return out, dtop, grads

    def _pieces(self, starts, lanes: Lanes):
        """(first, stop) runs of classes of about equal work, two per lane (a lane that is done
        early takes another): a class costs about its words x (its rows + 1), its products
        and writing its columns of the gradient."""
        if lanes.count == 1:
            return [(0, self.n_classes)]
        work = np.cumsum(np.diff(self.bounds) * (np.diff(starts) + 1))
        count = 2 * lanes.count
        cuts = np.searchsorted(work, work[-1] * np.arange(1, count) / count)
        edges = np.unique(np.concatenate(([0], cuts + 1, [self.n_classes])).clip(0, self.n_classes))
        return list(zip(edges[:-1], edges[1:]))


OUTPUTS = {"full": FullSoftmax, "class": ClassSoftmax, "hs": HierarchicalSoftmax}   # config.SOFTMAX_NAMES, in order
