"""The embedding's gradient, kept sparse: non-zero only in the rows of the chunk's tokens.

The model (:meth:`rnngen.model.Model.loss_and_grads`) makes it and the optimisers
(:mod:`rnngen.optim`) read it, so it lives below both.
"""

from __future__ import annotations

import numpy as np

from .kernels import scatter_add_rows


class RowGrad:
    """A gradient that is zero outside ``rows`` (sorted, distinct), where it is ``values``:
    an embedding's, whose rows are the chunk's distinct tokens, few next to a large
    vocabulary. A dense array would cost a pass to zero it and, in the norm and the SGD
    update, two more passes over all V x E values per step. ``np.asarray`` gives the dense
    gradient."""

    def __init__(self, rows: np.ndarray, values: np.ndarray, shape: tuple):
        self.rows, self.values, self.shape = rows, values, tuple(shape)
        self.dtype = values.dtype

    @classmethod
    def of_rows(cls, ids: np.ndarray, dx: np.ndarray, shape: tuple) -> RowGrad:
        """The gradient of an embedding lookup ``E[ids]`` whose output's gradient is ``dx``
        (one row per id): dE[r] = the sum of dx's rows for id r."""
        rows, where = np.unique(ids, return_inverse=True)
        values = np.zeros((len(rows), dx.shape[1]), dtype=dx.dtype)
        scatter_add_rows(values, where.reshape(-1), dx)
        return cls(rows, values, shape)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=self.dtype)
        out[self.rows] = self.values
        return out

    def __array__(self, dtype=None, copy=None):
        return self.dense() if dtype is None else self.dense().astype(dtype)
