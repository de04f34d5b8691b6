"""Kernels run as Python for tiny jobs (start-up) and as Numba machine code otherwise: both
must compute the same thing."""

import subprocess
import sys

from rnngen import jit

AGREEMENT = r"""
import sys
import numpy as np
from rnngen import jit
from rnngen.model import Model, ModelConfig
from rnngen.score import chunked_logprobs

rng = np.random.default_rng(0)
inputs = rng.integers(0, 30, size=(6, 2)).astype(np.int32)
targets = rng.integers(0, 30, size=(6, 2)).astype(np.int32)
configs = [ModelConfig(vocab_size=30, cell=cell, activation=act, hidden=16, layers=2)
           for cell, act in (("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh"))]
configs.append(ModelConfig(vocab_size=30, cell="lstm", hidden=16, tie_weights=True, softmax="class",
                           class_bounds=[0, 3, 10, 30]))
models = [Model.init(c, seed=1) for c in configs]
python = [chunked_logprobs(m, inputs, targets)[0] for m in models]
print("numba" in sys.modules)
jit.compile_all()
compiled = [chunked_logprobs(m, inputs, targets)[0] for m in models]
print(max(float(np.abs(a - b).max()) for a, b in zip(python, compiled)))
print(min(float(np.abs(a).min()) for a in python))
"""


def test_small_jobs_run_as_python_and_agree_with_the_compiled_kernels():
    proc = subprocess.run([sys.executable, "-c", AGREEMENT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    numba_loaded, max_diff, smallest = proc.stdout.split()
    assert numba_loaded == "False"                  # the first pass never loaded Numba
    assert float(max_diff) < 1e-5 and float(smallest) > 0.1


def test_interpreting_stops_once_the_process_has_spent_its_budget(monkeypatch):
    monkeypatch.setattr(jit, "_numba_loaded", False)
    monkeypatch.setattr(jit, "_interpreted_work", 0)
    half = jit.SMALL_JOB // 2
    seen = []
    for _ in range(3):
        with jit.interpreted_if_small(half, 1, 1):
            seen.append(jit._interpret)
    assert seen == [True, True, False] and not jit._interpret
    monkeypatch.setattr(jit, "_interpreted_work", 0)
    with jit.interpreted_if_small(jit.SMALL_JOB + 1, 1, 1):
        assert not jit._interpret


FIRST_CALLS_AT_ONCE = r"""
import threading, time
from rnngen import jit, kernels
calls, errors = [], []
jit.before_compile(lambda: (calls.append(1), time.sleep(0.3)))
def first_call():                       # what a lane's first kernel call does
    try:
        jit.compile_all()
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=first_call) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(calls), errors, all(k.compiled is not None for k in jit._kernels))
"""


def test_threads_that_call_their_first_kernels_at_once_compile_once():
    out = subprocess.run([sys.executable, "-c", FIRST_CALLS_AT_ONCE], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "1 [] True"
