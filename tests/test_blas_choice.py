"""Which BLAS rnngen uses: chosen by measuring, forced by RNNGEN_BLAS, said by info and train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CORPUS

from rnngen import blas
from rnngen.blas import choice
from rnngen.cli import cli
from rnngen.errors import RnngenError

ROOT = Path(__file__).resolve().parent.parent


def never():
    raise AssertionError("measured although the choice needs no measurement")


class MemoryCache:
    def __init__(self, timings=None):
        self.timings, self.puts = timings, []

    def get(self):
        return self.timings

    def put(self, timings):
        self.puts.append(timings)
        self.timings = timings


@pytest.mark.parametrize("timings, expected", [({"openblas": 100.0, "mkl": 80.0}, "mkl"),
                                               ({"openblas": 80.0, "mkl": 100.0}, "openblas"),
                                               ({"openblas": 100.0, "mkl": 99.0}, "openblas"),   # within the margin
                                               ({"openblas": 100.0, "mkl": 96.0}, "mkl")])
def test_the_faster_library_wins(timings, expected):
    cache = MemoryCache()
    chosen = choice.choose(None, True, lambda: timings, cache)
    assert chosen.library == expected and chosen.timings == timings
    assert cache.puts == [timings]                                   # measured once, then remembered
    again = choice.choose("auto", True, never, cache)
    assert again.library == expected and "cached" in again.reason
    assert "calibrated" in chosen.reason and f"OpenBLAS {timings['openblas']:.0f} ms, MKL" in chosen.reason


@pytest.mark.parametrize("setting, installed, expected", [("openblas", True, "openblas"), ("mkl", True, "mkl"),
                                                          (" MKL ", True, "mkl"), (None, False, "openblas"),
                                                          ("auto", False, "openblas"), ("", False, "openblas")])
def test_the_variable_forces_the_choice_without_measuring(setting, installed, expected):
    chosen = choice.choose(setting, installed, never, MemoryCache())
    assert chosen.library == expected
    assert chosen.describe().startswith(f"BLAS: {choice.NAMES[expected]} (")


@pytest.mark.parametrize("setting, installed, message", [("mkl", False, "MKL is not installed"),
                                                         ("blis", True, "is not one of auto, openblas, mkl"),
                                                         ("1", False, "is not one of")])
def test_bad_settings_are_one_line_errors(setting, installed, message):
    with pytest.raises(RnngenError, match=message):
        choice.choose(setting, installed, never, MemoryCache())


def test_the_cache_keeps_each_machines_timings(tmp_path):
    first = choice.Cache(str(tmp_path))
    assert first.get() is None
    first.put({"openblas": 12.5, "mkl": 20.0})
    assert choice.Cache(str(tmp_path)).get() == {"openblas": 12.5, "mkl": 20.0}
    entries = json.loads((tmp_path / "blas-choice.json").read_text())
    other = choice.Cache(str(tmp_path))
    other.key = "another machine"
    assert other.get() is None                                       # another CPU or library version measures again
    other.put({"openblas": 1.0, "mkl": 2.0})
    assert choice.Cache(str(tmp_path)).get() == {"openblas": 12.5, "mkl": 20.0}
    assert len(json.loads((tmp_path / "blas-choice.json").read_text())) == len(entries) + 1
    (tmp_path / "blas-choice.json").write_text("{not json")
    assert choice.Cache(str(tmp_path)).get() is None                 # a damaged cache is measured again


def test_an_unwritable_cache_folder_is_skipped(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    cache = choice.Cache(str(blocked / "sub"))
    cache.put({"openblas": 1.0, "mkl": 2.0})                         # no error: the next run measures again
    assert cache.get() is None


@pytest.mark.skipif(not blas.mkl_installed(), reason="MKL (the mkl extra) is not installed")
def test_the_calibration_times_both_libraries():
    timings = choice.measure()
    assert set(timings) == {"openblas", "mkl"} and all(t > 0 for t in timings.values())


def _rnngen(args, env_extra, cwd):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "rnngen", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def test_info_without_a_model_says_which_library_and_why(tmp_path):
    proc = _rnngen(["info"], {"RNNGEN_BLAS": "openblas"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "blas        OpenBLAS (RNNGEN_BLAS=openblas)" in proc.stdout.splitlines()
    assert proc.stderr.strip() == "rnngen: no model: model.npz does not exist (give one: rnngen info MODEL)"
    missing = _rnngen(["info", "gone.npz"], {}, tmp_path)
    assert missing.returncode == 1 and "gone.npz" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("command", [["info"], ["score", "a b"], ["train", "c.txt"]])
def test_a_bad_rnngen_blas_stops_every_command_in_one_line(tmp_path, command):
    proc = _rnngen(command, {"RNNGEN_BLAS": "fastest"}, tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "rnngen: error: RNNGEN_BLAS='fastest' is not one of auto, openblas, mkl\n"


def test_mkl_forced_where_it_is_not_installed_is_a_one_line_error(tmp_path):
    code = (f"import sys; sys.prefix = {str(tmp_path)!r}; from rnngen.cli import main; "
            "main(['info'])")
    env = {**os.environ, "RNNGEN_BLAS": "mkl", "PYTHONUSERBASE": str(tmp_path / "nobody")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("rnngen: error: RNNGEN_BLAS=mkl but MKL is not installed")
    assert len(proc.stderr.splitlines()) == 1


def test_trains_first_log_line_names_the_library(in_tmp, monkeypatch):
    head = "\n".join((CORPUS / "train.txt").read_text().splitlines()[:100]) + "\n"
    (in_tmp / "c.txt").write_text(head)
    monkeypatch.setattr(choice, "_current", choice.Choice("openblas", "RNNGEN_BLAS=openblas"))
    result = CliRunner().invoke(cli, ["train", "c.txt", "--hidden", "8", "--epochs", "1", "-o", "m.npz"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == "rnngen: BLAS: OpenBLAS (RNNGEN_BLAS=openblas)"


# The checks whose results depend on the BLAS (products, lanes, scoring, sampling), run again
# with each library forced, each in a process of its own (the choice is made once per process).
BLAS_SENSITIVE = ["tests/test_blas.py", "tests/test_lanes.py", "tests/test_probabilities.py", "tests/test_sample.py",
                  "tests/test_gradients.py"]


@pytest.mark.skipif(os.environ.get("RNNGEN_BLAS_FORCED_RUN") == "1", reason="already inside a forced run")
@pytest.mark.parametrize("library", ["openblas", "mkl"])
def test_blas_sensitive_checks_pass_under_each_library(library):
    if library == "mkl" and not blas.mkl_installed():
        pytest.skip("MKL (the mkl extra) is not installed")
    env = {**os.environ, "RNNGEN_BLAS": library, "RNNGEN_BLAS_FORCED_RUN": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BLAS_SENSITIVE],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
