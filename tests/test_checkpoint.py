"""Checkpoint round trip: the loaded model scores and samples exactly like the saved one."""

import json
import os
import zipfile

import numpy as np
import pytest

from rnngen import checkpoint
from rnngen.errors import RnngenError
from rnngen.sample import sample
from rnngen.score import score_lines

LINES = ["the dogs that the cat sees run .", "a bird sleeps .", "run run run"]


def test_round_trip_scores_and_samples(tiny_model_path, tmp_path):
    ckpt = checkpoint.load(str(tiny_model_path))
    copy = tmp_path / "copy.npz"
    checkpoint.save(str(copy), ckpt)
    again = checkpoint.load(str(copy))
    for k, v in ckpt.model.params.items():
        assert np.array_equal(v, again.model.params[k])
    assert [r.logprob for r in score_lines(ckpt.model, ckpt.vocab, LINES)] == \
        [r.logprob for r in score_lines(again.model, again.vocab, LINES)]
    assert sample(ckpt.model, ckpt.vocab, n=4, seed=5) == sample(again.model, again.vocab, n=4, seed=5)
    assert again.vocab.tokens == ckpt.vocab.tokens
    assert again.history == ckpt.history
    assert set(again.resume) == set(ckpt.resume)


def test_checkpoint_is_plain_arrays(tiny_model_path):
    with np.load(tiny_model_path, allow_pickle=False) as npz:
        names = set(npz.files)
        meta = json.loads(npz["meta"].tobytes())
        assert all(npz[n].dtype != object for n in names)
    assert meta["format"] == "rnngen-checkpoint" and meta["version"] == checkpoint.VERSION
    assert "param.embed" in names and "resume.state" in names


def test_newer_version_is_refused(tiny_model_path, tmp_path):
    bad = tmp_path / "newer.npz"
    with np.load(tiny_model_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["version"] = checkpoint.VERSION + 1
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(bad, **arrays)
    with pytest.raises(RnngenError, match="newer rnngen"):
        checkpoint.load(str(bad))


def test_save_is_atomic_when_writing_fails(tiny_model_path, tmp_path, monkeypatch):
    target = tmp_path / "model.npz"
    ckpt = checkpoint.load(str(tiny_model_path))
    checkpoint.save(str(target), ckpt)
    before = target.read_bytes()

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises((OSError, RnngenError)):
        checkpoint.save(str(target), ckpt)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert zipfile.is_zipfile(target)


def test_loading_for_use_skips_only_the_training_state(tiny_model_path):
    full = checkpoint.load(str(tiny_model_path))
    for_use = checkpoint.load(str(tiny_model_path), training_state=False)
    assert full.resume and for_use.resume is None
    assert all(np.array_equal(full.model.params[k], v) for k, v in for_use.model.params.items())


def test_save_removes_temporary_files_of_writers_that_died(tiny_model_path, tmp_path):
    import subprocess
    import sys

    ckpt = checkpoint.load(str(tiny_model_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.npz.{dead.stdout.strip()}-0123456789ab.tmp"     # its writer was killed
    live = tmp_path / f".model.npz.{os.getppid()}-0123456789ab.tmp"               # a writer still running
    other = tmp_path / f".other.npz.{dead.stdout.strip()}-0123456789ab.tmp"      # another checkpoint's
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    checkpoint.save(str(tmp_path / "model.npz"), ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.npz", live.name, other.name])


def test_a_written_checkpoint_is_not_reported_as_failed_when_tidying_up_fails(tiny_model_path, tmp_path,
                                                                               monkeypatch):
    ckpt = checkpoint.load(str(tiny_model_path))

    def unreadable(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.os, "listdir", unreadable)
    checkpoint.save(str(tmp_path / "model.npz"), ckpt)
    assert checkpoint.load(str(tmp_path / "model.npz")).model.config == ckpt.model.config
