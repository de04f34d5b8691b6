"""Which BLAS pool gets the threads: NumPy's or the one the Numba kernels call."""

import subprocess
import sys

from rnngen import blas


def test_recurrent_weights_outgrow_a_2_mb_cache_from_lstm_400(monkeypatch):
    monkeypatch.setattr(blas, "l2_cache_bytes", lambda: 2 << 20)
    assert blas.recurrence_outgrows_cache(650, 4)           # 6.8 MB
    assert blas.recurrence_outgrows_cache(400, 4)           # 2.6 MB
    assert not blas.recurrence_outgrows_cache(200, 4)       # 0.6 MB
    assert not blas.recurrence_outgrows_cache(650, 1)       # vanilla RNN, 1.7 MB


def test_l2_cache_size_is_read_or_defaulted():
    assert blas.l2_cache_bytes() >= 1 << 15


THREADS = r"""
from rnngen import blas, jit
from rnngen import kernels  # registers the kernels and their set-up
blas.give_threads(2, to_kernels=True)          # before Numba and SciPy are loaded
jit.compile_all()
def threads(package):
    for lib in blas._openblas(package):
        for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)()
print(threads("scipy"), blas.numpy_threads())
blas.give_threads(2, to_kernels=False)
print(threads("scipy"), blas.numpy_threads())
"""


def test_threads_given_before_numba_loads_survive_its_set_up():
    proc = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["2 1", "1 2"], proc.stdout
