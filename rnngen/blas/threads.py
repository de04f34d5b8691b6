"""Which of the two BLAS thread pools gets the threads.

NumPy's OpenBLAS does the whole-chunk products; SciPy's is the one Numba calls for the
per-step products inside the kernels. Two pools spinning on the same cores slow each other
down by orders of magnitude, so only one of them gets threads at a time (:func:`give_threads`):
the kernels' for sampling one line and for scoring models whose recurrent weights outgrow a
core's cache, NumPy's otherwise. Training with the full softmax gives them to neither: its
threads are lanes (:mod:`rnngen.lanes`), each calling BLAS on one thread.
"""

from __future__ import annotations

import contextlib
import os
import sys

from . import openblas

# Below this many multiply-adds per token in the output layer (hidden x vocabulary),
# one BLAS thread is faster than two: the products are too small to split.
PARALLEL_MIN_WORK = 500_000

_kernel_threads = 1
_numpy_threads: int | None = None          # what set_threads last gave NumPy's BLAS


def thread_count(package: str = "numpy") -> int:
    """Threads ``package``'s BLAS ("numpy", or "scipy": the kernels') runs on now."""
    return openblas.get_threads(package)


def kernel_threads() -> int:
    """Threads the kernels' BLAS gets once Numba has loaded it."""
    return _kernel_threads


def numpy_single_threaded() -> bool:
    """Is NumPy's BLAS on one thread? Tracked by set_threads, so no call into OpenBLAS."""
    global _numpy_threads
    if _numpy_threads is None:
        _numpy_threads = thread_count()
    return _numpy_threads == 1


def set_threads(threads: int) -> None:
    """Threads for NumPy's BLAS (the whole-chunk products)."""
    global _numpy_threads
    _numpy_threads = max(1, threads)
    openblas.set_threads("numpy", _numpy_threads)


@contextlib.contextmanager
def numpy_threads(threads: int):
    """NumPy's BLAS on ``threads`` threads inside the block, as before it afterwards."""
    before = thread_count()
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(before)


def apply_kernel_threads() -> None:
    """Before the kernels first run: their BLAS (SciPy's) on the calling thread only, unless
    :func:`give_threads` has handed it the threads."""
    openblas.set_threads("scipy", _kernel_threads)


def give_threads(threads: int, to_kernels: bool) -> None:
    """All ``threads`` to one of the two BLAS pools and one to the other: the kernels' (the
    per-step products, and every product of the sampler) or NumPy's (the whole-chunk products)."""
    global _kernel_threads
    threads = max(1, threads)
    _kernel_threads = threads if to_kernels else 1
    set_threads(1 if to_kernels else threads)
    if "scipy" in sys.modules:          # else apply_kernel_threads() sets it when Numba loads
        openblas.set_threads("scipy", _kernel_threads)


def use_threads(count: int, job: str, hidden: int, gates: int, lines: int = 1) -> None:
    """Give ``count`` threads to the pool that does ``job``'s heavy products ("train",
    "score" or "sample" of ``lines`` lines): the kernels' when sampling one line (every
    product of the sampler runs in its kernel) or scoring with recurrent weights that outgrow
    a core's cache; NumPy's otherwise (sampling more lines then splits them over lanes, each
    kernel with its BLAS on one thread: :func:`rnngen.sample.sample_blocks`)."""
    give_threads(count, (job == "sample" and lines < 2)
                 or (job == "score" and recurrence_outgrows_cache(hidden, gates)))


def l2_cache_bytes(folder: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """One core's L2 cache (Linux sysfs); 1 MiB where it cannot be read."""
    try:
        for index in sorted(os.listdir(folder)):
            with open(os.path.join(folder, index, "level")) as fh:
                if fh.read().strip() != "2":
                    continue
            with open(os.path.join(folder, index, "size")) as fh:
                size = fh.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 1 << 20


def recurrence_outgrows_cache(hidden: int, gates: int, itemsize: int = 4) -> bool:
    """Is a layer's recurrent weight matrix (hidden x gates*hidden) larger than one core's L2
    cache? Then every time step streams it from L3, and the per-step product runs faster
    split over the cores."""
    return hidden * gates * hidden * itemsize > l2_cache_bytes()


def auto_threads(hidden: int, vocab_size: int) -> int:
    """All cores for large output layers, one thread for small ones."""
    return (os.cpu_count() or 1) if hidden * vocab_size >= PARALLEL_MIN_WORK else 1
