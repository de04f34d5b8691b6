"""The speed plumbing behind rnngen's products: which BLAS library, and which threads.

- :mod:`.choice` — NumPy's OpenBLAS or MKL (the optional extra), chosen by measuring on the
  machine that runs (``RNNGEN_BLAS=openblas|mkl`` forces it).
- :mod:`.products` — ``matmul``, ``Packed`` and ``exp_in_place``: on MKL when it is the
  choice and the product runs on one thread, on NumPy otherwise.
- :mod:`.threads` — which of the two BLAS thread pools (NumPy's, or SciPy's that the Numba
  kernels call) gets the threads.
- :mod:`.kernel_table` — the kernels' BLAS table, loaded quickly and pointed at MKL.
- :mod:`.openblas`, :mod:`.mkl` — the libraries themselves, through ctypes.

The rest of rnngen uses only the names below.
"""

import os

from . import mkl
from .choice import Choice, cpu_name
from .choice import current as chosen
from .kernel_table import load_kernel_blas
from .products import VML_MIN_SIZE, Packed, exp_in_place, matmul
from .threads import (
    apply_kernel_threads,
    auto_threads,
    give_threads,
    l2_cache_bytes,
    numpy_threads,
    recurrence_outgrows_cache,
    set_threads,
    thread_count,
    use_threads,
)


def product_library() -> str:
    """Which library :func:`matmul` uses for products on one thread: "mkl" or "openblas"."""
    return chosen().library


def describe() -> list[str]:
    """Lines for ``rnngen info``: the CPU, the libraries found, the one in use and why."""
    import numpy as np  # here: the CLI imports this package at start-up, before it needs NumPy

    binding = mkl.load()
    return [f"cpu         {cpu_name()}, {os.cpu_count()} cores",
            f"numpy       {np.__version__} (its BLAS: OpenBLAS)",
            f"mkl         {binding.version if binding else 'not installed'}",
            f"blas        {chosen().describe().removeprefix('BLAS: ')}"]


def mkl_installed() -> bool:
    return mkl.installed()


__all__ = ["Choice", "Packed", "VML_MIN_SIZE", "apply_kernel_threads", "auto_threads", "chosen", "describe",
           "exp_in_place", "give_threads", "l2_cache_bytes", "load_kernel_blas", "matmul",
           "mkl_installed", "numpy_threads", "product_library", "recurrence_outgrows_cache", "set_threads",
           "thread_count", "use_threads"]
