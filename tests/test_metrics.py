"""The metrics log: both forms round-trip, the resume and rollback rules keep one line of
history with tokens monotone, and a bad file is a one-line error naming the file and line."""

import csv
import json
import math
import os
from datetime import datetime, timezone

import numpy as np
import pytest

from rnngen import metrics
from rnngen.errors import RnngenError
from rnngen.metrics import CSV_HEADER, FIELDS, MetricsLog, history_to_records, make_record, read_log

FORMS = ["run.jsonl", "run.csv"]
T0 = datetime(2025, 1, 31, 14, 5, 9, 123000, tzinfo=timezone.utc)


def write_run(log, points, events=None):
    """One record per token count, with loss falling as tokens grow; returns the records."""
    events = events or {}
    return [log.write(tokens=t, train_seconds=t / 1000, epoch=t / 400, lr=1.0, train_loss=6.0 - t / 200,
                      valid_ppl=100.0 + t / 10 if t % 200 == 0 else None, tokens_per_s=1000.0,
                      events=events.get(t, ()), time=T0) for t in points]


def same(a, b):
    """Equal records, nan equal to nan (json.dumps writes both as NaN)."""
    return json.dumps(a) == json.dumps(b)


@pytest.mark.parametrize("name", FORMS)
def test_round_trip(tmp_path, name):
    path = tmp_path / name
    with MetricsLog(path) as log:
        written = [log.write(tokens=0, train_seconds=0, epoch=0, lr=0.5, events=["start"], time=T0),
                   log.write(tokens=640, train_seconds=1.23456, epoch=0.25, lr=0.5, train_loss=4.5,
                             tokens_per_s=5123.44, time=T0),
                   log.write(tokens=2560, train_seconds=5.5, epoch=1.0, lr=0.5, train_loss=800.0, valid_ppl=math.nan,
                             tokens_per_s=5000, events=["epoch_end", "best", "lr_decay"], time="2025-02-01T00:00:00Z")]
    records = read_log(path)
    assert same(records, written)
    assert [list(r) for r in records] == [list(FIELDS)] * 3
    assert records[0]["time"] == "2025-01-31T14:05:09.123Z"
    assert records[1]["train_seconds"] == 1.235 and records[1]["tokens_per_s"] == 5123.4
    assert records[1]["train_ppl"] == math.exp(4.5)
    assert records[2]["train_ppl"] == math.inf and math.isnan(records[2]["valid_ppl"])
    assert records[2]["events"] == ["epoch_end", "best", "lr_decay"]
    assert type(records[2]["tokens"]) is int and type(records[2]["epoch"]) is float


def test_jsonl_is_strict_json(tmp_path):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        log.write(tokens=5, train_seconds=1, epoch=0.1, lr=1, train_loss=1e6, valid_ppl=math.inf, time=T0)

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    line = json.loads(path.read_text(), parse_constant=refuse)
    assert line["train_ppl"] == "inf" and line["valid_ppl"] == "inf" and line["version"] == 1


def test_csv_header_once_fixed_columns(tmp_path):
    path = tmp_path / "run.csv"
    for start in (0, 200):                  # a second writer appends to the same file
        with MetricsLog(path) as log:
            write_run(log, [start, start + 100], {start: ["start"] if start == 0 else ["resume"]})
    lines = path.read_text().splitlines()
    assert lines[0] == CSV_HEADER == ",".join(FIELDS)
    assert lines.count(CSV_HEADER) == 1 and len(lines) == 5
    rows = list(csv.DictReader(path.open()))
    assert [r["tokens"] for r in rows] == ["0", "100", "200", "300"]
    assert rows[0]["events"] == "start" and rows[1]["valid_ppl"] == "" and rows[0]["valid_ppl"] == "100.0"


def test_csv_with_uppercase_extension(tmp_path):
    path = tmp_path / "RUN.CSV"
    with MetricsLog(path) as log:
        write_run(log, [0])
    assert path.read_text().startswith(CSV_HEADER + "\n")


@pytest.mark.parametrize("name", FORMS)
def test_each_write_is_flushed(tmp_path, name):
    path = tmp_path / name
    log = MetricsLog(path)
    write_run(log, [0, 100])
    assert [r["tokens"] for r in read_log(path)] == [0, 100]     # read while the writer is open
    log.close()


@pytest.mark.parametrize("name", FORMS)
def test_resume_drops_records_after_the_checkpoint(tmp_path, name):
    path = tmp_path / name
    with MetricsLog(path) as log:           # checkpoint at 200, then killed after 400
        write_run(log, [0, 100, 200, 300, 400], {0: ["start"], 200: ["epoch_end"]})
    inode = os.stat(path).st_ino
    with MetricsLog(path, resume_from=200) as log:
        assert log.last_tokens == 200
        write_run(log, [200, 300], {200: ["resume"]})
    assert os.stat(path).st_ino != inode                        # rewritten by rename, not in place
    records = read_log(path)
    assert [r["tokens"] for r in records] == [0, 100, 200, 200, 300]
    assert [r["events"] for r in records] == [["start"], [], ["epoch_end"], ["resume"], []]
    with MetricsLog(path, resume_from=200) as log:              # killed again: resumed from 200 again
        write_run(log, [200, 300, 400], {200: ["resume"], 400: ["stop"]})
    records = read_log(path)
    tokens = [r["tokens"] for r in records]
    assert tokens == [0, 100, 200, 200, 300, 400] and tokens == sorted(tokens)
    assert sum("resume" in r["events"] for r in records) == 1    # no duplicate of the resume point
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_past_the_log_keeps_everything_in_place(tmp_path):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        write_run(log, [0, 100])
    before, inode = path.read_text(), os.stat(path).st_ino
    with MetricsLog(path, resume_from=150) as log:
        assert log.last_tokens == 100
    assert path.read_text() == before and os.stat(path).st_ino == inode


def test_resume_keeps_file_mode(tmp_path):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        write_run(log, [0, 100, 200])
    os.chmod(path, 0o640)
    MetricsLog(path, resume_from=100).close()
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert [r["tokens"] for r in read_log(path)] == [0, 100]


def test_failed_rewrite_leaves_log_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        write_run(log, [0, 100, 200])
    before = path.read_text()

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics.os, "replace", no_rename)
    with pytest.raises(RnngenError, match="cannot rewrite .*No space left.*unchanged"):
        MetricsLog(path, resume_from=0)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["run.jsonl"]


def test_rewrite_syncs_before_rename(tmp_path, monkeypatch):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        write_run(log, [0, 100, 200])
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(metrics.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(metrics.os, "replace", lambda a, b: calls.append("replace") or real_replace(a, b))
    MetricsLog(path, resume_from=100).close()
    assert calls[:2] == ["fsync", "replace"]


@pytest.mark.parametrize("name", FORMS)
def test_rollback_truncates_and_replaces_its_own_record(tmp_path, name):
    path = tmp_path / name
    log = MetricsLog(path)
    write_run(log, [0, 100, 200], {0: ["start"]})
    log.close()
    log = MetricsLog(path, resume_from=200)
    write_run(log, [200, 300, 400], {200: ["resume"]})
    assert log.truncate_after(200) == 2                         # diverged after 200
    write_run(log, [200, 300], {200: ["rollback"]})
    assert log.truncate_after(200) == 2                         # diverged again: the first rollback goes
    write_run(log, [200, 300], {200: ["rollback"]})
    log.close()
    records = read_log(path)
    assert [r["tokens"] for r in records] == [0, 100, 200, 200, 200, 300]
    assert [r["events"] for r in records][2:5] == [[], ["resume"], ["rollback"]]


@pytest.mark.parametrize("name", FORMS)
def test_fresh_log_discards_the_old_run(tmp_path, name):
    path = tmp_path / name
    with MetricsLog(path) as log:
        write_run(log, [0, 100, 200])
    with MetricsLog(path, fresh=True) as log:
        write_run(log, [0])
    assert [r["tokens"] for r in read_log(path)] == [0]
    with pytest.raises(ValueError):
        MetricsLog(path, fresh=True, resume_from=0)


def test_appending_an_earlier_point_is_refused(tmp_path):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        write_run(log, [0, 100])
    with MetricsLog(path) as log, pytest.raises(RnngenError, match="0 tokens cannot follow one at 100"):
        write_run(log, [0])
    assert [r["tokens"] for r in read_log(path)] == [0, 100]


@pytest.mark.parametrize("name", FORMS)
def test_unfinished_last_line(tmp_path, name):
    path = tmp_path / name
    with MetricsLog(path) as log:
        write_run(log, [0, 100])
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:25])          # a writer killed mid-line
    assert [r["tokens"] for r in read_log(path)] == [0, 100]
    with MetricsLog(path) as log:
        write_run(log, [200])
    after = path.read_text()
    assert after.startswith(text) and after[len(text):].count("\n") == 1 and after.endswith("\n")
    assert [r["tokens"] for r in read_log(path)] == [0, 100, 200]


def test_last_line_without_newline_that_parses_is_kept(tmp_path):
    path = tmp_path / "run.jsonl"
    with MetricsLog(path) as log:
        write_run(log, [0, 100])
    path.write_text(path.read_text().rstrip("\n"))
    assert [r["tokens"] for r in read_log(path)] == [0, 100]
    with MetricsLog(path) as log:
        write_run(log, [200])
    assert [r["tokens"] for r in read_log(path)] == [0, 100, 200]


def record_line(**changes):
    line = json.loads(metrics.format_line(make_record(tokens=10, train_seconds=1, epoch=0.5, lr=1, time=T0), False))
    line.update(changes)
    return json.dumps(line)


GOOD = record_line()
BAD_JSONL = [
    ("{not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: not a JSON object"),
    (json.dumps({k: v for k, v in json.loads(GOOD).items() if k != "lr"}), "line 2: no lr field"),
    (record_line(tokens=-3), "line 2: tokens must be a non-negative integer"),
    (record_line(tokens=1.5), "line 2: tokens must be a non-negative integer"),
    (record_line(lr="fast"), "line 2: lr must be a number, not 'fast'"),
    (record_line(lr=10 ** 400), "line 2: lr must be a number"),           # too large for a float
    (record_line(valid_ppl=True), "line 2: valid_ppl must be a number or null"),
    (record_line(time="yesterday"), "line 2: time must be an ISO 8601 time"),
    (record_line(events=["start", "nap"]), "line 2: events must be a list of events"),
    (record_line(events="start"), "line 2: events must be a list of events"),
    (record_line(version=2), "line 2: metrics format version 2, this rnngen reads 1 .*newer"),
    (record_line(tokens=5), "line 2: tokens 5 after 10"),
]


@pytest.mark.parametrize("line, message", BAD_JSONL)
def test_malformed_jsonl(tmp_path, line, message):
    path = tmp_path / "run.jsonl"
    path.write_text(GOOD + "\n" + line + "\n" + GOOD + "\n")
    with pytest.raises(RnngenError, match=message) as err:
        read_log(path)
    assert str(err.value).startswith(f"{path}: line 2: ") and "\n" not in str(err.value)
    with pytest.raises(RnngenError, match=message):         # nor is it appended to, or changed
        MetricsLog(path, resume_from=0)
    assert path.read_text() == GOOD + "\n" + line + "\n" + GOOD + "\n"


def csv_row(**changes):
    record = make_record(tokens=10, train_seconds=1, epoch=0.5, lr=1, time=T0)
    return metrics.format_line({**record, **changes}, True).rstrip("\n")


@pytest.mark.parametrize("text, message", [
    ("tokens,time\n" + csv_row() + "\n", "line 1: not a metrics log header"),
    (CSV_HEADER + "\n" + "1,2025-01-31T14:05:09Z,1.0,10\n", "line 2: 4 columns where a record has 11"),
    (CSV_HEADER + "\n" + csv_row(tokens="ten") + "\n", "line 2: tokens must be a non-negative integer"),
    (CSV_HEADER + "\n" + csv_row() + "\n" + csv_row(events=["best", "oops"]) + "\n", "line 3: events must be"),
    (CSV_HEADER + "\n" + csv_row(lr="") + "\n", "line 2: lr must be a number, not ''"),
    (CSV_HEADER + "\n" + "x" * 200_000 + "\n", "line 2: not a CSV row"),
])
def test_malformed_csv(tmp_path, text, message):
    path = tmp_path / "run.csv"
    path.write_text(text)
    with pytest.raises(RnngenError, match=message) as err:
        read_log(path)
    assert str(err.value).startswith(f"{path}: line ") and "\n" not in str(err.value)


def test_csv_extra_columns_are_read_but_not_appended_to(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text(CSV_HEADER + ",gpu\n" + csv_row() + ",A100\n")
    assert read_log(path)[0]["tokens"] == 10 and "gpu" not in read_log(path)[0]
    with pytest.raises(RnngenError, match="columns differ"):
        MetricsLog(path)


def test_unknown_jsonl_fields_are_ignored(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(record_line(gpu="A100") + "\n")
    assert list(read_log(path)[0]) == list(FIELDS)


@pytest.mark.parametrize("content, message", [
    (None, "no such metrics log"),
    ("", "empty metrics log"),
    ("\n\n", "empty metrics log"),
])
@pytest.mark.parametrize("name", FORMS)
def test_missing_or_empty(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content if name.endswith("jsonl") or not content else CSV_HEADER + content)
    with pytest.raises(RnngenError, match=message) as err:
        read_log(path)
    assert str(err.value).startswith(str(path))


def test_header_only_csv_is_empty(tmp_path):
    path = tmp_path / "run.csv"
    MetricsLog(path).close()
    assert path.read_text() == CSV_HEADER + "\n"
    with pytest.raises(RnngenError, match="empty metrics log"):
        read_log(path)


def test_not_utf8_and_a_folder(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(GOOD.encode() + b"\n\xff\xfe\n")
    with pytest.raises(RnngenError, match="line 2: not UTF-8"):
        read_log(path)
    with pytest.raises(RnngenError, match="cannot read"):
        read_log(tmp_path)


def test_make_record_checks_its_caller():
    with pytest.raises(ValueError, match="unknown metrics event"):
        make_record(tokens=0, train_seconds=0, epoch=0, lr=1, events=["finish"])
    with pytest.raises(ValueError, match="tokens"):
        make_record(tokens=1.0, train_seconds=0, epoch=0, lr=1)
    assert make_record(tokens=0, train_seconds=0, epoch=0, lr=1, train_loss=1000)["train_ppl"] == math.inf
    naive = make_record(tokens=0, train_seconds=0, epoch=0, lr=1, time=datetime(2025, 1, 1, 12))
    assert naive["time"] == "2025-01-01T12:00:00.000Z"
    assert metrics.utc_now().endswith("Z")
    with pytest.raises(ValueError):
        make_record(tokens=0, train_seconds=0, epoch=0, lr=1, time="noon")
    assert make_record(tokens=np.int64(7), train_seconds=np.float32(0.5), epoch=0, lr=1)["tokens"] == 7


HISTORY = [
    {"epoch": 1, "partial": False, "step": 100, "train_ppl": 400.0, "valid_ppl": 300.0, "lr": 1.0,
     "tokens_per_s": 5000.0, "elapsed": 10.0},
    {"epoch": 2, "partial": False, "step": 200, "train_ppl": 200.0, "valid_ppl": 310.0, "lr": 1.0,
     "tokens_per_s": 5100.0, "elapsed": 20.0},
    {"epoch": 3, "partial": True, "step": 250, "train_ppl": 150.0, "valid_ppl": 250.0, "lr": 0.5,
     "tokens_per_s": 5200.0, "elapsed": 25.0},
    {"epoch": 3, "partial": False, "step": 300, "train_ppl": 140.0, "valid_ppl": 240.0, "lr": 0.5,
     "tokens_per_s": 5200.0, "elapsed": 30.0},
    {"epoch": 4, "partial": True, "step": 325, "train_ppl": 130.0, "valid_ppl": 245.0, "lr": 0.5,
     "tokens_per_s": 5200.0, "elapsed": 32.5},
]


def test_history_to_records():
    records = history_to_records(HISTORY, tokens_per_step=20 * 35)
    assert [r["epoch"] for r in records] == [1.0, 2.0, 2.5, 3.0, 3.25]    # part epochs placed by step
    assert [r["tokens"] for r in records] == [70000, 140000, 175000, 210000, 227500]
    assert [r["train_seconds"] for r in records] == [10.0, 20.0, 25.0, 30.0, 32.5]
    assert [r["events"] for r in records] == [["epoch_end", "best"], ["epoch_end", "lr_decay"], ["stop", "best"],
                                              ["epoch_end", "best"], ["stop"]]
    assert records[0]["train_loss"] == pytest.approx(math.log(400.0)) and records[0]["time"] is None
    assert list(records[0]) == list(FIELDS)


def test_history_with_token_counts():
    """Entries that record their tokens (rnngen counts them now) give them exactly."""
    counted = [dict(h, tokens=69_000 * (i + 1)) for i, h in enumerate(HISTORY)]
    assert [r["tokens"] for r in history_to_records(counted, tokens_per_step=700)] == \
        [69_000, 138_000, 207_000, 276_000, 345_000]
    assert [r["tokens"] for r in history_to_records(counted)] == [69_000, 138_000, 207_000, 276_000, 345_000]


def test_history_without_steps():
    bare = [{k: v for k, v in h.items() if k not in ("step", "elapsed")} for h in HISTORY[2:3]]
    records = history_to_records(bare, tokens_per_step=700)
    assert records[0]["tokens"] is None and records[0]["train_seconds"] is None
    assert records[0]["epoch"] == 2.5           # halfway through epoch 3: its steps are unknown
    assert history_to_records(HISTORY)[0]["tokens"] is None
