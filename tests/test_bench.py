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


# --- bench/time_to_ppl.py (make bench-ttp) --------------------------------------------

PEER_TEXT = ("Reading train file: 0.0KK words\rConstructed a vocabulary: 10000 words\n"
             "Constructing RNN: layer_size=200, layer_type=sigmoid\n"
             "Initial entropy (bits) valid:  9.97577\n"
             "\rEpoch  1  lr: 1.00e-01/1.00e-01  progress:  10.73%  188.14 Kwords/sec  "
             "\rEpoch  1  lr: 1.00e-01/1.00e-01  progress:  96.87%  211.09 Kwords/sec  "
             "entropy (bits) valid:  8.33306  elapsed: 4.4s+0.3s\n"
             "\rEpoch  2  lr: 1.00e-01/1.00e-01  progress:  50.00%  196.65 Kwords/sec  "
             "entropy (bits) valid:  7.50000  elapsed: 4.6s+0.3s\tBad: start lr decay\n")


def test_ttp_peer_log_stamps_each_validation_when_its_line_ends():
    from time_to_ppl import PeerLog

    log = PeerLog()
    cut1 = PEER_TEXT.index("8.33306") + 3                # a validation line split across two reads
    cut2 = PEER_TEXT.index("Epoch  2")
    for text, t in ((PEER_TEXT[:cut1], 1.0), (PEER_TEXT[cut1:cut2], 5.0), (PEER_TEXT[cut2:], 9.5)):
        log.feed(text, t)
    log.close(10.0)
    assert log.initial["bits"] == 9.97577 and log.initial["wall_s"] == 1.0
    assert [(p["epoch"], p["bits"], p["wall_s"], p["note"]) for p in log.epochs] == [
        (1, 8.33306, 5.0, ""), (2, 7.5, 9.5, "Bad: start lr decay")]
    assert log.epochs[1]["valid_ppl"] == pytest.approx(2 ** 7.5)
    assert log.output() == PEER_TEXT


def test_ttp_peer_log_counts_a_last_line_without_its_end_and_ignores_progress():
    from time_to_ppl import PeerLog

    log = PeerLog()
    log.feed("\rEpoch  1  progress:  10%  \rEpoch  1  progress:  20%  ", 1.0)
    assert log.epochs == [] and log.initial is None
    log.feed("entropy (bits) valid:  7.21762  elapsed: 4.4s+0.3s", 2.0)
    assert log.epochs == []
    log.close(3.0)
    assert [(p["wall_s"], round(p["valid_ppl"], 1)) for p in log.epochs] == [(3.0, 148.8)]


def test_ttp_peer_value_at_a_budget_is_the_best_epoch_validated_in_time():
    from time_to_ppl import peer_value_at

    def setting(name, points):
        return {"name": name, "epochs": [{"epoch": i + 1, "wall_s": t, "valid_ppl": p}
                                          for i, (t, p) in enumerate(points)]}

    settings = [setting("rnnme", [(10, 300.0), (50, 200.0), (70, 210.0), (130, 150.0)]),
                setting("rnn", [(8, 320.0), (40, 190.0), (65, 180.0)])]
    assert peer_value_at(settings, 5) is None
    assert peer_value_at(settings, 9) == {"valid_ppl": 320.0, "wall_s": 8, "epoch": 1, "setting": "rnn"}
    assert peer_value_at(settings, 60)["valid_ppl"] == 190.0
    assert peer_value_at(settings, 65)["setting"] == "rnn"             # finished exactly at the budget
    assert peer_value_at(settings, 600) == {"valid_ppl": 150.0, "wall_s": 130, "epoch": 4, "setting": "rnnme"}
    assert peer_value_at(settings + [setting("nan", [(1, float("inf"))])], 2) is None


def test_ttp_options_line_parsing():
    from time_to_ppl import parse_options_line

    out = "rnngen: 887,521 training tokens\noptions: --cell lstm --layers 2 --hidden 200 --softmax class\nmore\n"
    assert parse_options_line(out) == ["--cell", "lstm", "--layers", "2", "--hidden", "200", "--softmax", "class"]
    assert parse_options_line("options: \n") == []
    assert parse_options_line("options: --lr '0.5'") == ["--lr", "0.5"]
    assert parse_options_line("no such line\n my options: --x\n") is None


def test_ttp_curve_from_the_metrics_log_is_placed_by_wall_clock(tmp_path):
    from time_to_ppl import log_curve, parse_time

    from rnngen.metrics import format_line, make_record

    start = parse_time("2026-01-31T14:05:00.000Z")
    records = [make_record(tokens=0, train_seconds=0, epoch=0, lr=0.002, events=["start"],
                           time="2026-01-31T14:05:02.000Z"),
               make_record(tokens=100, train_seconds=30.5, epoch=1, lr=0.002, valid_ppl=250.0,
                           events=["epoch_end"], time="2026-01-31T14:05:40.250Z")]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(format_line(r, False) for r in records) + '{"version": 1, "ti')
    assert log_curve(log, start) == [{"wall_s": 40.25, "train_s": 30.5, "epoch": 1.0, "valid_ppl": 250.0}]
    assert log_curve(tmp_path / "none.jsonl", start) == []


def test_ttp_table_gives_values_overruns_and_the_ratio():
    from time_to_ppl import table

    def run(name, budget, ppl, wall):
        return {"name": name, "budget_min": budget, "valid_ppl": ppl, "wall_s": wall, "returncode": 0,
                "within_budget": wall <= 60 * budget, "overrun_s": max(0.0, wall - 60 * budget)}

    defaults = [run("defaults", 1.0, 300.0, 58), run("defaults", 2.0, 200.0, 127.4)]
    results = {"budgets_min": [1.0, 2.0], "rnngen_defaults": defaults,
               "rnngen_best": [run("best", 2.0, 160.0, 110)],
               "faster_rnnlm": [{"name": "rnnme-200", "epochs": [{"epoch": 1, "wall_s": 70, "valid_ppl": 250.0}]}]}
    rows = table(results).splitlines()[2:]
    assert rows[0] == "| 1 min | 300.0 (58 s, within: yes) | — | none within budget | n/a |"
    assert rows[1] == ("| 2 min | 200.0 (127 s, within: no, +7 s) | 160.0 (110 s, within: yes) | "
                       "250.0 (rnnme-200, epoch 1, 70 s) | 0.80 (best config 0.64) |")


def test_ttp_budgets_and_best_options_parse():
    import argparse

    from time_to_ppl import parse_best, parse_budgets

    assert parse_budgets("5,1, 0.25") == [0.25, 1.0, 5.0]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_budgets("0,1")
    assert parse_best(["5=--cell lstm --hidden 300", "1="]) == {5.0: ["--cell", "lstm", "--hidden", "300"], 1.0: []}


def _shared(tmp_path, corpus=True, binary=True):
    shared = tmp_path / "shared"
    if corpus:
        (shared / "corpora" / "ptb").mkdir(parents=True)
        for name in ("train.txt", "valid.txt"):
            (shared / "corpora" / "ptb" / name).write_text((CORPUS / name).read_text())
    if binary:
        peer = shared / "anchors" / "faster-rnnlm"
        peer.mkdir(parents=True)
        fake = peer / "rnnlm"              # a stand-in: the canned output, one epoch after another
        fake.write_text(f"#!{sys.executable}\nimport sys, time\ntext = {PEER_TEXT!r}\n"
                        "for line in text.splitlines(True):\n"
                        "    sys.stderr.write(line); sys.stderr.flush(); time.sleep(0.05)\n")
        fake.chmod(0o755)
    return shared


@pytest.mark.parametrize("corpus, binary, missing", [(False, True, "corpus not found"),
                                                     (True, False, "faster-rnnlm binary not found")])
def test_ttp_skips_without_the_corpus_or_the_binary(tmp_path, corpus, binary, missing):
    shared = _shared(tmp_path, corpus, binary)
    done = subprocess.run([sys.executable, str(BENCH / "time_to_ppl.py"), "--shared", str(shared), "--budgets", "0.01"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("bench: skipped: ") and missing in done.stdout


def test_ttp_runs_end_to_end_on_a_small_corpus(tmp_path):
    """Both sides on the project corpus for a second, a stand-in for faster-rnnlm."""
    shared = _shared(tmp_path)
    out, picture = tmp_path / "r.json", tmp_path / "r.png"
    done = subprocess.run([sys.executable, str(BENCH / "time_to_ppl.py"), "--shared", str(shared), "--budgets",
                           "0.02", "--no-compile-time", "--best", "0.02=--hidden 16", "--json", str(out),
                           "--plot", str(picture), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    (default,), (best,) = result["rnngen_defaults"], result["rnngen_best"]
    assert default["returncode"] == 0 and default["valid_ppl"] > 1 and best["options"] == ["--hidden", "16"]
    assert [p["name"] for p in result["faster_rnnlm"]] == ["rnnme-200", "rnn-200"]
    assert all(len(p["epochs"]) == 2 for p in result["faster_rnnlm"])
    assert "| 0.02 min | " in done.stdout and picture.stat().st_size > 0


def test_ttp_seen_lines_are_those_faster_rnnlm_evaluates_and_the_ratio_uses_them(tmp_path):
    from time_to_ppl import seen_lines, table

    (tmp_path / "train.txt").write_text("a b c\nb c d\n")
    (tmp_path / "valid.txt").write_text("a b\nb x c\n\nd d a")
    counts = seen_lines(tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "seen.txt")
    assert (tmp_path / "seen.txt").read_text() == "a b\n\nd d a\n"
    assert counts == {"lines": 4, "lines_without_unseen_words": 3, "words": 8, "unseen_words": 1,
                      "file": str(tmp_path / "seen.txt")}
    run = {"name": "defaults", "budget_min": 1.0, "valid_ppl": 300.0, "valid_ppl_seen_lines": 250.0, "wall_s": 50,
           "returncode": 0, "within_budget": True, "overrun_s": 0.0}
    peer = {"name": "rnn-200", "epochs": [{"epoch": 3, "wall_s": 20, "valid_ppl": 200.0}]}
    row = table({"budgets_min": [1.0], "rnngen_defaults": [run], "rnngen_best": [], "faster_rnnlm": [peer]})
    assert row.splitlines()[2] == ("| 1 min | 300.0 [250.0] (50 s, within: yes) | — | 200.0 (rnn-200, epoch 3, 20 s) "
                                   "| 1.25 |")
