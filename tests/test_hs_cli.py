"""--softmax hs through the command line: train, resume, score, sample, fill, info, and
its checkpoint (the tree reloads exactly; a corrupt one is a one-line error)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CORPUS
from test_robustness_cli import one_line_error, rnngen

from rnngen import checkpoint
from rnngen.cli import cli
from rnngen.errors import RnngenError
from rnngen.sample import sample
from rnngen.score import score_lines

LINES = ["the dog runs .", "dog the . runs", "the cats that the dog sees sleep ."]


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture(scope="module")
def hs_model(tmp_path_factory):
    """hs.npz: a GRU with the hierarchical softmax, trained briefly on the project corpus."""
    folder = tmp_path_factory.mktemp("hs")
    (folder / "c.txt").write_text("\n".join((CORPUS / "train.txt").read_text().splitlines()[:600]) + "\n")
    result = run("train", str(folder / "c.txt"), "--softmax", "hs", "--cell", "gru", "--hidden", "16",
                 "--epochs", "6", "--seed", "3", "-q", "-o", str(folder / "hs.npz"))
    assert result.exit_code == 0, result.output
    return folder


def test_train_writes_the_tree_and_learns(hs_model):
    ckpt = checkpoint.load(str(hs_model / "hs.npz"))
    cfg = ckpt.model.config
    assert cfg.softmax == "hs" and len(cfg.tree) == 2 * (len(ckpt.vocab) - 1)
    assert set(ckpt.model.params) >= {"hs.W", "hs.b"} and "out.W" not in ckpt.model.params
    assert ckpt.history[-1]["valid_ppl"] < 0.5 * len(ckpt.vocab)       # far better than uniform (76)
    info = run("info", str(hs_model / "hs.npz"))
    assert "hierarchical, Huffman tree" in info.stdout


def test_round_trip_scores_and_samples_alike(hs_model, tmp_path):
    ckpt = checkpoint.load(str(hs_model / "hs.npz"))
    checkpoint.save(str(tmp_path / "copy.npz"), ckpt)
    again = checkpoint.load(str(tmp_path / "copy.npz"))
    assert again.model.config.tree == ckpt.model.config.tree
    assert [r.logprob for r in score_lines(ckpt.model, ckpt.vocab, LINES)] == \
        [r.logprob for r in score_lines(again.model, again.vocab, LINES)]
    assert sample(ckpt.model, ckpt.vocab, n=4, seed=5) == sample(again.model, again.vocab, n=4, seed=5)


def test_score_stream_sample_and_fill(hs_model, monkeypatch):
    monkeypatch.chdir(hs_model)
    model = ["-m", "hs.npz"]
    scored = run("score", *model, *LINES)
    assert scored.exit_code == 0, scored.output
    logprobs = [float(line.split("\t")[0]) for line in scored.stdout.splitlines()]
    assert len(logprobs) == 3 and logprobs[0] > logprobs[1]          # the grammatical order is more likely
    alone = rnngen("score", *model, *LINES, cwd=hs_model)              # a few tokens: the kernels run as Python
    assert [float(line.split("\t")[0]) for line in alone.stdout.decode().splitlines()] == \
        pytest.approx(logprobs, abs=1e-4)
    piped = run("score", *model, "-", input="\n".join(LINES) + "\n")
    assert [float(line.split("\t")[0]) for line in piped.stdout.splitlines()] == pytest.approx(logprobs, abs=1e-4)
    (hs_model / "v.txt").write_text("\n".join(LINES) + "\n")
    stream = run("score", *model, "--stream", "v.txt")
    assert stream.exit_code == 0, stream.output
    assert "perplexity" in stream.stdout + stream.stderr
    sampled = run("sample", *model, "--n", "5", "--seed", "1")
    assert sampled.exit_code == 0 and len(sampled.stdout.splitlines()) == 5
    greedy = run("sample", *model, "--n", "2", "--temperature", "0")
    assert len(set(greedy.stdout.splitlines())) == 1
    filled = run("fill", *model, "--candidates", "run,runs", "the dog ___ .")
    assert filled.exit_code == 0, filled.output
    both = run("score", *model, "the dog run .", "the dog runs .").stdout.splitlines()
    better = max(both, key=lambda line: float(line.split("\t")[0])).split("\t")[-1].split()[2]
    assert filled.stdout.split("\t")[1] == better                  # fill agrees with score


def test_resume_ends_where_an_uninterrupted_run_does(hs_model, monkeypatch):
    monkeypatch.chdir(hs_model)
    args = ["train", "c.txt", "--softmax", "hs", "--hidden", "8", "--epochs", "2", "--seed", "2", "--batch-size", "8",
            "--optimizer", "adagrad", "-q"]
    assert run(*args, "-o", "straight.npz").exit_code == 0
    assert run(*args, "--max-steps", "7", "-o", "part.npz").exit_code == 0
    assert run(*args, "--resume", "part.npz", "-o", "part.npz").exit_code == 0
    a, b = np.load("straight.npz"), np.load("part.npz")
    assert "param.hs.W" in a.files
    assert all((a[k] == b[k]).all() for k in a.files if k.startswith("param."))


def corrupted(src, dst, edit):
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    edit(meta["model"])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)


@pytest.mark.parametrize("edit", [
    lambda m: m["tree"].reverse(),                               # children before parents
    lambda m: m["tree"].__setitem__(0, m["tree"][1]),            # a node twice, another never
    lambda m: m["tree"].pop(),                                   # too short
    lambda m: m.__setitem__("tree", "0 1"),
], ids=["reversed", "duplicate", "short", "string"])
def test_a_corrupt_tree_is_a_one_line_error(hs_model, tmp_path, edit):
    corrupted(hs_model / "hs.npz", tmp_path / "bad.npz", edit)
    with pytest.raises(RnngenError, match=r": hs softmax needs a binary tree over the vocabulary"):
        checkpoint.load(str(tmp_path / "bad.npz"))
    one_line_error(rnngen("score", "-m", tmp_path / "bad.npz", "a b"), "hs softmax needs a binary tree")


def test_a_missing_tree_is_a_one_line_error(hs_model, tmp_path):
    corrupted(hs_model / "hs.npz", tmp_path / "bad.npz", lambda m: m.pop("tree"))
    with pytest.raises(RnngenError, match=r": hs softmax needs its tree"):
        checkpoint.load(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("extra, message", [
    (["--tie-weights"], "--tie-weights needs --softmax full or class"),
    (["--softmax", "tree"], "Invalid value for '--softmax'"),
])
def test_bad_option_combinations(hs_model, extra, message):
    result = rnngen("train", "c.txt", "--softmax", "hs", "--hidden", "8", "--epochs", "1", "-q", *extra, cwd=hs_model)
    if extra == ["--tie-weights"]:
        one_line_error(result, message)
    else:
        assert result.returncode != 0 and message in result.stderr.decode()
    assert "hs: hierarchical softmax" in " ".join(run("train", "--help").stdout.split())
