"""Checkpoints: one ``.npz`` of plain arrays plus JSON text — data, never code.

Members:
    meta                  uint8 UTF-8 JSON: format, version, model config, vocabulary,
                          training config, history and (for --resume) progress
    param.<name>          float32 parameters of the best-validation model
    resume.param.<name>   the current parameters when the file was written  } only in files
    resume.optim.<name>   optimiser state                                  } written by
    resume.state          recurrent state carried into the next chunk      } `train`

Loading uses ``allow_pickle=False`` and checks every member before it is used; writing
goes to a temporary file in the same folder, fsync, then an atomic rename.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .cells import make_cell
from .errors import RnngenError
from .model import Model, ModelConfig
from .vocab import Vocab

FORMAT = "rnngen-checkpoint"
VERSION = 1
MAX_META_BYTES = 256 << 20
HEADER_SLACK = 4096     # bytes of .npy header allowed on top of an array's data


@dataclass
class Checkpoint:
    model: Model
    vocab: Vocab
    train: dict = field(default_factory=dict)      # training config and progress
    history: list = field(default_factory=list)    # one dict per finished epoch
    resume: dict | None = None                     # arrays for --resume, or None


def save(path: str, ckpt: Checkpoint) -> None:
    """Write atomically: a crash at any moment leaves the previous file intact."""
    meta = {"format": FORMAT, "version": VERSION, "model": ckpt.model.config.to_json(),
            "vocab": ckpt.vocab.to_json(), "train": ckpt.train, "history": ckpt.history}
    for k, v in ckpt.model.params.items():
        if not np.all(np.isfinite(v)):
            raise RnngenError(f"refusing to save {path}: parameter {k} is not finite")
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    arrays.update({f"param.{k}": v for k, v in ckpt.model.params.items()})
    if ckpt.resume:
        arrays.update({f"resume.{k}": v for k, v in ckpt.resume.items()})
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load(path: str) -> Checkpoint:
    """Read and validate a checkpoint; any problem raises RnngenError naming the file."""
    try:
        return _load(path)
    except RnngenError as exc:
        raise RnngenError(f"{path}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError, UnicodeDecodeError,
            OverflowError, MemoryError) as exc:
        raise RnngenError(f"{path}: not a valid rnngen checkpoint ({type(exc).__name__}: {exc})") from None


def _load(path: str) -> Checkpoint:
    if not os.path.exists(path):
        raise RnngenError("no such file (train a model first: rnngen train CORPUS)")
    if os.path.isdir(path):
        raise RnngenError("is a directory, not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise RnngenError("not an rnngen checkpoint (not an .npz archive)")
    with zipfile.ZipFile(path) as zf:
        sizes = {info.filename: info.file_size for info in zf.infolist()}
    if "meta.npy" not in sizes:
        raise RnngenError("not an rnngen checkpoint (no meta member)")
    if sizes["meta.npy"] > MAX_META_BYTES:
        raise RnngenError("meta member is implausibly large")
    with np.load(path, allow_pickle=False) as npz:
        meta = _read_meta(npz["meta"])
        config = ModelConfig.from_json(_dict(meta, "model"))
        vocab = Vocab.from_json(_dict(meta, "vocab"))
        if config.vocab_size != len(vocab):
            raise RnngenError(f"model expects {config.vocab_size} tokens, vocabulary has {len(vocab)}")
        shapes = config.param_shapes()
        expected = {f"param.{k}": s for k, s in shapes.items()}
        train = _dict(meta, "train")
        resume_shapes = _resume_shapes(config, shapes, train) if "resume.state.npy" in sizes else {}
        expected.update(resume_shapes)
        names = {n[:-4] if n.endswith(".npy") else n for n in sizes}
        unexpected = sorted(names - set(expected) - {"meta"})
        if unexpected:
            raise RnngenError(f"unexpected member {unexpected[0]!r}")
        for name, shape in expected.items():
            if name not in names:
                raise RnngenError(f"missing array {name!r}")
            if sizes[name + ".npy"] > 4 * int(np.prod(shape)) + HEADER_SLACK:
                raise RnngenError(f"array {name!r} is larger than its shape {shape} allows")
        arrays = {name: _checked(npz[name], name, shape) for name, shape in expected.items()}
    params = {k: arrays[f"param.{k}"] for k in shapes}
    resume = {k[len("resume."):]: v for k, v in arrays.items() if k.startswith("resume.")} or None
    history = meta.get("history", [])
    if not isinstance(history, list):
        raise RnngenError("history must be a list")
    return Checkpoint(Model(config, params), vocab, train, history, resume)


def _read_meta(arr: np.ndarray) -> dict:
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise RnngenError("meta member must be a 1-D uint8 array of JSON text")
    meta = json.loads(arr.tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RnngenError("not an rnngen checkpoint (unknown format)")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise RnngenError(f"unknown checkpoint version {version!r}")
    if version > VERSION:
        raise RnngenError(f"written by a newer rnngen (format version {version}; "
                          f"this rnngen reads up to {VERSION}): upgrade rnngen")
    return meta


def _dict(meta: dict, key: str) -> dict:
    value = meta.get(key, {})
    if not isinstance(value, dict):
        raise RnngenError(f"meta field {key!r} must be an object")
    return value


def _resume_shapes(config: ModelConfig, shapes: dict, train: dict) -> dict:
    from .optim import make_optimizer  # the optimiser defines which state arrays exist

    batch = train.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise RnngenError("resume state without a valid batch size")
    dummies = {k: np.empty(s, dtype=np.float32) for k, s in shapes.items()}
    optim = make_optimizer(str(train.get("optimizer", "")), dummies)
    out = {f"resume.param.{k}": s for k, s in shapes.items()}
    out.update({f"resume.optim.{k}": v.shape for k, v in optim.state.items()})
    parts = make_cell(config.cell).state_parts
    out["resume.state"] = (config.layers, parts, batch, config.hidden)
    return out


def _checked(arr: np.ndarray, name: str, shape: tuple) -> np.ndarray:
    if arr.dtype != np.float32:
        raise RnngenError(f"array {name!r} has dtype {arr.dtype}, expected float32")
    if arr.shape != tuple(shape):
        raise RnngenError(f"array {name!r} has shape {arr.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise RnngenError(f"array {name!r} holds NaN or infinite values")
    return np.ascontiguousarray(arr)
