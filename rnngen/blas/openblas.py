"""The OpenBLAS libraries bundled in NumPy's and SciPy's wheels: their thread counts.

NumPy's does rnngen's whole-chunk products; SciPy's is the one Numba calls for ``np.dot``
inside the kernels. Each has its own thread pool, set through the function its build exports.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

# The thread-count functions of OpenBLAS under the names its builds export; "{}" is set or get.
_THREAD_FUNCTIONS = ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
                     "openblas_{}_num_threads64_", "openblas_{}_num_threads")


@functools.cache
def _libraries(package: str) -> tuple:
    """ctypes handles of the OpenBLAS bundled in ``package``'s wheel (``<package>.libs``)."""
    try:
        module = __import__(package)
    except ImportError:
        return ()
    folder = os.path.join(os.path.dirname(os.path.dirname(module.__file__)), f"{package}.libs")
    libs = []
    for path in glob.glob(os.path.join(folder, "lib*openblas*.so*")):
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return tuple(libs)


def _thread_function(package: str, verb: str):
    """``package``'s OpenBLAS function that sets or gets its thread count, or None."""
    for lib in _libraries(package):
        for name in _THREAD_FUNCTIONS:
            if hasattr(lib, name.format(verb)):
                return getattr(lib, name.format(verb))
    return None


def get_threads(package: str = "numpy") -> int:
    """Threads ``package``'s BLAS ("numpy", or "scipy": the kernels') runs on now."""
    get = _thread_function(package, "get")
    return int(get()) if get else 1


def set_threads(package: str, count: int) -> None:
    put = _thread_function(package, "set")
    if put:
        put(int(count))
