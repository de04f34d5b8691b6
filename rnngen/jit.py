"""Numba, loaded when machine code pays for itself.

Every kernel is a plain Python function over NumPy arrays, registered with ``@kernel``. The
first call of any kernel hands them all to ``numba.njit(cache=True)``, which compiles each
(after the first run: loads it from its cache) at its first call, and rebinds each
module's name to the compiled function, so that kernels calling kernels call machine code.

Even from the cache, importing Numba and its first dispatch cost most of a run whose job
is a few tokens. So inside :func:`interpreted_if_small`, a small job runs the same kernel
functions as Python instead and Numba is never imported (``make bench-startup`` measures
``rnngen score "a b c"``). Training, sampling and files always compile.
"""

from __future__ import annotations

import functools
import sys
import threading
from contextlib import contextmanager

# Let LLVM vectorise the elementwise loops: NumPy's error model drops the ZeroDivisionError
# branch Numba puts in every division (it blocks vectorising tanh's rational form), and
# these fast-math flags allow fused multiply-adds and reciprocals — not assuming away NaN
# or inf, which divergence detection relies on. nogil: a second lane (rnngen.lanes) works
# on the output layer or weight gradients while a kernel runs the recurrence.
LOOP_OPTIONS = {"nogil": True, "error_model": "numpy", "fastmath": {"contract", "arcp", "afn"}}
# For sums over a row: reassociation lets LLVM keep several partial sums in vector lanes
# (without it a sum is one add after another). Only for kernels where order is all it changes.
SUM_OPTIONS = {**LOOP_OPTIONS, "fastmath": LOOP_OPTIONS["fastmath"] | {"reassoc"}}

# The most work a process runs as Python, in time steps x layers x hidden units: chosen so
# that interpreting it costs less than loading Numba would. Past it (a long stream of lines
# on stdin, say) the kernels are compiled.
SMALL_JOB = 50_000

_kernels: list[Kernel] = []
_before_compile: list = []
_interpret = False
_interpreted_work = 0
_numba_loaded = False
_compiling = threading.Lock()   # lanes may call their first kernels at once


class Kernel:
    """A kernel function; calls go to Numba's compiled version, or the Python one while
    interpreting small jobs."""

    def __init__(self, py_func, options: dict):
        self.py_func = py_func
        self.options = options
        self.compiled = None
        functools.update_wrapper(self, py_func)

    def __call__(self, *args):
        if self.compiled is None:
            if _interpret:
                return self.py_func(*args)
            compile_all()
        return self.compiled(*args)


def kernel(_func=None, **options):
    """Register a kernel: ``@kernel`` or ``@kernel(**LOOP_OPTIONS)`` (options for njit)."""
    def register(py_func):
        k = Kernel(py_func, options)
        _kernels.append(k)
        return k
    return register(_func) if _func is not None else register


def before_compile(hook):
    """Call ``hook()`` once, just before the kernels are first compiled or loaded (to register
    Numba overloads, to set up BLAS, to tell the user). Returns the hook."""
    if hook not in _before_compile:
        _before_compile.append(hook)
    return hook


def compile_all() -> None:
    """Hand every registered kernel not yet compiled to Numba (which compiles it, or loads it
    from its cache, at its first call with each argument types)."""
    global _numba_loaded
    with _compiling:
        pending = [k for k in _kernels if k.compiled is None]
        if not pending:
            return
        from numba import njit

        if not _numba_loaded:
            for hook in _before_compile:
                hook()
            _numba_loaded = True
        for k in pending:
            k.compiled = njit(cache=True, **k.options)(k.py_func)
            setattr(sys.modules[k.py_func.__module__], k.py_func.__name__, k.compiled)


def interpreting() -> bool:
    """Are kernels running as Python here (they then hold the GIL)?"""
    return _interpret


@contextmanager
def interpreted_if_small(steps: int, layers: int, hidden: int):
    """Within: run kernels as Python if Numba is not loaded yet and this job (``steps`` time
    steps of a ``layers`` x ``hidden`` network), with all run so before it, is small."""
    global _interpret, _interpreted_work
    saved = _interpret
    work = steps * layers * hidden
    if not _numba_loaded and _interpreted_work + work <= SMALL_JOB:
        _interpreted_work += work
        _interpret = True
    try:
        yield
    finally:
        _interpret = saved
