"""The table of BLAS functions that Numba's ``np.dot`` calls inside the kernels: SciPy's
``scipy.linalg.cython_blas``, loaded quickly, with its GEMMs pointed at MKL's when MKL is the
chosen library and the kernels' BLAS runs on one thread."""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import sys

from . import choice, mkl, threads


def load_kernel_blas() -> None:
    """Load SciPy's ``cython_blas`` and point its GEMMs at MKL's where
    :func:`kernel_products_on_mkl` says so.

    Numba finds the table by importing ``scipy.linalg.cython_blas``, which first runs all of
    ``scipy.linalg/__init__``, several times slower than the extension module alone. The
    module needs nothing from that package, so it is loaded straight from its file; a later
    ``import scipy.linalg`` still works. Falls back to the normal import (then unpatched).
    """
    name = "scipy.linalg.cython_blas"
    if name not in sys.modules:
        _load_alone(name)
    if name in sys.modules:
        kernel_products_on_mkl(sys.modules[name])


def _load_alone(name: str) -> None:
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return
    folder = os.path.join(spec.submodule_search_locations[0], "linalg")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "cython_blas" + suffix)
        if os.path.exists(path):
            try:
                module_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(module_spec)
                module_spec.loader.exec_module(module)
            except (ImportError, OSError):
                return                      # Numba's own import of it then runs (or says why not)
            sys.modules[name] = module
            return


def kernel_products_on_mkl(cython_blas) -> bool:
    """Point the GEMM entries of ``cython_blas.__pyx_capi__`` at MKL's, when MKL is the
    chosen library and the kernels' BLAS runs on one thread (MKL's is sequential); returns
    whether it did.

    Numba's ``np.dot`` looks its GEMM up in that table on its first call, so this runs
    before the kernels do. With one row Numba calls GEMV, which stays on SciPy's OpenBLAS.
    The new capsules keep SciPy's signature names, so SciPy's own Cython modules that import
    these functions later accept them (same Fortran interface) and call MKL too.
    """
    binding = choice.active_mkl()
    capi = getattr(cython_blas, "__pyx_capi__", None)
    if (binding is None or threads.kernel_threads() != 1 or not isinstance(capi, dict)
            or not all(n in capi for n in mkl.KERNEL_GEMMS)):
        return False
    python = ctypes.pythonapi
    signature = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)(("PyCapsule_GetName", python))
    capsule = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        ("PyCapsule_New", python))
    table = dict(capi)
    for name in mkl.KERNEL_GEMMS:
        table[name] = capsule(binding.gemm[name], signature(capi[name]), None)
    cython_blas.__pyx_capi__ = table
    return True
