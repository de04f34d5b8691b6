"""The developer tools in tools/ (A/B of two trees, lane timelines): they run against the
bench harness and rnngen's internals, so a rename must fail here."""

import subprocess
import sys

import pytest
from conftest import CORPUS, ROOT

BENCH, TOOLS = ROOT / "bench", ROOT / "tools"
sys.path[:0] = [str(TOOLS), str(BENCH)]


def test_lane_timeline_clocks_both_threads():
    """tools/lane_timeline.py wraps rnngen's lane internals: if they are renamed it must fail
    here, not print an empty timeline. In a process of its own: it patches those internals
    and sets the BLAS thread counts."""
    run = subprocess.run([sys.executable, str(TOOLS / "lane_timeline.py"), "--ptb", str(CORPUS), "--hidden", "8",
                          "--warmup", "1", "--steps", "2"], capture_output=True, text=True, cwd=BENCH, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "tokens/s over 2 steps" in run.stdout
    # Which lane takes a task depends on timing (on a busy machine the caller may run them
    # all), so each clock must show on one lane or the other.
    for what in ("output rows", "recurrence", "matmul", "_input_weight_grads"):
        assert f"caller  {what}" in run.stdout or f"worker  {what}" in run.stdout, what
    assert "\nstep 3:" in run.stdout


def test_ab_compares_two_trees_in_turns(tmp_path, capsys):
    """tools/ab.py on the same tree twice: one line with both rates and the ratio; a folder
    that is not a checkout is refused in one line."""
    import ab

    assert ab.main([str(ROOT), str(ROOT), "--ptb", str(CORPUS), "--rounds", "2", "--block-seconds", "0.3",
                    "--threads", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("RNN(tanh) 1x200") and "new / old median" in line and "\n" not in line
    assert ab.main([str(tmp_path), str(ROOT), "--ptb", str(CORPUS)]) == 1
    refused = capsys.readouterr().out.strip()
    assert refused == f"ab: {tmp_path} is not an rnngen checkout (no rnngen/ and bench/rnngen_lm.py)"


def test_ab_runs_each_side_from_its_own_tree(tmp_path):
    """The old side imports the old tree's rnngen, not the installed one: a tree whose rnngen
    cannot be imported stops the run with bench's one-line message."""
    import ab

    (tmp_path / "rnngen").mkdir()
    (tmp_path / "rnngen" / "__init__.py").write_text("raise ImportError('the old tree')\n")
    (tmp_path / "bench").symlink_to(BENCH)
    with pytest.raises(SystemExit, match="a worker stopped"):
        ab.main([str(tmp_path), str(ROOT), "--ptb", str(CORPUS), "--rounds", "1", "--block-seconds", "0.3",
                 "--threads", "1"])


@pytest.mark.parametrize("tool", ["ab", "lane_timeline"])
def test_tools_skip_in_one_line_without_both_ptb_files(tool, tmp_path, capsys):
    """A folder with train.txt but no valid.txt: skipped with the reason, not a traceback."""
    import importlib

    (tmp_path / "train.txt").write_text("a b c\n")
    args = [str(ROOT), str(ROOT)] if tool == "ab" else []
    assert importlib.import_module(tool).main([*args, "--ptb", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == (f"{tool}: skipped: Penn Treebank not found ({tmp_path / 'train.txt'} "
                                               f"and {tmp_path / 'valid.txt'} are needed)")


def test_softmax_speed_prints_each_layer_against_its_bound(capsys):
    """tools/softmax_speed.py calls the output layers' loss_grad and the training step
    directly: a rename must fail here."""
    import softmax_speed

    assert softmax_speed.main(["--ptb", str(CORPUS), "--hidden", "8", "--chunks", "2", "--gemm", "128"]) == 0
    out = capsys.readouterr().out
    for layer in ("full", "class", "hs"):
        assert sum(line.startswith(f"{layer} ") for line in out.splitlines()) == 2, out
    assert "3HV" in out and "nodes" in out and "of bound" in out
    assert softmax_speed.main(["--ptb", str(CORPUS), "--hidden", "8", "--chunks", "2", "--gemm", "128",
                               "--layers", "class", "--old-class", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("class-old ") for line in out.splitlines()) == 2, out
    assert out.count("class / class-old per chunk") == 2, out
    assert softmax_speed.main(["--ptb", str(CORPUS), "--hidden", "8", "--chunks", "2", "--gemm", "128",
                               "--layers", "class,hs", "--direct-order", "3"]) == 0
    out = capsys.readouterr().out
    for layer in ("class+ng", "hs+ng"):
        assert sum(line.startswith(f"{layer} ") for line in out.splitlines()) == 2, out
