"""Curves: the lines drawn hold the records' values, several runs share one legend, and a
missing matplotlib is a one-line error with the install command."""

import math
import sys

import pytest

from rnngen.errors import RnngenError
from rnngen.metrics import MetricsLog, history_to_records, make_record, read_log
from rnngen.plot import INSTALL_HINT, best_record, plot_runs, run_names, time_unit


def records(speed=1000.0, scale=1.0, decay_after=2):
    """Four epochs of four records each: train ppl falls, valid measured at epoch ends,
    the rate decays from ``decay_after`` epochs on, one non-finite train value."""
    out = [make_record(tokens=0, train_seconds=0, epoch=0, lr=1, events=["start"])]
    best = math.inf
    for step in range(1, 17):
        epoch, tokens = step / 4, step * 1000
        valid = scale * (300 - 40 * epoch + 50 * max(0, epoch - 3)) if step % 4 == 0 else None
        events = ["epoch_end"] if valid is not None else []
        if valid is not None and valid < best:
            best = valid
            events.append("best")
        if valid is not None and epoch >= decay_after:
            events.append("lr_decay")
        loss = math.inf if step == 6 else math.log(scale * 400 / epoch)
        out.append(make_record(tokens=tokens, train_seconds=tokens / speed, epoch=epoch, lr=1, train_loss=loss,
                               valid_ppl=valid, tokens_per_s=speed, events=events))
    return out


def lines_by_gid(fig):
    return {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}


def decays(fig, name):
    return sorted(line.get_xdata()[0] for line in fig.axes[0].get_lines() if line.get_gid() == f"{name}:lr_decay")


def test_one_run_against_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    recs = records()
    out = tmp_path / "curves.png"
    fig = plot_runs([("run", recs)], x="epoch", output=str(out))
    lines = lines_by_gid(fig)
    train = [r for r in recs if r["train_ppl"] is not None and math.isfinite(r["train_ppl"])]
    valid = [r for r in recs if r["valid_ppl"] is not None]
    assert list(lines["run:train"].get_xdata()) == [r["epoch"] for r in train]
    assert list(lines["run:train"].get_ydata()) == [r["train_ppl"] for r in train]
    assert len(train) == 15                                     # the start record and the inf are left out
    assert list(lines["run:valid"].get_xdata()) == [1.0, 2.0, 3.0, 4.0]
    assert list(lines["run:valid"].get_ydata()) == [r["valid_ppl"] for r in valid]
    assert (list(lines["run:best"].get_xdata()), list(lines["run:best"].get_ydata())) == ([3.0], [180.0])
    assert decays(fig, "run") == [2.0, 3.0, 4.0]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["run train", "run valid", "best", "lr decay"]
    assert fig.axes[0].get_xlabel() == "epoch" and fig.axes[0].get_yscale() == "log"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_runs_from_files_against_tokens(tmp_path):
    pytest.importorskip("matplotlib")
    paths = [tmp_path / "rnn200.jsonl", tmp_path / "lstm.csv"]
    for path, recs in zip(paths, (records(), records(speed=500, scale=0.8))):
        with MetricsLog(path) as log:
            for r in recs:
                log.write(**{k: r[k] for k in ("tokens", "train_seconds", "epoch", "lr", "train_loss", "valid_ppl",
                                               "tokens_per_s", "events", "time")})
    runs = list(zip(run_names([str(p) for p in paths]), [read_log(p) for p in paths]))
    fig = plot_runs(runs, x="tokens")
    lines = lines_by_gid(fig)
    for name, recs in runs:
        valid = [r for r in recs if r["valid_ppl"] is not None]
        assert list(lines[f"{name}:valid"].get_xdata()) == [r["tokens"] for r in valid]
        assert list(lines[f"{name}:valid"].get_ydata()) == [r["valid_ppl"] for r in valid]
        assert decays(fig, name) == [8000, 12000, 16000]
    assert list(lines["lstm:best"].get_ydata()) == [pytest.approx(144.0)]
    assert lines["rnn200:train"].get_color() != lines["lstm:train"].get_color()
    assert lines["lstm:train"].get_color() == lines["lstm:valid"].get_color()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["rnn200 train", "rnn200 valid", "lstm train", "lstm valid", "best", "lr decay"]
    assert fig.axes[0].get_xlabel() == "tokens processed"


def test_time_axis_in_minutes():
    pytest.importorskip("matplotlib")
    recs = records(speed=100)                  # 16000 tokens at 100/s: 160 s
    assert time_unit([("run", recs)]) == (60, "min")
    fig = plot_runs([("run", recs)], x="time")
    valid = lines_by_gid(fig)["run:valid"]
    assert list(valid.get_xdata()) == pytest.approx([40 / 60, 80 / 60, 120 / 60, 160 / 60])
    assert fig.axes[0].get_xlabel() == "training time (min)"
    assert time_unit([("run", records(speed=1000))]) == (1, "s")
    assert time_unit([("run", records(speed=1))]) == (3600, "h")


def test_narrow_range_stays_linear():
    pytest.importorskip("matplotlib")
    recs = [make_record(tokens=t, train_seconds=t, epoch=t, lr=1, train_loss=math.log(100 + t), valid_ppl=110 + t)
            for t in range(1, 6)]
    fig = plot_runs([("flat", recs)])
    assert fig.axes[0].get_yscale() == "linear"
    assert list(lines_by_gid(fig)["flat:best"].get_ydata()) == [111.0]     # no best event: the lowest valid
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["flat train", "flat valid", "best"]


def test_checkpoint_history_plots():
    pytest.importorskip("matplotlib")
    history = [{"epoch": e, "partial": False, "step": 10 * e, "train_ppl": 300 / e, "valid_ppl": None,
                "lr": 1.0 if e < 3 else 0.5, "tokens_per_s": 1e3, "elapsed": 5.0 * e} for e in range(1, 5)]
    fig = plot_runs([("model", history_to_records(history))], x="epoch")
    lines = lines_by_gid(fig)
    assert list(lines["model:train"].get_ydata()) == [300.0, 150.0, 100.0, 75.0]
    assert "model:valid" not in lines and list(lines["model:best"].get_ydata()) == [75.0]
    assert decays(fig, "model") == [2.0]
    with pytest.raises(RnngenError, match="model: a record has no tokens: plot against time or epoch"):
        plot_runs([("model", history_to_records(history))], x="tokens")


def test_bad_requests():
    pytest.importorskip("matplotlib")
    with pytest.raises(RnngenError, match="cannot plot against 'steps'"):
        plot_runs([("run", records())], x="steps")
    with pytest.raises(RnngenError, match="no runs"):
        plot_runs([])
    nothing = [make_record(tokens=0, train_seconds=0, epoch=0, lr=1, events=["start"])]
    with pytest.raises(RnngenError, match="empty: no perplexity to plot"):
        plot_runs([("empty", nothing)])


def test_unwritable_output(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(RnngenError, match="cannot write .*curves.nope: .*not supported"):
        plot_runs([("run", records())], output=str(tmp_path / "curves.nope"))
    with pytest.raises(RnngenError, match="cannot write .*missing/curves.png"):
        plot_runs([("run", records())], output=str(tmp_path / "missing" / "curves.png"))


def test_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RnngenError) as err:
        plot_runs([("run", records())])
    assert str(err.value) == INSTALL_HINT and "pip install 'rnngen[plot]'" in INSTALL_HINT


def test_run_names():
    assert run_names(["runs/a.jsonl", "b.csv", "/x/model.npz"]) == ["a", "b", "model"]
    assert run_names(["one/run.jsonl", "two/run.jsonl", "x.csv"]) == ["one/run", "two/run", "x"]


def test_best_record():
    recs = records()
    assert best_record(recs)["epoch"] == 3.0
    assert best_record([{"train_ppl": 5.0, "valid_ppl": None}, {"train_ppl": 4.0, "valid_ppl": None}]) == \
        {"train_ppl": 4.0, "valid_ppl": None}
    assert best_record([{"train_ppl": None, "valid_ppl": None}]) is None
