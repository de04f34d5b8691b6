"""Which BLAS does rnngen's single-threaded products: NumPy's own (OpenBLAS in its wheels)
or MKL (the optional ``mkl`` extra) — decided by measuring, on the machine that runs.

MKL is faster than OpenBLAS at these shapes on some CPUs and slower on others, so neither
the vendor nor "it is installed" decides. When MKL is installed, a calibration times both
libraries on one thread on a few fixed product shapes, weighted as a training step of a
PTB-sized model uses them, and the faster wins (MKL only when it is more than ``MARGIN``
faster: a tie stays on NumPy's own BLAS, which has fewer moving parts). The result is cached
per CPU and library versions (``$RNNGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnngen``, else
``~/.cache/rnngen``), so only the first run on a machine pays for it.

``RNNGEN_BLAS=openblas`` or ``RNNGEN_BLAS=mkl`` forces a choice; ``auto`` (or unset)
measures. The choice is one switch for every use of MKL: its sgemm, the kernels' GEMM table,
its vector exp and its packed products.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ..errors import RnngenError
from . import mkl, openblas

ENV = "RNNGEN_BLAS"
CACHE_ENV = "RNNGEN_CACHE_DIR"
CHOICES = ("auto", "openblas", "mkl")
NAMES = {"openblas": "OpenBLAS", "mkl": "MKL"}
# MKL is chosen only when its weighted time is below (1 - MARGIN) x OpenBLAS's.
MARGIN = 0.03
# Bumped whenever the buckets change, so that cached choices are measured again.
CALIBRATION_VERSION = 1
# The products of one training step of a PTB-sized model (2 x 200 LSTM, 10,001 words, batch
# 20 x 35 steps, on two lanes) in the layouts rnngen hands to BLAS: (name, A's shape, B's shape,
# how B is read, products per step). The output layer's products run on 175 rows here (350 in
# a step) to keep the calibration short. "T": B is the transpose of a stored array; "cols":
# B is a column slice of a wider array.
BUCKETS = (
    ("recurrence", (20, 200), (200, 800), "", 140),      # h_{t-1} W_h and its backward twin
    ("logits", (175, 201), (201, 10001), "", 8),         # [h, 1] [V; c]
    ("dh", (175, 10001), (10001, 200), "T", 8),          # dlogits V^T
    ("dV", (201, 700), (700, 1250), "cols", 8),          # [h, 1]^T dlogits, a column piece
    ("dW", (200, 700), (700, 400), "cols", 8),           # x^T dpre of a layer, a column piece
    ("dx", (700, 800), (800, 200), "T", 2),              # dpre U^T
)
REPEATS = 5


@dataclass(frozen=True)
class Choice:
    library: str                    # "openblas" or "mkl"
    reason: str                     # why, in a few words
    timings: dict = field(default_factory=dict)    # library -> ms per weighted step, when measured

    def describe(self) -> str:
        """One line for logs: the library in use and why."""
        return f"BLAS: {NAMES[self.library]} ({self.reason})"


def decide(timings: dict) -> str:
    """The faster library of a calibration's ``{"openblas": ms, "mkl": ms}``."""
    return "mkl" if timings["mkl"] < (1.0 - MARGIN) * timings["openblas"] else "openblas"


def choose(setting: str | None, mkl_installed: bool, measure, cache=None) -> Choice:
    """The choice for the value of ``$RNNGEN_BLAS`` (None: unset). ``measure()`` returns
    calibration timings; ``cache`` (optional) is an object with ``get()`` and ``put(timings)``."""
    value = checked(setting, lambda: mkl_installed)
    if value != "auto":
        return Choice(value, f"{ENV}={value}")
    if not mkl_installed:
        return Choice("openblas", "MKL is not installed")
    timings = cache.get() if cache is not None else None
    how = "cached calibration"
    if timings is None:
        timings, how = measure(), "calibrated"
        if cache is not None:
            cache.put(timings)
    return Choice(decide(timings), f"{how} on {cpu_name()}: OpenBLAS {timings['openblas']:.0f} ms, "
                                   f"MKL {timings['mkl']:.0f} ms per weighted step", timings)


def checked(setting: str | None, mkl_installed=mkl.installed) -> str:
    """``$RNNGEN_BLAS``'s value ("auto" when unset), or a one-line error for a value that is
    not a choice or asks for an MKL that is not installed."""
    value = (setting or "auto").strip().lower()
    if value not in CHOICES:
        raise RnngenError(f"{ENV}={setting!r} is not one of {', '.join(CHOICES)}")
    if value == "mkl" and not mkl_installed():
        raise RnngenError(f"{ENV}=mkl but MKL is not installed (pip install 'rnngen[mkl]', Linux x86-64)")
    return value


def check() -> None:
    """Fail early, in one line, on a bad ``$RNNGEN_BLAS`` (before any work starts)."""
    checked(os.environ.get(ENV))


# --- the calibration --------------------------------------------------------------------

def measure() -> dict:
    """Milliseconds of one weighted step of BUCKETS on one thread, for each library: the
    best of REPEATS runs of each product, the two libraries taking turns."""
    import numpy as np

    binding = mkl.load()
    before = openblas.get_threads("numpy")
    openblas.set_threads("numpy", 1)
    rng = np.random.default_rng(0)
    totals = {"openblas": 0.0, "mkl": 0.0}
    try:
        for _, a_shape, b_shape, how, weight in BUCKETS:
            a, b = _operands(rng, a_shape, b_shape, how)
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
            best = {name: float("inf") for name in totals}
            for _ in range(REPEATS):
                for name in totals:
                    start = time.perf_counter()
                    if name == "mkl":
                        mkl.sgemm(binding, a, b, out)
                    else:
                        np.matmul(a, b, out=out)
                    best[name] = min(best[name], time.perf_counter() - start)
            for name in totals:
                totals[name] += 1e3 * weight * best[name]
    finally:
        openblas.set_threads("numpy", before)
    return totals


def _operands(rng, a_shape, b_shape, how: str):
    """Random float32 A and B of these shapes, B in the layout ``how`` names."""
    import numpy as np

    a = rng.standard_normal(a_shape).astype(np.float32)
    if how == "T":
        return a, rng.standard_normal(b_shape[::-1]).astype(np.float32).T
    if how == "cols":
        wide = rng.standard_normal((b_shape[0], 8 * b_shape[1] + 1)).astype(np.float32)
        return a, wide[:, b_shape[1]:2 * b_shape[1]]
    return a, rng.standard_normal(b_shape).astype(np.float32)


# --- the cache ---------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), or the platform's word for it."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "this CPU"


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo; {} elsewhere."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


class Cache:
    """Calibrations by machine: one JSON file, keyed by CPU and library versions."""

    def __init__(self, folder: str | None = None):
        self.path = os.path.join(folder or cache_folder(), "blas-choice.json")
        self.key = _machine_key()

    def _entries(self) -> dict:
        try:
            with open(self.path) as fh:
                entries = json.load(fh)
            return entries if isinstance(entries, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self) -> dict | None:
        timings = self._entries().get(self.key, {}).get("timings")
        if isinstance(timings, dict) and all(isinstance(timings.get(k), (int, float)) and timings[k] > 0
                                             for k in ("openblas", "mkl")):
            return {k: float(timings[k]) for k in ("openblas", "mkl")}
        return None

    def put(self, timings: dict) -> None:
        """Add this machine's timings, written atomically; a folder we cannot write is skipped."""
        entries = self._entries()
        entries[self.key] = {"timings": timings, "cpu": cpu_name(),
                             "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".blas-choice.")
            with os.fdopen(fd, "w") as fh:
                json.dump(entries, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass


def cache_folder() -> str:
    base = os.environ.get(CACHE_ENV)
    if base:
        return base
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "rnngen")


def _machine_key() -> str:
    """What a calibration holds for: the CPU (model, flags, core count) and the libraries."""
    import numpy as np

    info = _cpuinfo()
    binding = mkl.load()
    parts = [CALIBRATION_VERSION, platform.machine(), os.cpu_count(), np.__version__,
             binding.version if binding else ""]
    parts += [info.get(k, "") for k in ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


# --- the process's choice ----------------------------------------------------------------

_lock = threading.Lock()
_current: Choice | None = None


def current() -> Choice:
    """This process's choice, made on first use (calibrating if need be)."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = choose(os.environ.get(ENV), mkl.installed(), measure, Cache())
    return _current


def active_mkl():
    """MKL's binding when MKL is the choice, else None: every use of MKL asks here."""
    return mkl.load() if current().library == "mkl" else None
