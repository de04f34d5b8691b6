"""The class softmax's training step as it was before issue 19's rework, for
``softmax_speed.py --old-class`` to time against the current one in the same process.

A per-class loop of NumPy calls: each class gathers its rows of ``top``, scatters its rows
of dL/dtop back, and writes its weight gradient through a strided ``out=``. Not used by
rnngen itself.
"""

from __future__ import annotations

import numpy as np

from rnngen.kernels import softmax_xent_rows
from rnngen.lanes import SERIAL, Lanes
from rnngen.maxent import HashedGrad
from rnngen.softmax import ClassSoftmax, _rows, softmax_xent_grad


class OldClassSoftmax(ClassSoftmax):
    def _groups(self, targets):
        """(class, rows whose target is in it) for every class that occurs."""
        cls = self.word_class[targets]
        order = np.argsort(cls, kind="stable")
        counts = np.bincount(cls, minlength=self.n_classes)
        starts = np.concatenate(([0], np.cumsum(counts)))
        return cls, [(c, order[starts[c]:starts[c + 1]]) for c in np.flatnonzero(counts)]

    def loss_grad(self, p, top, targets, scale, lanes: Lanes = SERIAL, bases=None):
        cls, groups = self._groups(targets)
        dcls = self._class_logits(p, top, bases)
        logp = softmax_xent_grad(dcls, cls, scale)
        hashed = None if bases is None else HashedGrad(p["direct"].size, top.dtype)
        if hashed is not None:
            hashed.add(bases, dcls, len(self.word_class))
        dtop = dcls @ p["cls.W"].T
        W = self.weight(p)
        d_w = np.empty_like(W)
        d_b = np.empty_like(p["out.b"])
        absent = np.ones(self.n_classes, dtype=bool)
        for c, rows in groups:
            s, e = self.bounds[c], self.bounds[c + 1]
            h = top[rows]
            dlogits = self._word_logits(p, h, s, e, _rows(bases, rows))
            word_logp = np.empty(len(rows))
            softmax_xent_rows(dlogits, targets[rows] - s, scale, word_logp)
            logp[rows] += word_logp
            np.matmul(h.T, dlogits, out=d_w[:, s:e])
            np.sum(dlogits, axis=0, out=d_b[s:e])
            dtop[rows] += dlogits @ W[:, s:e].T
            if hashed is not None:
                hashed.add(_rows(bases, rows), dlogits, s)
            absent[c] = False
        for c in np.flatnonzero(absent):
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
