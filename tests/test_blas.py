"""Which BLAS pool gets the threads: NumPy's or the one the Numba kernels call."""

import subprocess
import sys

import pytest

from rnngen import blas


def test_recurrent_weights_outgrow_a_2_mb_cache_from_lstm_400(monkeypatch):
    monkeypatch.setattr(blas, "l2_cache_bytes", lambda: 2 << 20)
    assert blas.recurrence_outgrows_cache(650, 4)           # 6.8 MB
    assert blas.recurrence_outgrows_cache(400, 4)           # 2.6 MB
    assert not blas.recurrence_outgrows_cache(200, 4)       # 0.6 MB
    assert not blas.recurrence_outgrows_cache(650, 1)       # vanilla RNN, 1.7 MB


@pytest.mark.parametrize("size, expected", [("2048K", 2 << 20), ("1M", 1 << 20), ("junk", 1 << 20)])
def test_l2_cache_size_from_sysfs(tmp_path, size, expected):
    for index, (level, kind, value) in enumerate([("1", "Data", "48K"), ("2", "Unified", size),
                                                  ("3", "Unified", "307200K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(value + "\n")
    assert blas.l2_cache_bytes(str(tmp_path)) == expected
    assert blas.l2_cache_bytes(str(tmp_path / "missing")) == 1 << 20


@pytest.mark.parametrize("job, hidden, to_kernels", [("sample", 200, True), ("score", 200, False),
                                                     ("score", 650, True), ("train", 650, False)])
def test_the_job_decides_which_pool_gets_the_threads(monkeypatch, job, hidden, to_kernels):
    monkeypatch.setattr(blas, "l2_cache_bytes", lambda: 2 << 20)
    given = []
    monkeypatch.setattr(blas, "give_threads", lambda count, kernels: given.append((count, kernels)))
    blas.use_threads(2, job, hidden, 4)
    assert given == [(2, to_kernels)]


THREADS = r"""
from rnngen import blas, jit
from rnngen import kernels  # registers the kernels and their set-up
blas.give_threads(2, to_kernels=True)          # before Numba and SciPy are loaded
jit.compile_all()
print(blas.thread_count("scipy"), blas.thread_count("numpy"))
blas.give_threads(2, to_kernels=False)
print(blas.thread_count("scipy"), blas.thread_count("numpy"))
"""


def test_threads_given_before_numba_loads_survive_its_set_up():
    proc = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["2 1", "1 2"], proc.stdout
