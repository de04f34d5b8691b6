"""Matrix products and the softmax's exp, on MKL where it is the chosen library.

Where a product runs on one thread anyway (each lane's, or everything with --threads 1),
:func:`matmul` hands it to MKL's sgemm when :mod:`rnngen.blas.choice` picked MKL, and to
NumPy otherwise. The results agree to float32 rounding either way.
"""

from __future__ import annotations

from . import choice, threads
from .mkl import ROW_MAJOR as _ROW_MAJOR
from .mkl import sgemm_operand as _sgemm_operand

# Its vector functions' mode: "low accuracy" (within 4 ulp), no error reporting.
_VML_LA, _VML_ERRMODE_IGNORE = 0x1, 0x100
# Fewest values for which exp_in_place calls MKL (for fewer, NumPy's exp is faster).
VML_MIN_SIZE = 16_384
# cblas_sgemm_pack's code for the operand it packs (B), and sgemm_compute's for "packed".
_B_MATRIX, _PACKED = 162, 151
# The rows of A that Packed tells MKL to expect; any other count works with the same copy.
_PACK_ROWS = 256


def exp_in_place(x) -> None:
    """x <- exp(x) for a float array, overflow to inf and underflow to 0 without a warning.

    MKL's vector exp (its "LA" accuracy, within 4 ulp) when MKL is the chosen library and
    ``x`` is one contiguous float32 block of at least VML_MIN_SIZE values; NumPy's exp
    otherwise (for fewer values the ctypes call costs more than it saves).
    """
    import numpy as np

    mkl = choice.active_mkl()
    if mkl is None or x.dtype != np.float32 or not x.flags.c_contiguous or not VML_MIN_SIZE <= x.size < 2 ** 31:
        with np.errstate(over="ignore", under="ignore"):
            np.exp(x, out=x)
        return
    mkl.exp(x.size, x.ctypes.data, x.ctypes.data, _VML_LA | _VML_ERRMODE_IGNORE)


def matmul(a, b, out=None):
    """``a @ b`` for 2-D arrays, into ``out`` when given (as ``np.matmul``).

    On MKL's sgemm when MKL is the chosen library (:mod:`rnngen.blas.choice`), both are
    float32 and NumPy's BLAS is on one thread (MKL runs on the calling thread only);
    np.matmul otherwise.
    """
    import numpy as np

    mkl = choice.active_mkl() if threads.numpy_single_threaded() else None
    if (mkl is None or a.dtype != np.float32 or b.dtype != np.float32 or a.ndim != 2 or b.ndim != 2
            or a.shape[1] != b.shape[0] or 0 in a.shape or 0 in b.shape):
        return np.matmul(a, b, out=out)
    (m, k), n = a.shape, b.shape[1]
    how_a, how_b = _sgemm_operand(a), _sgemm_operand(b)
    target = _sgemm_out(out, m, n, a, b) if how_a and how_b else None
    if target is None:
        return np.matmul(a, b, out=out)
    mkl.sgemm(_ROW_MAJOR, how_a[0], how_b[0], m, n, k, 1.0, a.ctypes.data, how_a[1], b.ctypes.data, how_b[1],
              0.0, target.ctypes.data, target.strides[0] // 4)
    return target


def _sgemm_out(out, m, n, *operands):
    """Where sgemm writes an (m, n) product: ``out``, or a new array when it is None; None
    when sgemm cannot write into ``out`` (not float32 rows of contiguous values, or
    overlapping an operand)."""
    import numpy as np

    if out is None:
        return np.empty((m, n), dtype=np.float32)
    if (out.dtype != np.float32 or out.shape != (m, n) or out.strides[1] != 4 or out.strides[0] % 4
            or out.strides[0] // 4 < n or any(np.may_share_memory(out, x) for x in operands)):
        return None
    return out


class Packed:
    """The right operand ``b`` of many products ``a @ b``, copied once into MKL's internal
    GEMM layout (``cblas_sgemm_pack``), so that each product skips that copy: the output
    layer's weights, used by every row piece of a scoring job. With ``b`` as stored
    the products of two rows or more are sgemm's to the bit (sgemm does one row as a GEMV,
    whose sums differ in rounding, as they do with ``b`` a transposed view). Without MKL, or
    when :func:`matmul` would not use it, :meth:`matmul` is :func:`matmul` with ``b``. ``b``
    must not change while this is in use.
    """

    def __init__(self, b):
        import numpy as np

        self.b, self._buffer = b, None
        mkl = choice.active_mkl() if threads.numpy_single_threaded() else None
        how = _sgemm_operand(b) if b.dtype == np.float32 and b.ndim == 2 else None
        if mkl is None or how is None or 0 in b.shape:
            return
        (k, n), align = b.shape, 64
        size = int(mkl.pack_size(_B_MATRIX, _PACK_ROWS, n, k))
        if size <= 0:                   # MKL declines to pack this shape
            return
        store = np.empty(size + align, dtype=np.uint8)
        start = -store.ctypes.data % align
        buffer = store[start:start + size]          # a view: keeps ``store`` alive
        mkl.pack(_ROW_MAJOR, _B_MATRIX, how[0], _PACK_ROWS, n, k, 1.0, b.ctypes.data, how[1], buffer.ctypes.data)
        self._buffer, self._mkl = buffer, mkl

    def matmul(self, a, out=None):
        """``a @ b`` into ``out`` (as :func:`matmul`)."""
        import numpy as np

        (k, n), buffer = self.b.shape, self._buffer
        how_a = _sgemm_operand(a) if a.dtype == np.float32 and a.ndim == 2 else None
        target = (_sgemm_out(out, a.shape[0], n, a, self.b)
                  if buffer is not None and how_a is not None and a.shape[1] == k and a.shape[0] else None)
        if target is None:
            return matmul(a, self.b, out)
        self._mkl.compute(_ROW_MAJOR, how_a[0], _PACKED, a.shape[0], n, k, a.ctypes.data, how_a[1],
                          buffer.ctypes.data, n, 0.0, target.ctypes.data, target.strides[0] // 4)
        return target
