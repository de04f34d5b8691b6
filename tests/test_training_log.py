"""`rnngen train --log-file`: the records a run writes, in both forms; a run stopped, killed
or rolled back and then continued leaves a log of the run that continued (no gap, no
duplicate, tokens monotone); the checkpoint remembers the log (and older checkpoints without
it still resume)."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import CORPUS

from rnngen import checkpoint
from rnngen.cli import main
from rnngen.metrics import CSV_HEADER, read_log

# Small and quick: 300 lines, about 50 chunks an epoch.
OPTS = ["--hidden", "8", "--bptt", "10", "--seed", "3", "--dropout", "0.2", "--log-every", "1e-9", "-q"]


@pytest.fixture
def corpus(in_tmp):
    lines = (CORPUS / "train.txt").read_text().splitlines()[:300]
    (in_tmp / "c.txt").write_text("\n".join(lines) + "\n")
    return "c.txt"


def steps_per_row(corpus) -> int:
    """Steps of each of the --batch-size 20 rows an epoch reads."""
    from rnngen.train import prepare_data

    _, ids, _ = prepare_data([corpus], log=lambda m: None)
    return (len(ids) - 1) // 20


def chunk_tokens(corpus) -> set:
    """The tokens a step trains on, with --bptt 10: 200, and the rest of the rows in an
    epoch's last chunk."""
    return {200, 20 * (steps_per_row(corpus) % 10)} - {0}


def mid_second_epoch(corpus) -> str:
    """A --max-steps that stops halfway through the second epoch."""
    chunks = math.ceil(steps_per_row(corpus) / 10)
    return str(chunks + chunks // 2)


def periodic(records):
    """The records written between events: one after each step with --log-every 1e-9."""
    return [r for r in records if not r["events"]]


def assert_continuous(records, corpus):
    """Tokens never decrease; the periodic records go up one step at a time (no gap, no duplicate)."""
    tokens = [r["tokens"] for r in records]
    assert tokens == sorted(tokens)
    steps = np.diff([r["tokens"] for r in periodic(records)])
    assert set(steps) <= chunk_tokens(corpus), sorted(set(steps))


def assert_same_figures(a, b, events=lambda e: e):
    """Two logs' records of the same training, clock times and speeds aside; ``events``
    filters the events compared."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x["tokens"], x["epoch"], events(x["events"])) == (y["tokens"], y["epoch"], events(y["events"]))
        for key in ("train_loss", "valid_ppl", "lr"):
            assert x[key] == (None if y[key] is None else pytest.approx(y[key], rel=1e-6)), (key, x, y)


def test_a_short_run_logs_every_step_each_epoch_and_the_stop(corpus):
    main(["train", corpus, "-o", "m.npz", "--epochs", "3", "--decay-after", "2", "--log-file", "run.jsonl", *OPTS])
    records, ckpt = read_log("run.jsonl"), checkpoint.load("m.npz")
    progress, history = ckpt.train["progress"], ckpt.history
    assert records[0]["events"] == ["start"] and records[0]["tokens"] == 0 and records[0]["epoch"] == 0
    assert records[-1]["events"] == ["stop"] and records[-1]["tokens"] == progress["tokens"]
    assert progress["tokens"] == 3 * history[0]["tokens"]
    assert len(periodic(records)) == progress["step"]
    assert_continuous(records, corpus)
    ends = [r for r in records if "epoch_end" in r["events"]]
    assert [r["epoch"] for r in ends] == [1.0, 2.0, 3.0]
    assert [r["tokens"] for r in ends] == [h["tokens"] for h in history]
    assert [r["valid_ppl"] for r in ends] == [pytest.approx(h["valid_ppl"]) for h in history]
    assert [r["train_ppl"] for r in ends] == [pytest.approx(h["train_ppl"]) for h in history]
    assert [r["lr"] for r in ends] == [0.002, 0.002, 0.001] and records[-1]["lr"] == 0.001   # the steps' rate
    assert ["lr_decay" in r["events"] for r in ends] == [False, True, True]
    best = math.inf
    for r in ends:
        assert ("best" in r["events"]) == (r["valid_ppl"] < best)
        best = min(best, r["valid_ppl"])
    within = periodic(records)[5]
    assert 0 < within["epoch"] < 1 and within["train_ppl"] == pytest.approx(math.exp(within["train_loss"]))
    seconds = [r["train_seconds"] for r in records]
    assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(progress["elapsed"], abs=1e-3)
    assert os.path.isabs(ckpt.train["log_file"]) and ckpt.train["log_file"].endswith("run.jsonl")


def test_csv_and_json_lines_hold_the_same_records(corpus):
    for name in ("run.jsonl", "run.csv"):
        main(["train", corpus, "-o", "m.npz", "--epochs", "2", "--log-file", name, *OPTS])
    lines = open("run.csv").read().splitlines()
    assert lines[0] == CSV_HEADER and lines[1].startswith("1,") and lines[1].endswith(",start")
    assert json.loads(open("run.jsonl").readline())["events"] == ["start"]
    assert_same_figures(read_log("run.csv"), read_log("run.jsonl"))


def test_a_stopped_and_resumed_run_logs_as_one_run(corpus):
    """Stopped mid-epoch by --max-steps, resumed without --log-file: the same log goes on,
    and its records are the uninterrupted run's, plus the stop and the resume."""
    main(["train", corpus, "-o", "whole.npz", "--epochs", "2", "--log-file", "whole.jsonl", *OPTS])
    main(["train", corpus, "-o", "m.npz", "--epochs", "2", "--log-file", "run.jsonl", *OPTS,
          "--max-steps", mid_second_epoch(corpus)])
    stopped = read_log("run.jsonl")
    main(["train", corpus, "--resume", "m.npz", "-o", "m.npz", "-q"])
    records, whole = read_log("run.jsonl"), read_log("whole.jsonl")
    assert records[:len(stopped)] == stopped
    at = stopped[-1]["tokens"]
    assert stopped[-1]["events"] == ["stop"] and records[len(stopped)]["events"] == ["resume"]
    assert records[len(stopped)]["tokens"] == at and records[len(stopped)]["epoch"] == stopped[-1]["epoch"]
    assert_continuous(records, corpus)
    # Less the stop, its part epoch's record and the resume; "best" aside, as the part
    # epoch's validation can take the best model.
    continued = [r for r in records if not (r["tokens"] == at and (r["valid_ppl"] or "stop" in r["events"]
                                                                    or "resume" in r["events"]))]
    assert_same_figures(continued, whole, events=lambda e: [x for x in e if x != "best"])
    assert [r["train_seconds"] for r in records] == sorted(r["train_seconds"] for r in records)


def start_training(corpus, folder, log: str, checkpoint_every: str) -> subprocess.Popen:
    """A long run in another process, returned once it has written its first checkpoint."""
    env = {k: v for k, v in os.environ.items() if k != "RNNGEN_MODEL"}
    cmd = [sys.executable, "-m", "rnngen", "train", corpus, "-o", "m.npz", "--epochs", "1000", "--log-file", log,
           "--checkpoint-every", checkpoint_every, *OPTS]
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (folder / "m.npz").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    return proc


def test_records_after_the_checkpoint_a_resume_goes_back_to_are_dropped(corpus, tmp_path):
    """kill -9 between two checkpoints: the records written after the last one are dropped
    when the run resumes from it, so the log is the uninterrupted run's."""
    for trial in range(5):          # a kill that lands between a save and the next step has nothing to drop
        proc = start_training(corpus, tmp_path, "run.jsonl", "0.3")
        time.sleep(0.2 + 0.03 * trial)
        proc.kill()
        proc.communicate()
        at = checkpoint.load("m.npz").train["progress"]
        if read_log("run.jsonl")[-1]["tokens"] > at["tokens"]:      # written after the checkpoint
            break
        os.remove("m.npz")
    assert read_log("run.jsonl")[-1]["tokens"] > at["tokens"]
    steps = at["step"] + 30
    main(["train", corpus, "--resume", "m.npz", "-o", "m.npz", "--max-steps", str(steps), "-q"])
    main(["train", corpus, "-o", "whole.npz", "--epochs", "1000", "--log-file", "whole.jsonl", *OPTS,
          "--max-steps", str(steps)])
    records, whole = read_log("run.jsonl"), read_log("whole.jsonl")
    resumed = [i for i, r in enumerate(records) if r["events"] == ["resume"]]
    assert len(resumed) == 1 and records[resumed[0]]["tokens"] == at["tokens"]
    assert all(r["tokens"] <= at["tokens"] for r in records[:resumed[0]])
    assert_continuous(records, corpus)
    assert_same_figures(periodic(records), periodic(whole))
    assert_same_figures([r for r in records if r["events"] and r["events"] != ["resume"]],
                        [r for r in whole if r["events"]])


def test_a_rollback_drops_the_records_after_the_state_it_goes_back_to(corpus, monkeypatch):
    """A gradient norm of NaN at the fourth step: back to the start, the three steps' records gone."""
    from rnngen import train as training

    real, calls = training.global_norm, itertools.count(1)
    monkeypatch.setattr(training, "global_norm", lambda *args: math.nan if next(calls) == 4 else real(*args))
    main(["train", corpus, "-o", "m.npz", "--epochs", "1", "--lr", "0.01", "--log-file", "run.jsonl", *OPTS])
    records = read_log("run.jsonl")
    assert [r["events"] for r in records[:2]] == [["start"], ["rollback"]]       # steps 1-3 went with them
    assert records[1]["tokens"] == 0 and records[1]["lr"] == 0.005
    assert {r["lr"] for r in periodic(records)} == {0.005}
    assert len(periodic(records)) == checkpoint.load("m.npz").train["progress"]["step"]
    assert_continuous(records, corpus)


def test_a_checkpoint_from_before_the_log_resumes_and_counts_its_tokens(corpus):
    """No log_file, log_every or tokens in it: it loads, and the tokens follow from its position."""
    main(["train", corpus, "-o", "m.npz", "--epochs", "3", "--max-steps", mid_second_epoch(corpus), *OPTS])
    tokens = checkpoint.load("m.npz").train["progress"]["tokens"]
    data = dict(np.load("m.npz"))
    meta = json.loads(data["meta"].tobytes())
    for key in ("log_file", "log_every"):
        del meta["train"][key]
    del meta["train"]["progress"]["tokens"]
    for h in meta["history"]:
        del h["tokens"]
    data["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez("old.npz", **data)
    assert checkpoint.load("old.npz").train.get("log_file") is None
    main(["train", corpus, "--resume", "old.npz", "-o", "old.npz", "--log-file", "run.csv",
          "-q"])
    records = read_log("run.csv")
    assert records[0]["events"] == ["resume"] and records[0]["tokens"] == tokens
    assert records[-1]["tokens"] == 3 * 20 * steps_per_row(corpus)
    assert checkpoint.load("old.npz").train["log_file"] == os.path.abspath("run.csv")


def test_a_new_run_does_not_overwrite_a_file_that_is_not_a_log(corpus, capsys):
    open("notes.txt", "w").write("my notes\n")
    with pytest.raises(SystemExit) as exit_:
        main(["train", corpus, "-o", "m.npz", "--epochs", "1", "--log-file", "notes.txt", *OPTS])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "notes.txt exists and is not a metrics log" in err
    assert open("notes.txt").read() == "my notes\n"
    with pytest.raises(SystemExit):
        main(["train", corpus, "-o", "m.npz", "--log-file", "m.npz", *OPTS])
    assert "is the checkpoint (-o) itself" in capsys.readouterr().err


def test_ctrl_c_ends_the_log_with_a_stop_at_the_saved_point(corpus, tmp_path):
    proc = start_training(corpus, tmp_path, "run.csv", "0.1")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    records = read_log("run.csv")
    assert records[-1]["events"] == ["stop"] and [r["events"] for r in records].count(["stop"]) == 1
    assert records[-1]["tokens"] == checkpoint.load("m.npz").train["progress"]["tokens"]
    assert_continuous(records, corpus)


def test_a_resume_whose_log_folder_is_gone_says_how_to_go_on(corpus, capsys):
    os.mkdir("logs")
    main(["train", corpus, "-o", "m.npz", "--epochs", "2", "--max-steps", "5", "--log-file", "logs/run.jsonl", *OPTS])
    os.remove("logs/run.jsonl")
    os.rmdir("logs")
    with pytest.raises(SystemExit):
        main(["train", corpus, "--resume", "m.npz", "-o", "m.npz", "-q"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.endswith("(the checkpoint's metrics log: give another with --log-file, or none with --log-file '')")
    main(["train", corpus, "--resume", "m.npz", "-o", "m.npz", "-q", "--log-file", ""])
    assert checkpoint.load("m.npz").train["log_file"] == "" and sorted(os.listdir(".")) == ["c.txt", "m.npz"]
