"""rnngen train --max-time and --dry-run through the command line."""

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import CORPUS

from rnngen.cli import cli
from rnngen.config import default_direct_size

TRAIN, VALID = str(CORPUS / "train.txt"), str(CORPUS / "valid.txt")
DEFAULTS = ("--cell rnn --layers 1 --hidden 128 --softmax full --optimizer adam --lr 0.002 --clip 5 --bptt 35 "
            "--epochs 10 --decay-after 0 --lr-decay 0.5 --dropout 0")


def rnngen(*args, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RNNGEN_MODEL"}
    return subprocess.run([sys.executable, "-m", "rnngen", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def dry_run(*args) -> tuple[str, list[str]]:
    result = CliRunner().invoke(cli, ["train", TRAIN, "--valid", VALID, "--dry-run", *args])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("options: "), result.stdout
    return lines[0].removeprefix("options: "), result.stderr.splitlines()


def test_without_a_budget_the_defaults_stay_as_they_were(in_tmp):
    options, err = dry_run()
    assert options == DEFAULTS
    assert "rnngen: --hidden 128: default" in err and not (in_tmp / "model.npz").exists()


def test_the_option_list_shows_the_hash_size_the_corpus_gets(in_tmp):
    options, _ = dry_run("--direct-order", "3")
    words = options.split()
    text = CORPUS.joinpath("train.txt").read_text()
    tokens = len(text.split()) + text.count("\n")                 # words and line ends
    assert words[words.index("--direct-size") + 1] == str(default_direct_size(tokens, 3))


def test_a_budget_chooses_what_is_not_given_and_says_why(in_tmp):
    options, err = dry_run("--max-time", "20s", "--hidden", "32", "--lr-decay", "0.7")
    words = options.split()
    chosen = dict(zip(words[::2], words[1::2]))
    assert chosen["--hidden"] == "32" and chosen["--lr-decay"] == "0.7"
    assert err[0].startswith("rnngen: BLAS: ") and err[1] == f"rnngen: options: {options}"   # then why
    assert "rnngen: --hidden 32: given" in err and "rnngen: --lr-decay 0.7: given" in err
    assert any(line.startswith(f"rnngen: --cell {chosen['--cell']}: from the budget") for line in err)
    assert any(line.startswith("rnngen: chose candidate ") for line in err)
    again, _ = dry_run(*words)                                   # the option list reproduces the choice
    assert again == options


@pytest.mark.parametrize("value", ["10x", "-5", "m", ""])
def test_a_bad_max_time_is_a_one_line_error(tmp_path, value):
    result = rnngen("train", TRAIN, "--max-time", value, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "--max-time" in lines[0] and "is not a duration" in lines[0], result.stderr


def test_a_run_ends_within_its_budget(tmp_path):
    """The budget counts from the command's start; the last validation and save fit in it.
    A model too slow to finish an epoch in the budget: the deadline must end it."""
    budget, tolerance = 8.0, 4.0            # tolerance: the interpreter's start and exit, a loaded machine
    started = time.perf_counter()
    result = rnngen("train", TRAIN, "--valid", VALID, "--max-time", f"{budget:g}s", "--cell", "lstm",
                    "--hidden", "256", "--epochs", "1000", "-o", "m.npz", cwd=tmp_path)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "rnngen: stopped: reached --max-time 8s" in result.stderr, result.stderr
    assert (tmp_path / "m.npz").exists() and result.stdout == ""
    assert wall < budget + tolerance, result.stderr
