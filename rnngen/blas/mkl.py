"""Intel MKL (the optional ``mkl`` extra), through ctypes: its single-threaded sgemm, packed
sgemm, vector exp, and the addresses of its Fortran GEMMs for the kernels' table.

Whether rnngen *uses* MKL is decided in :mod:`rnngen.blas.choice`; this module only finds
and binds it.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import site
import sys
import types

# MKL's interface (32-bit integers) and threading layer (none: the calling thread only).
_MKL_LP64, _MKL_SEQUENTIAL = 0, 1
# cblas_sgemm's codes: row-major storage; an operand read as stored or transposed.
ROW_MAJOR, AS_STORED, TRANSPOSED = 101, 111, 112
# What Numba's np.dot of two matrices calls inside the kernels: float32 and float64 GEMM.
KERNEL_GEMMS = ("sgemm", "dgemm")


def _library_paths() -> list[str]:
    """``libmkl_rt`` where the ``mkl`` wheel puts it (``<prefix>/lib``: the venv's, or the
    user's for ``pip install --user``), beside the core and sequential libraries it loads on
    its first call (missing, MKL would end the process there)."""
    paths = []
    for prefix in (sys.prefix, site.getuserbase()):
        folder = os.path.join(prefix, "lib")
        for path in sorted(glob.glob(os.path.join(folder, "libmkl_rt.so*"))):
            if all(glob.glob(os.path.join(folder, f"libmkl_{part}.so*")) for part in ("core", "sequential")):
                paths.append(path)
    return paths


@functools.cache
def load():
    """MKL's functions, running on the calling thread only, or None when MKL is not installed
    or was loaded before with threads of its own (its layers are set only once)."""
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
            if (lib.MKL_Set_Interface_Layer(_MKL_LP64) != _MKL_LP64
                    or lib.MKL_Set_Threading_Layer(_MKL_SEQUENTIAL) != _MKL_SEQUENTIAL):
                continue
            binding = _bind(lib)
        except (OSError, AttributeError):
            continue
        binding.path = path
        return binding
    return None


def _bind(lib) -> types.SimpleNamespace:
    c_int, c_float, pointer = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    sgemm, exp = lib.cblas_sgemm, lib.vmsExp
    pack_size, pack, compute = lib.cblas_sgemm_pack_get_size, lib.cblas_sgemm_pack, lib.cblas_sgemm_compute
    sgemm.restype = exp.restype = pack.restype = compute.restype = None
    sgemm.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, pointer, c_int, pointer, c_int,
                      c_float, pointer, c_int]
    exp.argtypes = [c_int, pointer, pointer, ctypes.c_longlong]
    pack_size.restype = ctypes.c_size_t
    pack_size.argtypes = [c_int, c_int, c_int, c_int]
    pack.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, pointer, c_int, pointer]
    compute.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, pointer, c_int, pointer, c_int, c_float,
                        pointer, c_int]
    gemm = {name: ctypes.cast(getattr(lib, name + "_"), ctypes.c_void_p).value for name in KERNEL_GEMMS}
    return types.SimpleNamespace(sgemm=sgemm, exp=exp, gemm=gemm, pack_size=pack_size, pack=pack,
                                 compute=compute, version=_version(lib))


def _version(lib) -> str:
    """MKL's version string ("Intel(R) oneAPI Math Kernel Library Version 2026.2.1 ..."), or ""."""
    try:
        text = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(text, len(text))
        return text.value.decode(errors="replace").strip()
    except (AttributeError, OSError):
        return ""


def installed() -> bool:
    return load() is not None


def sgemm_operand(x):
    """(as stored or transposed, leading dimension) of a 2-D float32 array for row-major
    sgemm, or None when neither of its axes is contiguous."""
    rows, cols = x.shape
    step0, step1 = x.strides[0] // 4, x.strides[1] // 4
    if x.strides[1] == 4 and x.strides[0] % 4 == 0 and step0 >= max(1, cols):
        return AS_STORED, step0
    if x.strides[0] == 4 and x.strides[1] % 4 == 0 and step1 >= max(1, rows):
        return TRANSPOSED, step1
    return None


def sgemm(binding, a, b, out) -> None:
    """out = a @ b on MKL for float32 views sgemm can read (see :func:`sgemm_operand`)."""
    (m, k), n = a.shape, b.shape[1]
    (how_a, lda), (how_b, ldb) = sgemm_operand(a), sgemm_operand(b)
    binding.sgemm(ROW_MAJOR, how_a, how_b, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0,
                  out.ctypes.data, out.strides[0] // 4)
