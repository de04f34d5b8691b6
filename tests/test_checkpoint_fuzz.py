"""Checkpoints are data, never code: a damaged or hostile file loads as a valid model or
fails with RnngenError — never another exception, never a hang, never memory out of
proportion to the file. Also: saving that fails (disk full, read-only folder) keeps the
last good file and says so."""

import contextlib
import errno
import io
import json
import os
import signal
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnngen import checkpoint
from rnngen.checkpoint import Checkpoint
from rnngen.cli import main
from rnngen.errors import RnngenError
from rnngen.model import ModelConfig
from rnngen.score import score_lines
from rnngen.train import TrainConfig, prepare_data, train

MEMORY_LIMIT = 50 << 20          # bytes any load of a ~100 KB file may allocate
BOMB_BYTES = 64 << 20            # what a zip-bomb member decompresses to


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A genuine ~100 KB checkpoint with resume state, as {member name: bytes}."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "corpus.txt").write_text("the dog runs .\na cat sees the dog .\nthe big dog sleeps near the park .\n" * 30)
    vocab, tr, va = prepare_data([str(d / "corpus.txt")], valid_fraction=0.1, log=lambda m: None)
    train(tr, va, vocab, ModelConfig(vocab_size=len(vocab), hidden=48), TrainConfig(epochs=1, max_steps=2),
          str(d / "base.npz"), log=lambda m: None)
    data = (d / "base.npz").read_bytes()
    assert 80_000 < len(data) < 200_000
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def build(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def array_of(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def load_guarded(path: str):
    """checkpoint.load with a hang alarm and a memory meter; returns (result or error, peak bytes)."""
    def hang(signum, frame):
        raise AssertionError("checkpoint.load hangs")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    tracemalloc.start()
    try:
        try:
            result = checkpoint.load(path)
        except RnngenError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_loads_or_refuses(path: str):
    result, peak = load_guarded(path)
    assert peak < MEMORY_LIMIT, f"loading took {peak / 1e6:.0f} MB"
    if isinstance(result, RnngenError):
        message = str(result)
        assert message.startswith(f"{path}: ") and "\n" not in message
        return result
    # It loaded: then it must be a usable model, and every command must cope with it.
    ckpt = result
    assert {k: v.shape for k, v in ckpt.model.params.items()} == ckpt.model.config.param_shapes()
    assert np.isfinite(score_lines(ckpt.model, ckpt.vocab, ["the dog runs"])[0].logprob)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["info", path])
    return ckpt


# --- mutations ------------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.sampled_from([0, 1, -1, 2, 3, 10**9, 10**18, 2**63, 2**64, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.one_of(st.integers(-3, 100), st.text(max_size=3)), max_size=6),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
META_PATHS = (
    [("version",), ("format",), ("model",), ("vocab",), ("train",), ("history",), ("vocab", "tokens"),
     ("vocab", "tokens", 2), ("vocab", "unit"), ("vocab", "lowercase"), ("train", "progress"),
     ("train", "progress", "rng"), ("train", "progress", "rng", "state", "state"), ("history", 0),
     ("history", 0, "epoch"), ("history", 0, "train_ppl"), ("history", 0, "valid_ppl"), ("history", 0, "partial")]
    + [("model", k) for k in ("vocab_size", "cell", "hidden", "layers", "embed", "activation", "dropout",
                              "tie_weights", "softmax", "class_bounds")]
    + [("train", k) for k in ("epochs", "batch_size", "bptt", "optimizer", "lr", "lr_decay", "clip", "seed")]
    + [("train", "progress", k) for k in ("epoch", "chunk", "step", "lr", "best_valid", "best_score",
                                          "bad_epochs", "epoch_nll", "epoch_tokens", "elapsed", "data")]
)
DTYPES = ["float64", "float16", "int32", "uint8", ">f4", "complex64", "bool", "U3", "O"]


def edit_meta(meta_bytes: bytes, path: tuple, value, delete: bool) -> bytes:
    meta = json.loads(array_of(meta_bytes).tobytes())
    node = meta
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return npy(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


@st.composite
def mutation(draw, members: dict):
    """A damaged checkpoint file (bytes) and what was done to it."""
    members = dict(members)
    names = sorted(members)
    kind = draw(st.sampled_from(["truncate", "flip", "drop", "extra", "dtype", "shape", "object", "header",
                                 "meta", "huge", "deflate", "bomb"]))
    name = draw(st.sampled_from(names))
    if kind == "drop":
        del members[name]
    elif kind == "extra":
        members[draw(st.sampled_from(["param.extra.npy", "resume.x.npy", "meta2.npy", "notes.txt"]))] = \
            npy(np.zeros(draw(st.integers(0, 50)), dtype=np.float32))
    elif kind == "dtype":
        arr = array_of(members[name])
        members[name] = npy(arr.astype(draw(st.sampled_from(DTYPES))))
    elif kind == "shape":
        arr = array_of(members[name]).reshape(-1)
        size = draw(st.integers(0, arr.size + 10))
        members[name] = npy(np.resize(arr, size).reshape(draw(st.sampled_from([(size,), (1, size), (size, 1)]))))
    elif kind == "object":
        members[name] = npy(np.array([{"a": 1}, None], dtype=object))
    elif kind == "header":      # declare a huge shape over the same few bytes of data
        data = members[name]
        header_end = data.index(b"\n") + 1
        huge = draw(st.sampled_from(["(1000000000000,)", "(100000, 100000)", "(9223372036854775807,)", "(-1,)"]))
        header = data[10:header_end].decode("latin-1")
        start, stop = header.index("'shape': ") + 9, header.index(")", header.index("'shape': ")) + 1
        new = (header[:start] + huge + header[stop:]).rstrip("\n ")
        new = new + " " * (-(10 + len(new) + 1) % 64) + "\n"
        members[name] = data[:8] + len(new).to_bytes(2, "little") + new.encode("latin-1") + data[header_end:]
    elif kind == "meta":
        path = draw(st.sampled_from(META_PATHS))
        members["meta.npy"] = edit_meta(members["meta.npy"], path, draw(JSON_VALUES), draw(st.booleans()))
    elif kind == "huge":        # sizes that must be checked against the file before anything is allocated
        key = draw(st.sampled_from(["hidden", "embed", "vocab_size", "layers", "batch_size"]))
        value = draw(st.sampled_from([10**5, 10**9, 2**40, 2**62]))
        path = ("train", key) if key == "batch_size" else ("model", key)
        members["meta.npy"] = edit_meta(members["meta.npy"], path, value, False)
    elif kind == "bomb":        # a member decompressing to far more than its shape warrants
        return kind, _bomb_zip(members, name)
    data = build(members, zipfile.ZIP_DEFLATED if kind == "deflate" else zipfile.ZIP_STORED)
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    return kind, data


_bombs: dict = {}


def _bomb_zip(members: dict, name: str) -> bytes:
    """``members`` with ``name`` deflated and followed by BOMB_BYTES of zeros (cached:
    deflating 64 MB takes a while)."""
    if name not in _bombs:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for n, d in members.items():
                if n != name:
                    zf.writestr(n, d)
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                fh.write(members[name])
                zeros = bytes(1 << 20)
                for _ in range(BOMB_BYTES >> 20):
                    fh.write(zeros)
        _bombs[name] = buf.getvalue()
    return _bombs[name]


def test_fuzzed_checkpoints_load_or_fail_cleanly(base, tmp_path):
    path = str(tmp_path / "mutated.npz")
    outcomes = {}

    @settings(max_examples=300, deadline=10_000, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data):
        kind, blob = data.draw(mutation(base))
        with open(path, "wb") as fh:
            fh.write(blob)
        result = check_loads_or_refuses(path)
        outcomes.setdefault(kind, set()).add("loaded" if isinstance(result, Checkpoint) else "refused")

    run()
    assert {"truncate", "flip", "meta", "bomb", "huge", "header"} <= set(outcomes)
    assert all(outcomes[k] == {"refused"} for k in ("bomb", "huge", "header", "object", "deflate") if k in outcomes)


# --- targeted holes ---------------------------------------------------------------------------

def test_unchanged_checkpoint_loads(base, tmp_path):
    (tmp_path / "ok.npz").write_bytes(build(base))
    assert isinstance(check_loads_or_refuses(str(tmp_path / "ok.npz")), Checkpoint)


@pytest.mark.parametrize("key, value", [
    ("hidden", 8.0), ("hidden", "48"), ("hidden", True), ("hidden", 10**9), ("hidden", 2**64), ("hidden", 10**400),
    ("vocab_size", None), ("layers", 2**62), ("embed", -1), ("dropout", "0.1"), ("dropout", float("nan")),
    ("tie_weights", 1), ("cell", ["rnn"]), ("activation", 3),
])
def test_wrong_config_types_and_sizes(base, tmp_path, key, value):
    members = dict(base, **{"meta.npy": edit_meta(base["meta.npy"], ("model", key), value, False)})
    (tmp_path / "bad.npz").write_bytes(build(members))
    assert isinstance(check_loads_or_refuses(str(tmp_path / "bad.npz")), RnngenError)


@pytest.mark.parametrize("path, value", [
    (("vocab", "tokens", 3), 17), (("vocab", "tokens", 3), None), (("vocab", "unit"), "byte"),
    (("train", "batch_size"), 2.5), (("train", "progress", "rng"), {"bit_generator": "PCG64"}),
    (("train", "progress", "step"), -1), (("train", "progress", "lr"), float("nan")),
    (("history", 0, "epoch"), "one"), (("history", 0, "train_ppl"), None), (("version",), True),
    (("version",), 99), (("train", "log_file"), 5), (("train", "log_every"), "10"),
    (("train", "progress", "tokens"), -1), (("history", 0, "tokens"), "many"),
])
def test_wrong_vocabulary_training_and_history_fields(base, tmp_path, path, value):
    members = dict(base, **{"meta.npy": edit_meta(base["meta.npy"], path, value, False)})
    (tmp_path / "bad.npz").write_bytes(build(members))
    error = check_loads_or_refuses(str(tmp_path / "bad.npz"))
    assert isinstance(error, RnngenError)
    if path == ("version",) and value == 99:
        assert "newer rnngen" in str(error)


def test_zip_bomb_is_refused_without_inflating(base, tmp_path):
    (tmp_path / "bomb.npz").write_bytes(_bomb_zip(base, "param.embed.npy"))
    error = check_loads_or_refuses(str(tmp_path / "bomb.npz"))
    assert isinstance(error, RnngenError) and "compressed" in str(error)


def test_member_claiming_more_bytes_than_the_file(base, tmp_path):
    data = bytearray(build(base))
    central = data.index(b"PK\x01\x02")           # the first member's central-directory entry
    for offset in (20, 24):                         # its compressed and uncompressed sizes: 3 GB
        data[central + offset:central + offset + 4] = (3 << 30).to_bytes(4, "little")
    (tmp_path / "claims.npz").write_bytes(bytes(data))
    assert isinstance(check_loads_or_refuses(str(tmp_path / "claims.npz")), RnngenError)


# --- writing that fails keeps the last good file ----------------------------------------------

@pytest.fixture
def good(base, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(build(base))
    return path, checkpoint.load(str(path))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_failed_save_reports_and_keeps_previous(good, monkeypatch, code):
    path, ckpt = good
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(RnngenError, match=f"cannot write {path}: {os.strerror(code)}.*unchanged"):
        checkpoint.save(str(path), ckpt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"]


def test_read_only_folder_is_detected_before_training(good, monkeypatch):
    path, _ = good
    real_open = os.open

    def read_only(file, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RnngenError, match="cannot write in .*Read-only file system"):
        checkpoint.check_writable(str(path))


def test_full_disk_is_detected_before_training(good, monkeypatch):
    path, _ = good

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda folder: Full)
    checkpoint.check_writable(str(path))                       # no size needed: fine
    with pytest.raises(RnngenError, match="MB free, a checkpoint needs about"):
        checkpoint.check_writable(str(path), 1 << 20)


def test_saved_file_follows_umask_and_refuses_non_finite(good, tmp_path):
    path, ckpt = good
    old = os.umask(0o022)
    try:
        checkpoint.save(str(tmp_path / "fresh.npz"), ckpt)
    finally:
        os.umask(old)
    assert (tmp_path / "fresh.npz").stat().st_mode & 0o777 == 0o644
    ckpt.resume["optim.embed.v"][0, 0] = np.inf
    with pytest.raises(RnngenError, match="not finite"):
        checkpoint.save(str(path), ckpt)
    assert checkpoint.load(str(path))
