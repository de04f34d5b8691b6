"""Thread counts of the two BLAS libraries in the process.

NumPy and SciPy wheels each bundle their own OpenBLAS. NumPy's does rnngen's big
whole-chunk products (the output layer); SciPy's is the one Numba calls for the small
per-time-step products inside the kernels. Each spins its own thread pool; on 2 cores two
spinning pools, or one pool sharing a core with another busy process, turned a 1 ms
recurrence into 540 ms and a 70k tokens/s training run into 8k (measured). So only one of
them gets threads at a time (:func:`give_threads`): the kernels' for sampling and for
scoring models whose recurrent weights outgrow a core's cache, NumPy's otherwise. Training
with the full softmax gives them to neither: its threads are lanes (:mod:`rnngen.lanes`),
each calling BLAS on one thread (:func:`training_lanes`); scoring does the same with
NumPy's threads.

Where a product runs on one thread anyway (each lane's, or everything with --threads 1),
:func:`matmul` hands it to MKL's sgemm when the optional ``mkl`` extra is installed: the
library PyTorch's CPU wheel is built with, faster than OpenBLAS on the output layer's shapes.
The kernels' products go to MKL too while the kernels run on one thread
(:func:`kernel_products_on_mkl`): twice as fast at the recurrence's batch-20 products.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import importlib.machinery
import importlib.util
import os
import site
import sys
import types

from . import lanes

# The thread-count functions of OpenBLAS under the names its builds export; "{}" is set or get.
_THREAD_FUNCTIONS = ("scipy_openblas_{}_num_threads64_", "scipy_openblas_{}_num_threads",
                     "openblas_{}_num_threads64_", "openblas_{}_num_threads")

# Below this many multiply-adds per token in the output layer (hidden x vocabulary),
# one BLAS thread is faster than two: the products are too small to split.
PARALLEL_MIN_WORK = 500_000

# cblas_sgemm's codes: row-major storage; an operand read as stored or transposed.
_ROW_MAJOR, _AS_STORED, _TRANSPOSED = 101, 111, 112
# MKL's interface (32-bit integers) and threading layer (none: the calling thread only).
_MKL_LP64, _MKL_SEQUENTIAL = 0, 1
# Its vector functions' mode: "low accuracy" (within 4 ulp), no error reporting.
_VML_LA, _VML_ERRMODE_IGNORE = 0x1, 0x100
# Fewest values for which exp_in_place calls MKL (smaller: NumPy's exp is faster).
VML_MIN_SIZE = 16_384
# cblas_sgemm_pack's code for the operand it packs (B), and sgemm_compute's for "packed".
_B_MATRIX, _PACKED = 162, 151
# The rows of A that Packed tells MKL to expect; any other count works with the same copy
# (products of 2-350 rows matched sgemm's to the bit).
_PACK_ROWS = 256
# What Numba's np.dot of two matrices calls inside the kernels: float32 and float64 GEMM.
_KERNEL_GEMMS = ("sgemm", "dgemm")


@functools.cache
def _openblas(package: str) -> tuple:
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
    for lib in _openblas(package):
        for name in _THREAD_FUNCTIONS:
            if hasattr(lib, name.format(verb)):
                return getattr(lib, name.format(verb))
    return None


def thread_count(package: str = "numpy") -> int:
    """Threads ``package``'s BLAS ("numpy", or "scipy": the kernels') runs on now."""
    get = _thread_function(package, "get")
    return int(get()) if get else 1


def _set(package: str, count: int) -> None:
    put = _thread_function(package, "set")
    if put:
        put(int(count))


def load_kernel_blas() -> None:
    """Load the table of BLAS functions that Numba's ``np.dot`` calls inside the kernels
    (SciPy's ``cython_blas``), and point its GEMMs at MKL's where :func:`kernel_products_on_mkl`
    says so.

    Numba finds the table by importing ``scipy.linalg.cython_blas``, which first runs all of
    ``scipy.linalg/__init__`` (0.25 s against 0.04 s on our 2-core machine). The extension
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
    """Point the GEMM entries of ``cython_blas.__pyx_capi__`` at MKL's, when MKL is there
    and the kernels' BLAS runs on one thread (MKL's is sequential); returns whether it did.

    Numba's ``np.dot`` looks its GEMM up in that table on its first call, so this must run
    before the kernels do. SciPy's OpenBLAS is slow at the recurrence's small products (one
    thread, inside a kernel, best of 7, three runs): an LSTM step's 20 x 200 @ 200 x 800 took
    95-99 µs against MKL's 40-50, its backward twin 20 x 800 @ 800 x 200 107-109 against
    67-83. With one row (scoring one stream) Numba calls GEMV instead, left on OpenBLAS: on
    MKL it took 8.0-10.9 µs against 9.2-9.6 (1 x 200 @ 200 x 800), no gain. The new capsules
    keep SciPy's signature names, so SciPy's own Cython modules that import these functions
    later accept them (same Fortran interface) and call MKL too (MKL_VERBOSE shows k-means
    and the QR update doing so).
    """
    mkl = _mkl()
    capi = getattr(cython_blas, "__pyx_capi__", None)
    if mkl is None or _kernel_threads != 1 or not isinstance(capi, dict) or not all(n in capi for n in _KERNEL_GEMMS):
        return False
    python = ctypes.pythonapi
    signature = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)(("PyCapsule_GetName", python))
    capsule = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        ("PyCapsule_New", python))
    table = dict(capi)
    for name in _KERNEL_GEMMS:
        table[name] = capsule(mkl.gemm[name], signature(capi[name]), None)
    cython_blas.__pyx_capi__ = table
    return True


_kernel_threads = 1
_numpy_threads: int | None = None          # what set_threads last gave NumPy's BLAS


@functools.cache
def _mkl():
    """MKL's ``sgemm`` and ``exp`` (below), running on the calling thread only, and the
    addresses of its Fortran ``gemm`` (for the kernels: :func:`kernel_products_on_mkl`); or None.

    Looks for ``libmkl_rt`` where the ``mkl`` wheel puts it (``<prefix>/lib``: the venv's, or
    the user's for ``pip install --user``), beside the core and sequential libraries it
    loads on its first call (missing, MKL would end the process there). None when it is
    missing, when RNNGEN_BLAS=openblas, or when MKL was loaded before with threads of its
    own (its layers are set only once).
    """
    if os.environ.get("RNNGEN_BLAS", "").lower() == "openblas":
        return None
    for prefix in (sys.prefix, site.getuserbase()):
        folder = os.path.join(prefix, "lib")
        for path in sorted(glob.glob(os.path.join(folder, "libmkl_rt.so*"))):
            if not all(glob.glob(os.path.join(folder, f"libmkl_{part}.so*")) for part in ("core", "sequential")):
                continue
            try:
                lib = ctypes.CDLL(path)
                if (lib.MKL_Set_Interface_Layer(_MKL_LP64) != _MKL_LP64
                        or lib.MKL_Set_Threading_Layer(_MKL_SEQUENTIAL) != _MKL_SEQUENTIAL):
                    continue
                sgemm, exp = lib.cblas_sgemm, lib.vmsExp
                pack_size, pack, compute = lib.cblas_sgemm_pack_get_size, lib.cblas_sgemm_pack, lib.cblas_sgemm_compute
                gemm = {name: ctypes.cast(getattr(lib, name + "_"), ctypes.c_void_p).value for name in _KERNEL_GEMMS}
            except (OSError, AttributeError):
                continue
            c_int, c_float, pointer = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
            sgemm.restype = exp.restype = None
            sgemm.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, pointer, c_int, pointer, c_int,
                              c_float, pointer, c_int]
            exp.argtypes = [c_int, pointer, pointer, ctypes.c_longlong]
            pack_size.restype, pack.restype, compute.restype = ctypes.c_size_t, None, None
            pack_size.argtypes = [c_int, c_int, c_int, c_int]
            pack.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, pointer, c_int, pointer]
            compute.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, pointer, c_int, pointer, c_int, c_float,
                                pointer, c_int]
            return types.SimpleNamespace(sgemm=sgemm, exp=exp, gemm=gemm, pack_size=pack_size, pack=pack,
                                         compute=compute)
    return None


def product_library() -> str:
    """Which library :func:`matmul` uses for products on one thread: "mkl", or "openblas"
    for NumPy's own BLAS (OpenBLAS in NumPy's PyPI wheels)."""
    return "mkl" if _mkl() else "openblas"


def exp_in_place(x) -> None:
    """x <- exp(x) for a float array, overflow to inf and underflow to 0 without a warning.

    MKL's vector exp (its "LA" accuracy, within 4 ulp; measured within 1.1e-7 relative,
    NumPy's within 1.9e-7) when MKL is there and ``x`` is one contiguous float32 block of
    at least VML_MIN_SIZE values. For 350 x 10,000 logits on one thread, with a copy and the
    row sums around it (2.7-3.0 ms of it), 3.6-4.0 ms against NumPy's 5.2-5.4 ms (measured
    twice). NumPy's exp otherwise: below 16,384 values the ctypes call costs more than it
    saves (4,096: 6.4 µs against 3.4 µs).
    """
    import numpy as np

    mkl = _mkl()
    if mkl is None or x.dtype != np.float32 or not x.flags.c_contiguous or not VML_MIN_SIZE <= x.size < 2 ** 31:
        with np.errstate(over="ignore", under="ignore"):
            np.exp(x, out=x)
        return
    mkl.exp(x.size, x.ctypes.data, x.ctypes.data, _VML_LA | _VML_ERRMODE_IGNORE)


def _sgemm_operand(x):
    """(as stored or transposed, leading dimension) of a 2-D float32 array for row-major
    sgemm, or None when neither of its axes is contiguous."""
    rows, cols = x.shape
    step0, step1 = x.strides[0] // 4, x.strides[1] // 4
    if x.strides[1] == 4 and x.strides[0] % 4 == 0 and step0 >= max(1, cols):
        return _AS_STORED, step0
    if x.strides[0] == 4 and x.strides[1] % 4 == 0 and step1 >= max(1, rows):
        return _TRANSPOSED, step1
    return None


def matmul(a, b, out=None):
    """``a @ b`` for 2-D arrays, into ``out`` when given (as ``np.matmul``).

    On MKL's sgemm (see :func:`_mkl`) when both are float32 and NumPy's BLAS is on one
    thread: the output layer's three products of a PTB step ran 1.13-1.15x faster on MKL than
    on NumPy's OpenBLAS, one thread each (measured on our 2-core Xeon). np.matmul otherwise.
    """
    import numpy as np

    mkl = _mkl() if _numpy_single_threaded() else None
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
    layer's weights, used by every row piece of a scoring job. One
    thread, 201 x 10,001 float32 (the stacked output layer): 350 rows 12.9 -> 12.0 ms,
    256 rows 9.7 -> 8.6, 175 rows 7.1 -> 5.7; packing costs 0.8-0.9 ms. With ``b`` as stored
    the products of two rows or more are sgemm's to the bit (sgemm does one row as a GEMV,
    whose sums differ in rounding, as they do with ``b`` a transposed view). Without MKL, or
    when :func:`matmul` would not use it, :meth:`matmul` is :func:`matmul` with ``b``. ``b``
    must not change while this is in use.
    """

    def __init__(self, b):
        import numpy as np

        self.b, self._buffer = b, None
        mkl = _mkl() if _numpy_single_threaded() else None
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


def _numpy_single_threaded() -> bool:
    """Is NumPy's BLAS on one thread? Tracked by set_threads, so no call into OpenBLAS."""
    global _numpy_threads
    if _numpy_threads is None:
        _numpy_threads = thread_count()
    return _numpy_threads == 1


def apply_kernel_threads() -> None:
    """Before the kernels first run: their BLAS (SciPy's) on the calling thread only, unless
    :func:`give_threads` has handed it the threads."""
    _set("scipy", _kernel_threads)


def set_threads(threads: int) -> None:
    """Threads for NumPy's BLAS (the whole-chunk products)."""
    global _numpy_threads
    _numpy_threads = max(1, threads)
    _set("numpy", _numpy_threads)


@contextlib.contextmanager
def numpy_threads(threads: int):
    """NumPy's BLAS on ``threads`` threads inside the block, as before it afterwards."""
    before = thread_count()
    set_threads(threads)
    try:
        yield
    finally:
        set_threads(before)


def training_lanes(threads: int, softmax: str) -> lanes.Lanes:
    """How a training step uses ``threads`` threads; sets NumPy's BLAS to match.

    Full softmax: one :class:`Lanes` lane per thread, BLAS on one thread in each. A 2x200
    LSTM on PTB trained 1.12-1.23x faster so than with BLAS splitting every product (and
    the recurrence, softmax passes and optimiser on one core). The class softmax's products
    are per class, too small to give each lane its own: BLAS splits them, lanes are serial.
    """
    if threads > 1 and softmax == "full":
        set_threads(1)
        return lanes.shared(threads)
    set_threads(threads)
    return lanes.SERIAL


def give_threads(threads: int, to_kernels: bool) -> None:
    """All ``threads`` to one of the two BLAS pools and one to the other: the kernels' (the
    per-step products, and every product of the sampler) or NumPy's (the whole-chunk
    products). Both pools spinning on 2 cores fight: scoring a 2x650 LSTM ran at 908
    tokens/s with both on 2 threads, 1,367 with NumPy's alone and 1,987 with the kernels'."""
    global _kernel_threads
    threads = max(1, threads)
    _kernel_threads = threads if to_kernels else 1
    set_threads(1 if to_kernels else threads)
    if "scipy" in sys.modules:          # else apply_kernel_threads() sets it when Numba loads
        _set("scipy", _kernel_threads)


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
    split over the cores: a 2x650 LSTM (6.8 MB against 2 MB) scored 1.4x faster so, a 2x200
    one (0.6 MB) 1.2x slower."""
    return hidden * gates * hidden * itemsize > l2_cache_bytes()


def auto_threads(hidden: int, vocab_size: int) -> int:
    """All cores for large output layers, one thread for small ones."""
    return (os.cpu_count() or 1) if hidden * vocab_size >= PARALLEL_MIN_WORK else 1
