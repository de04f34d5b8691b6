"""The command line, through click's CliRunner and through real processes and pipes."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CORPUS
from draws import assert_same_draws, words

from rnngen.cli import cli

RNNGEN = [sys.executable, "-m", "rnngen"]


@pytest.fixture
def trained(in_tmp, tiny_model_path):
    shutil.copy(tiny_model_path, in_tmp / "model.npz")
    return in_tmp


def test_train_writes_a_model_and_logs_to_stderr_only(in_tmp):
    head = "\n".join((CORPUS / "train.txt").read_text().splitlines()[:400]) + "\n"
    (in_tmp / "c.txt").write_text(head)
    result = CliRunner().invoke(cli, ["train", "c.txt", "--hidden", "16", "--epochs", "2", "-o", "m.npz"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "epoch   1" in result.stderr and "epoch   2" in result.stderr
    assert (in_tmp / "m.npz").exists()
    info = CliRunner().invoke(cli, ["info", "m.npz"])
    assert "parameters" in info.stdout and "epoch   2" in info.stdout


def test_score_arguments_tsv(trained):
    result = CliRunner().invoke(cli, ["score", "the dog runs .", "dog the . runs"])
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 2
    for row, text in zip(rows, ["the dog runs .", "dog the . runs"]):
        logprob, ppl, tokens, oov = float(row[0]), float(row[1]), int(row[2]), int(row[3])
        assert row[4] == text and tokens == 5 and oov == 0
        assert logprob < 0 and ppl == pytest.approx(math.exp(-logprob / tokens), rel=1e-3)
    assert float(rows[0][0]) > float(rows[1][0])       # the grammatical order is more likely
    assert "perplexity" in result.stderr


def test_score_jsonl_per_token(trained):
    result = CliRunner().invoke(cli, ["score", "--format", "jsonl", "--per-token", "the dog xyzzy ."])
    rec = json.loads(result.stdout)
    assert rec["tokens"] == 5 and rec["oov"] == 1 and rec["text"] == "the dog xyzzy ."
    assert [t for t, _ in rec["token_logprobs"]] == ["the", "dog", "<unk>", ".", "<eos>"]
    assert sum(lp for _, lp in rec["token_logprobs"]) == pytest.approx(rec["logprob"], abs=1e-6)


def test_score_stdin_and_stream_agree(trained):
    lines = (CORPUS / "valid.txt").read_text().splitlines()[:30]
    (trained / "v.txt").write_text("\n".join(lines) + "\n")
    per_line = CliRunner().invoke(cli, ["score", "-"], input="\n".join(lines) + "\n")
    rows = per_line.stdout.splitlines()
    assert len(rows) == 30 and [r.split("\t")[4] for r in rows] == lines
    stream = CliRunner().invoke(cli, ["score", "--stream", "v.txt"])
    logprob, _, tokens, _, name = stream.stdout.strip().split("\t")
    assert name == "v.txt" and int(tokens) == sum(len(s.split()) + 1 for s in lines)
    # A stream carries state across lines, so it differs from independent sentences but is close.
    independent = sum(float(r.split("\t")[0]) for r in rows)
    assert abs(float(logprob) - independent) < 0.1 * abs(independent)


def test_sample_is_reproducible(trained):
    a = CliRunner().invoke(cli, ["sample", "--n", "4", "--seed", "3"])
    b = CliRunner().invoke(cli, ["sample", "--n", "4", "--seed", "3"])
    assert a.exit_code == 0 and a.stdout == b.stdout and len(a.stdout.splitlines()) == 4
    greedy = CliRunner().invoke(cli, ["sample", "--n", "2", "--temperature", "0"]).stdout.splitlines()
    assert greedy[0] == greedy[1]
    from rnngen.checkpoint import load

    ckpt = load("model.npz")
    uniforms = np.random.default_rng(3).random((4, 100))              # what `sample --seed 3` draws with
    for threads in ("1", "2"):         # the lines split over lanes: the same lines (draws.py: but for boundaries)
        c = CliRunner().invoke(cli, ["sample", "--n", "4", "--seed", "3", "--threads", threads])
        assert_same_draws(ckpt.model, ckpt.vocab.eos, words(ckpt.vocab, c.stdout.splitlines()),
                          words(ckpt.vocab, a.stdout.splitlines()), uniforms)


def test_model_from_environment(trained, monkeypatch):
    (trained / "model.npz").rename(trained / "elsewhere.npz")
    monkeypatch.setenv("RNNGEN_MODEL", "elsewhere.npz")
    assert CliRunner().invoke(cli, ["score", "the dog runs ."]).exit_code == 0


def test_real_pipe_into_score(trained):
    proc = subprocess.run(["bash", "-c", f"printf 'the dog runs .\\nthe dogs run .\\n' | {' '.join(RNNGEN)} "
                           "score - | sort -n | head -1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.split("\t")[4].strip() in ("the dog runs .", "the dogs run .")
    assert "Traceback" not in proc.stderr


def test_help_has_examples():
    for cmd in ("train", "sample", "score"):
        out = CliRunner().invoke(cli, [cmd, "--help"]).stdout
        assert "Examples:" in out and f"rnngen {cmd}" in out


def test_missing_model_is_one_line_error(in_tmp):
    proc = subprocess.run(RNNGEN + ["score", "a b"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "model.npz" in proc.stderr and "Traceback" not in proc.stderr


def test_compile_notice_once_per_kernel_source(tmp_path, monkeypatch, capsys):
    """The first-run notice shows on a terminal once per version of the kernel sources."""
    import rnngen.cli as cli_module

    pkg = tmp_path / "rnngen"
    pkg.mkdir()
    for name in ("kernels.py", "optim.py", "jit.py", "cli.py"):
        (pkg / name).write_text(name)
    monkeypatch.setattr(cli_module, "__file__", str(pkg / "cli.py"))
    monkeypatch.setattr(cli_module.sys.stderr, "isatty", lambda: True, raising=False)
    notices = []
    for source_change in (False, False, True, False):
        if source_change:
            (pkg / "kernels.py").write_text("changed")
        cli_module._announce_compiling()
        notices.append("compiling" in capsys.readouterr().err)
    assert notices == [True, False, True, False]


def test_scoring_does_not_import_all_of_scipy_linalg(trained):
    """Start-up: a sentence is scored without Numba or a second thread's machinery; a file with
    Numba, whose BLAS table is loaded by itself (rnngen.blas.load_kernel_blas), not with all of
    scipy.linalg."""
    (trained / "lines.txt").write_text("the dog runs .\n" * 2000)
    loaded = ("'numba' in sys.modules, 'scipy.linalg' in sys.modules, 'scipy.linalg.cython_blas' in sys.modules, "
              "'concurrent.futures' in sys.modules")
    found = []
    for args in (["a b c"], ["--stream", "lines.txt"]):
        code = (f"import sys; from rnngen.cli import main; sys.argv = ['rnngen', 'score', *{args!r}];\n"
                f"try: main()\nexcept SystemExit: pass\nprint({loaded}, file=sys.stderr)")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=trained)
        found.append(proc.stderr.strip().splitlines()[-1])
    assert found[0] == "False False False False", found
    assert found[1].startswith("True False True"), found
