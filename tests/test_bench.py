"""The benchmark's paired mode: a worker started with --serve answers each request with one
JSON line of what it did, keeps going until its input ends, and exits cleanly. PyTorch is
not needed: the rnngen worker and peak.py's NumPy side speak the same protocol."""

import json
import os
import subprocess
import sys

import pytest
from conftest import CORPUS, ROOT

BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    from run import prepare

    out = tmp_path_factory.mktemp("bench") / "ids.npz"
    info = prepare(CORPUS / "train.txt", CORPUS / "valid.txt", out)
    assert info["train_tokens"] > 0 and info["valid_tokens"] > 0
    return out


def serve(cmd, blocks):
    """Start a --serve worker, ask for each block of seconds in turn, then end its input."""
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "RNNGEN_CACHE_DIR": os.environ["RNNGEN_CACHE_DIR"]}
    proc = subprocess.Popen([sys.executable, *map(str, cmd)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=BENCH)
    answers = []
    for seconds in blocks:
        proc.stdin.write(f"{seconds}\n")
        proc.stdin.flush()
        answers.append(json.loads(proc.stdout.readline()))
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert proc.stdout.read() == ""                  # nothing but the answers on stdout
    return answers


@pytest.mark.parametrize("phase, per_call", [("train", 20 * 35), ("score", 2048), ("lines", None)])
def test_an_rnngen_worker_serves_timed_blocks(bench_data, phase, per_call):
    answers = serve([BENCH / "rnngen_lm.py", "--data", bench_data, "--hidden", "16", "--embed", "8",
                     "--threads", "1", "--serve", phase], [0.3, 0.0])
    long, short = answers
    assert long["seconds"] >= 0.3 and long["calls"] >= 1
    assert short["calls"] == 1                               # a block does at least one call
    for a in answers:
        assert a["rate"] == pytest.approx(a["done"] / a["seconds"])
        if per_call:
            assert a["done"] == a["calls"] * per_call         # tokens: one chunk or piece per call
        assert set(a["cpu"]) >= {"wall_s", "cpu_s", "others_cores"}


def test_a_valid_stream_shorter_than_one_piece_is_served_whole(tmp_path):
    import numpy as np

    data = tmp_path / "short.npz"
    tokens = np.array(["<eos>", "<unk>"] + [f"w{i}" for i in range(48)])
    np.savez(data, train=np.arange(3000) % 50, valid=np.arange(300) % 50, tokens=tokens)
    (answer,) = serve([BENCH / "rnngen_lm.py", "--data", data, "--hidden", "8", "--threads", "1", "--serve", "score"],
                      [0.1])
    assert answer["done"] == answer["calls"] * 300


def test_peak_serves_blocks_of_the_square_product():
    (answer,) = serve([BENCH / "peak.py", "--threads", "1", "--lib", "numpy", "--serve"], [0.2])
    assert answer["done"] == answer["calls"] * 2.0 * 2048 ** 3
    assert answer["rate"] > 1e9                              # more than 1 GFLOP/s on any machine


def test_paired_spread_gives_median_quartiles_and_extremes():
    from paired import spread

    s = spread([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 10.0
    assert s["q1"] == 1.5 and s["q3"] == 7.0
    assert spread([1.25]) == {"median": 1.25, "q1": 1.25, "q3": 1.25, "min": 1.25, "max": 1.25}


@pytest.mark.parametrize("script", ["run.py", "paired.py"])
def test_report_of_a_missing_file_is_one_line_and_exit_1(script, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--report", str(tmp_path / "none.json")],
                          capture_output=True, text=True, cwd=BENCH)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"bench: cannot read {tmp_path / 'none.json'}: "
                                                f"[Errno 2] No such file or directory: '{tmp_path / 'none.json'}'"]


def test_bench_fill_skips_without_ptb(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "fill.py"), "--ptb", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "" and "skipped" in done.stderr


def test_bench_fill_runs_end_to_end_on_a_small_corpus(tmp_path):
    """The fill benchmark on the project corpus, each model trained a moment."""
    done = subprocess.run([sys.executable, str(BENCH / "fill.py"), "--ptb", str(CORPUS), "--train-seconds", "1",
                           "--lines", "12", "--exact-lines", "4", "--hidden", "12", "--models", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = {(r["method"], r.get("subset", False)): r for r in result["methods"]}
    assert set(rows) == {("left", False), ("cloze", False), ("left", True), ("cloze", True), ("exact", True)}
    assert rows[("cloze", False)]["lines"] == 12 and rows[("exact", True)]["lines"] == 4
    assert all(0 <= r["top1"] <= r["top5"] <= 1 and r["cloze_ppl"] >= 1 for r in rows.values())
    assert set(result["fill_lines_per_s"]) == {"forward 1 lines", "forward 4 lines", "bidirectional 1 lines",
                                               "bidirectional 12 lines"}
