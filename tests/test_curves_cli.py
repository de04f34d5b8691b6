"""The commands that show how training went: `rnngen plot` (logs and checkpoints, one or
several, and its one-line errors), the curve at the end of `rnngen info`, and shell
completion through click's completion variable."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import CORPUS

from rnngen import plot as plot_module
from rnngen.cli import main
from rnngen.metrics import MetricsLog, read_log
from rnngen.plot import INSTALL_HINT

RNNGEN = [sys.executable, "-m", "rnngen"]


def run(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of rnngen ``args`` in this process."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch run on part of the bundled corpus, with its metrics log."""
    folder = tmp_path_factory.mktemp("curves")
    lines = (CORPUS / "train.txt").read_text().splitlines()[:400]
    (folder / "c.txt").write_text("\n".join(lines) + "\n")
    main(["train", str(folder / "c.txt"), "-o", str(folder / "m.npz"), "--hidden", "8", "--epochs", "3",
          "--log-file", str(folder / "run.jsonl"), "--log-every", "1e-9", "--lr-decay", "0.5", "--decay-after", "2",
          "-q"])
    return folder


@pytest.fixture
def figures(monkeypatch):
    """The figures `rnngen plot` draws, as it draws them."""
    drawn = []
    real = plot_module.plot_runs

    def keep(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(plot_module, "plot_runs", keep)
    return drawn


def lines(fig) -> dict:
    return {line.get_gid(): line for line in fig.axes[0].get_lines() if line.get_gid()}


def points(line) -> list:
    return list(zip(line.get_xdata(), line.get_ydata()))


def test_plot_one_log_against_time(trained, in_tmp, figures, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run(["plot", str(trained / "run.jsonl")], capsys)
    assert code == 0 and out == "" and err == "rnngen: wrote curves.png (1 run against time)\n"
    assert (in_tmp / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_log(trained / "run.jsonl")
    drawn = lines(figures[0])
    assert points(drawn["run:train"]) == [(r["train_seconds"], r["train_ppl"]) for r in records
                                          if r["train_ppl"] is not None]
    ends = [r for r in records if "epoch_end" in r["events"]]
    assert points(drawn["run:valid"]) == [(r["train_seconds"], r["valid_ppl"]) for r in ends]
    decays = [line.get_xdata()[0] for line in figures[0].axes[0].get_lines() if line.get_gid() == "run:lr_decay"]
    assert decays == [r["train_seconds"] for r in ends if "lr_decay" in r["events"]] and decays
    best = [r for r in ends if "best" in r["events"]][-1]
    assert points(drawn["run:best"]) == [(best["train_seconds"], best["valid_ppl"])]


def test_plot_two_runs_against_tokens(trained, in_tmp, figures, capsys):
    """A JSON-lines log and a CSV one, overlaid, each run with its own colour and legend entries."""
    pytest.importorskip("matplotlib")
    with MetricsLog("other.csv") as log:
        for e in range(4):
            log.write(tokens=5000 * e, train_seconds=2.0 * e, epoch=e, lr=1.0, train_loss=math.log(90 - 20 * e) if e
                      else None, valid_ppl=(95 - 20 * e) if e else None, events=["epoch_end"] if e else ["start"])
    code, _, err = run(["plot", str(trained / "run.jsonl"), "other.csv", "--x", "tokens", "-o", "two.png"], capsys)
    assert code == 0 and err == "rnngen: wrote two.png (2 runs against tokens)\n"
    drawn = lines(figures[0])
    assert points(drawn["other:valid"]) == [(5000, 75.0), (10000, 55.0), (15000, 35.0)]
    ends = [r for r in read_log(trained / "run.jsonl") if "epoch_end" in r["events"]]
    assert points(drawn["run:valid"]) == [(r["tokens"], r["valid_ppl"]) for r in ends]
    assert drawn["run:valid"].get_color() != drawn["other:valid"].get_color()
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend[:4] == ["run train", "run valid", "other train", "other valid"]
    assert figures[0].axes[0].get_xlabel() == "tokens processed" and (in_tmp / "two.png").exists()


def test_plot_a_checkpoints_history(trained, in_tmp, figures, capsys):
    pytest.importorskip("matplotlib")
    from rnngen.checkpoint import load

    code, _, _ = run(["plot", str(trained / "m.npz"), "--x", "epoch", "-o", "h.svg"], capsys)
    assert code == 0 and (in_tmp / "h.svg").read_text().lstrip().startswith("<?xml")
    history = load(str(trained / "m.npz")).history
    drawn = lines(figures[0])
    assert points(drawn["m:valid"]) == [(float(h["epoch"]), h["valid_ppl"]) for h in history]
    assert points(drawn["m:train"]) == [(float(h["epoch"]), h["train_ppl"]) for h in history]
    code, _, _ = run(["plot", str(trained / "m.npz"), "--x", "tokens", "-o", "t.png"], capsys)
    assert code == 0 and [x for x, _ in points(lines(figures[1])["m:valid"])] == [h["tokens"] for h in history]


@pytest.mark.parametrize("content, message", [
    (None, "rnngen: error: run.jsonl: no such metrics log"),
    ("", "rnngen: error: run.jsonl: empty metrics log (no records)"),
    ('{"version": 1, "time": "2025-01-01T00:00:00Z"}\n', "rnngen: error: run.jsonl: line 1: no train_seconds field"),
    ("not json\n", "rnngen: error: run.jsonl: line 1: not JSON (Expecting value)"),
])
def test_plot_of_a_missing_or_malformed_log_is_one_line(in_tmp, capsys, content, message):
    if content is not None:
        (in_tmp / "run.jsonl").write_text(content)
    code, out, err = run(["plot", "run.jsonl"], capsys)
    assert (code, out, err) == (1, "", message + "\n")
    assert not (in_tmp / "curves.png").exists()


def test_plot_of_a_bad_checkpoint_or_option_is_one_line(in_tmp, capsys):
    (in_tmp / "m.npz").write_bytes(b"PK\x03\x04 not really")
    code, _, err = run(["plot", "m.npz"], capsys)
    assert code == 1 and err.startswith("rnngen: error: m.npz: ") and err.count("\n") == 1
    code, _, err = run(["plot", "m.npz", "--x", "steps"], capsys)
    assert code == 2 and "'steps' is not one of 'time', 'tokens', 'epoch'" in err


def test_plot_without_matplotlib_says_how_to_install_it(trained, in_tmp):
    """In a real process: one line, no traceback, nothing written."""
    code = ("import sys; sys.modules['matplotlib'] = None; from rnngen.cli import main; "
            f"main(['plot', {str(trained / 'run.jsonl')!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=in_tmp, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"rnngen: error: {INSTALL_HINT}\n")
    assert "pip install 'rnngen[plot]'" in INSTALL_HINT and not (in_tmp / "curves.png").exists()


def with_history(src, dst, history) -> None:
    """A copy of checkpoint ``src`` with another history."""
    data = dict(np.load(src))
    meta = json.loads(data["meta"].tobytes())
    meta["history"] = history
    data["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **data)


def test_info_ends_with_the_curve_of_a_one_epoch_run(tiny_model_path, in_tmp, capsys):
    shutil.copy(tiny_model_path, "m.npz")
    code, out, _ = run(["info", "m.npz"], capsys)
    text = out.split("\n\n", 1)[1].splitlines()
    assert code == 0 and text[0].startswith("valid ppl by epoch; best ") and text[0].endswith(" at epoch 1")
    assert len(text) == 11 and "┤███" in text[1] and text[-2].endswith("└─▲─") and text[-1].strip() == "1"


def test_info_draws_many_epochs_in_a_line_that_fits(tiny_model_path, in_tmp, capsys):
    entry = {"partial": False, "step": 10, "lr": 1.0, "tokens_per_s": 1e3, "elapsed": 1.0}
    history = [dict(entry, epoch=e, train_ppl=900 / e, valid_ppl=1000 / e + (e - 60) ** 2 / 50 * (e > 60))
               for e in range(1, 101)]
    with_history(tiny_model_path, "m.npz", history)
    code, out, _ = run(["info", "m.npz"], capsys)
    curve = out.split("\n\n", 1)[1].splitlines()
    best = min(history, key=lambda h: h["valid_ppl"])
    assert curve[0] == f"valid ppl by epoch, log scale; best {best['valid_ppl']:.2f} at epoch {best['epoch']}"
    assert curve[1].startswith(f"{history[0]['valid_ppl']:.2f} ┤") and curve[-1].split() == ["1", "100"]
    assert all(len(line) <= 60 + 10 for line in curve) and curve[-2].count("▲") == 1
    assert out.splitlines()[-13].startswith("epoch 100 ")            # the history's lines come first


def test_info_without_history_has_no_curve_and_ascii_without_utf8(tiny_model_path, in_tmp, capsys):
    with_history(tiny_model_path, "empty.npz", [])
    code, out, _ = run(["info", "empty.npz"], capsys)
    assert code == 0 and "ppl by epoch" not in out and out.splitlines()[-1].startswith("training ")
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    shutil.copy(tiny_model_path, "m.npz")
    result = subprocess.run([*RNNGEN, "info", "m.npz"], capture_output=True, env=env, timeout=60)
    curve = result.stdout.decode("ascii").split("\n\n", 1)[1].splitlines()
    assert result.returncode == 0 and curve[1].split()[1].startswith("+###")
    assert curve[-2].endswith("+-^-")


def complete(monkeypatch, capsys, shell: str, words: str = "") -> str:
    """What rnngen answers when the shell asks (``words`` typed so far), through
    _RNNGEN_COMPLETE as click's generated scripts set it."""
    monkeypatch.setenv("_RNNGEN_COMPLETE", shell)
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("shell, marker", [("bash_source", "complete -o nosort -F _rnngen_completion rnngen"),
                                           ("zsh_source", "#compdef rnngen"),
                                           ("fish_source", "complete --no-files --command rnngen")])
def test_completion_scripts(monkeypatch, capsys, shell, marker):
    script = complete(monkeypatch, capsys, shell)
    assert marker in script and "_RNNGEN_COMPLETE=" in script


def test_completion_of_commands_options_choices_and_files(monkeypatch, capsys):
    assert complete(monkeypatch, capsys, "bash_complete", "rnngen pl").split() == ["plain,plot"]
    assert complete(monkeypatch, capsys, "bash_complete", "rnngen plot --x ").split() == \
        ["plain,time", "plain,tokens", "plain,epoch"]
    assert complete(monkeypatch, capsys, "bash_complete", "rnngen train --log-").split() == \
        ["plain,--log-file", "plain,--log-every"]
    assert complete(monkeypatch, capsys, "bash_complete", "rnngen plot ru").split() == ["file,ru"]
    assert complete(monkeypatch, capsys, "bash_complete", "rnngen train c.txt --cell ").split() == \
        ["plain,rnn", "plain,gru", "plain,lstm"]
    zsh = complete(monkeypatch, capsys, "zsh_complete", "rnngen sa").splitlines()
    assert zsh[:2] == ["plain", "sample"]


def test_completion_in_a_real_process():
    env = dict(os.environ, _RNNGEN_COMPLETE="bash_complete", COMP_WORDS="rnngen i", COMP_CWORD="1")
    result = subprocess.run(RNNGEN, capture_output=True, text=True, env=env, timeout=60)
    assert (result.returncode, result.stdout.split(), result.stderr) == (0, ["plain,info"], "")
