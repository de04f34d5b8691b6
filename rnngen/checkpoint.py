"""Checkpoints: one ``.npz`` of plain arrays plus JSON text — data, never code.

Members:
    meta                  uint8 UTF-8 JSON: format, version, model config, vocabulary,
                          training config, history and (for --resume) progress
    param.<name>          float32 parameters of the best-validation model
    resume.param.<name>   the current parameters when the file was written  } only in files
    resume.optim.<name>   optimiser state                                  } written by
    resume.state          recurrent state carried into the next chunk      } `train`

Loading never unpickles and never trusts a size it has not checked: every member must be
stored uncompressed, its .npy header must declare the dtype and shape the configuration
implies, and its byte count must match, all before any array is allocated — so a hostile
or damaged file costs at most its own size in memory. Writing goes to a temporary file in
the same folder, fsync, then an atomic rename.
"""

from __future__ import annotations

import json
import math
import os
import stat
import typing
import zipfile
from dataclasses import MISSING, dataclass, field, fields

import numpy as np

from .cloze import build_model
from .config import ModelConfig, TrainConfig
from .errors import RnngenError
from .files import replace_atomically, temp_name
from .model import Model
from .optim import optimizer_class
from .vocab import Vocab

FORMAT = "rnngen-checkpoint"
VERSION = 1
MAX_META_BYTES = 256 << 20
HEADER_SLACK = 4096     # bytes of .npy header allowed on top of an array's data
READ_BLOCK = 1 << 20

# JSON value checks, by kind: the records below name theirs; a config field's follows from its type.
_INT_LIMIT = 1 << 63
_KINDS = {
    "int": lambda v: type(v) is int and -_INT_LIMIT < v < _INT_LIMIT,
    "count": lambda v: type(v) is int and 0 <= v < _INT_LIMIT,
    "float": lambda v: type(v) is float or (type(v) is int and -_INT_LIMIT < v < _INT_LIMIT),
    "float|None": lambda v: v is None or _KINDS["float"](v),
    "rate": lambda v: _KINDS["float"](v) and 0 < v < math.inf,
    "bool": lambda v: type(v) is bool,
    "str": lambda v: type(v) is str,
    "dict": lambda v: type(v) is dict,
}
_KIND_NAMES = {"int": "an integer", "count": "a non-negative integer", "float": "a number",
               "float|None": "a number or null",
               "rate": "a positive number", "bool": "true or false", "str": "a string", "dict": "an object"}
_FIELD_KINDS = {int: "int", float: "float", bool: "bool", str: "str"}    # other fields: their __post_init__
# What `rnngen info` reads from each history entry, and what --resume reads from progress.
HISTORY_FIELDS = {"epoch": "count", "partial": "bool", "train_ppl": "float", "valid_ppl": "float|None",
                  "lr": "float", "tokens_per_s": "float"}
PROGRESS_FIELDS = {"epoch": "count", "chunk": "count", "step": "count", "lr": "rate", "best_valid": "float|None",
                   "best_score": "float|None", "bad_epochs": "count", "epoch_nll": "float", "epoch_tokens": "count",
                   "elapsed": "float", "rng": "dict", "data": "str"}
# Fields added since: checked when present; checkpoints written before them lack them.
HISTORY_LATER_FIELDS = {"tokens": "count"}
PROGRESS_LATER_FIELDS = {"tokens": "count"}


@dataclass
class Checkpoint:
    model: Model
    vocab: Vocab
    train: dict = field(default_factory=dict)      # training config and progress
    history: list = field(default_factory=list)    # one dict per finished epoch
    resume: dict | None = None                     # arrays for --resume, or None


def save(path: str, ckpt: Checkpoint) -> None:
    """Write atomically: a crash at any moment leaves the previous file intact, and a
    failed write (disk full, read-only folder) removes its temporary file and says so."""
    meta = {"format": FORMAT, "version": VERSION, "model": ckpt.model.config.to_json(),
            "vocab": ckpt.vocab.to_json(), "train": ckpt.train, "history": ckpt.history}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    arrays.update({f"param.{k}": v for k, v in ckpt.model.params.items()})
    if ckpt.resume:
        arrays.update({f"resume.{k}": v for k, v in ckpt.resume.items()})
    for k, v in arrays.items():     # load() refuses them, so never write them
        if k != "meta" and not np.all(np.isfinite(v)):
            raise RnngenError(f"refusing to save {path}: {k} is not finite")
    try:
        replace_atomically(path, lambda fh: np.savez(fh, **arrays))
    except OSError as exc:
        raise RnngenError(f"cannot write {path}: {exc.strerror or exc} "
                          "(any previous checkpoint there is unchanged)") from None
    _remove_stale_temps(path)


def check_writable(path: str, size: int = 0) -> None:
    """Fail before training, not after it: the folder must take a test file, and (with
    ``size``) have room for a checkpoint of that many bytes next to the current one."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RnngenError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise RnngenError(f"{path}: is a directory")
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
        free = os.statvfs(folder)
    except OSError as exc:
        raise RnngenError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None
    if size > free.f_bavail * free.f_frsize:
        raise RnngenError(f"{path}: {folder} has {free.f_bavail * free.f_frsize / 1e6:.1f} MB free, "
                          f"a checkpoint needs about {size / 1e6:.1f} MB")


def _remove_stale_temps(path: str) -> None:
    """Delete temporary files of ``path`` left by writers that no longer run (killed with
    SIGKILL or by a power cut mid-write); a running writer's file is left alone."""
    folder, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}."
    try:
        names = os.listdir(folder)
    except OSError:                 # the checkpoint is written; tidying up is optional
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):-len(".tmp")].partition("-")[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                 # exists, owned by someone else
        return True
    return True


def load(path: str, training_state: bool = True) -> Checkpoint:
    """Read and validate a checkpoint; any problem raises RnngenError naming the file.
    ``training_state=False`` leaves the arrays only ``--resume`` needs (the optimiser's,
    up to twice the model's size) unread: scoring and sampling start sooner."""
    try:
        return _load(path, training_state)
    except RnngenError as exc:
        raise RnngenError(f"{path}: {exc}") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, OverflowError, MemoryError, RecursionError) as exc:
        raise RnngenError(f"{path}: not a valid rnngen checkpoint ({type(exc).__name__}: {exc})") from None


def _load(path: str, training_state: bool) -> Checkpoint:
    if not os.path.exists(path):
        raise RnngenError("no such file (train a model first: rnngen train CORPUS)")
    if os.path.isdir(path):
        raise RnngenError("is a directory, not a checkpoint")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise RnngenError("not a regular file")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise RnngenError(f"cannot read ({exc.strerror or exc})") from None
    with fh:
        if not zipfile.is_zipfile(fh):
            raise RnngenError("not an rnngen checkpoint (not an .npz archive)")
        with zipfile.ZipFile(fh) as zf:
            return _read(zf, os.fstat(fh.fileno()).st_size, training_state)


def _read(zf: zipfile.ZipFile, file_size: int, training_state: bool = True) -> Checkpoint:
    members = _members(zf, file_size)
    if "meta" not in members:
        raise RnngenError("not an rnngen checkpoint (no meta member)")
    if members["meta"].file_size > MAX_META_BYTES:
        raise RnngenError("meta member is implausibly large")
    meta = _read_meta(_read_array(zf, members["meta"], np.uint8))
    model_json, vocab_json, train = _dict(meta, "model"), _dict(meta, "vocab"), _dict(meta, "train")
    _check_fields(model_json, ModelConfig, "model")
    config = ModelConfig.from_json(model_json)
    vocab = _vocab(vocab_json)
    if config.vocab_size != len(vocab):
        raise RnngenError(f"model expects {config.vocab_size} tokens, vocabulary has {len(vocab)}")
    _check_fields(train, TrainConfig, "train")
    history = meta.get("history", [])
    if not isinstance(history, list):
        raise RnngenError("history must be a list")
    for i, entry in enumerate(history):
        _check_record(entry, HISTORY_FIELDS, f"history entry {i + 1}", HISTORY_LATER_FIELDS)
    if config.layers > len(members):         # each layer has its own members: bounds the loops below
        raise RnngenError(f"model config declares {config.layers} layers, the file cannot hold them")
    shapes = config.param_shapes()
    expected = {f"param.{k}": s for k, s in shapes.items()}
    _check_sizes(members, expected)
    if any(name.startswith("resume.") for name in members):
        train_config = TrainConfig.from_json(train)
        _check_record(train.get("progress"), PROGRESS_FIELDS, "train progress", PROGRESS_LATER_FIELDS)
        _check_rng(train["progress"]["rng"])
        resume_shapes = _resume_shapes(config, shapes, train_config)
        _check_sizes(members, resume_shapes)
        expected.update(resume_shapes)
    unexpected = sorted(set(members) - set(expected) - {"meta"})
    if unexpected:
        raise RnngenError(f"unexpected member {unexpected[0]!r}")
    arrays = {name: _finite(_read_array(zf, members[name], np.float32, shape), name)
              for name, shape in expected.items() if training_state or not name.startswith("resume.")}
    params = {k: arrays[f"param.{k}"] for k in shapes}
    resume = {k[len("resume."):]: v for k, v in arrays.items() if k.startswith("resume.")} or None
    return Checkpoint(build_model(config, params), vocab, train, history, resume)


def _members(zf: zipfile.ZipFile, file_size: int) -> dict[str, zipfile.ZipInfo]:
    """The archive's .npy members by array name. Stored (uncompressed) members that do not
    overlap cannot claim more bytes than the file holds: no zip bomb gets through."""
    members: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise RnngenError(f"unexpected member {name!r}")
        if name[:-4] in members:
            raise RnngenError(f"member {name!r} appears twice")
        if info.flag_bits & 0x1:
            raise RnngenError(f"member {name!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise RnngenError(f"member {name!r} is compressed (rnngen checkpoints are uncompressed .npz files)")
        total += info.file_size
        if total > file_size:
            raise RnngenError("members claim more bytes than the file holds")
        members[name[:-4]] = info
    return members


def _check_sizes(members: dict, expected: dict) -> None:
    for name, shape in expected.items():
        if name not in members:
            raise RnngenError(f"missing array {name!r}")
        need = 4 * math.prod(shape)
        if not need <= members[name].file_size <= need + HEADER_SLACK:
            raise RnngenError(f"array {name!r} has {members[name].file_size} bytes, "
                              f"its shape {tuple(shape)} needs {need}")


def _read_array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dtype, shape: tuple | None = None) -> np.ndarray:
    """One .npy member, its header checked against ``dtype`` and ``shape`` (None: any 1-D)
    and its byte count against the member's size before the array is allocated."""
    name = info.filename[:-4]
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise RnngenError(f"array {name!r} has unsupported .npy version {version}")
        if got_dtype != dtype:
            raise RnngenError(f"array {name!r} has dtype {got_dtype}, expected {np.dtype(dtype).name}")
        if shape is None:
            if len(got_shape) != 1:
                raise RnngenError(f"array {name!r} must be 1-D")
        elif got_shape != tuple(shape):
            raise RnngenError(f"array {name!r} has shape {got_shape}, expected {tuple(shape)}")
        nbytes = math.prod(got_shape) * got_dtype.itemsize
        if info.file_size - fh.tell() != nbytes:
            raise RnngenError(f"array {name!r} holds {info.file_size - fh.tell()} bytes of data, "
                              f"its shape needs {nbytes}")
        arr = np.empty(got_shape[::-1] if fortran else got_shape, dtype=dtype)
        buf = memoryview(arr.reshape(-1).view(np.uint8))
        pos = 0
        while pos < nbytes:     # reading to the end also makes zipfile verify the CRC
            block = fh.read(min(READ_BLOCK, nbytes - pos))
            if not block:
                raise RnngenError(f"array {name!r} is truncated")
            buf[pos:pos + len(block)] = block
            pos += len(block)
    return np.ascontiguousarray(arr.T) if fortran else arr


def _read_meta(arr: np.ndarray) -> dict:
    try:
        meta = json.loads(arr.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise RnngenError(f"meta is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RnngenError("not an rnngen checkpoint (unknown format)")
    version = meta.get("version")
    if not _KINDS["count"](version) or version < 1:
        raise RnngenError(f"unknown checkpoint version {str(version)[:20]!r}")
    if version > VERSION:
        raise RnngenError(f"written by a newer rnngen (format version {version}; "
                          f"this rnngen reads up to {VERSION}): upgrade rnngen")
    return meta


def _dict(meta: dict, key: str) -> dict:
    value = meta.get(key, {})
    if not isinstance(value, dict):
        raise RnngenError(f"meta field {key!r} must be an object")
    return value


def _check_record(data, kinds: dict, what: str, later: dict | None = None) -> None:
    """``data`` must hold each of ``kinds`` and may hold each of ``later``, of those kinds."""
    if not isinstance(data, dict):
        raise RnngenError(f"{what} must be an object")
    later = later or {}
    for key, kind in {**kinds, **later}.items():
        if key not in data:
            if key in later:
                continue
            raise RnngenError(f"{what} lacks {key!r}")
        if not _KINDS[kind](data[key]):
            raise RnngenError(f"{what}: {key!r} must be {_KIND_NAMES[kind]}, not {type(data[key]).__name__}")


def _check_fields(data: dict, cls, what: str) -> None:
    """JSON types of a config dataclass's fields, checked by the fields' declared types before
    the dataclass compares, multiplies or allocates with them (a float, string, bool or
    2**100 as a size)."""
    types = typing.get_type_hints(cls)
    for f in fields(cls):
        kind = _FIELD_KINDS.get(types[f.name])
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise RnngenError(f"{what} config lacks {f.name!r}")
        elif kind is not None and not _KINDS[kind](data[f.name]):
            raise RnngenError(f"{what} config: {f.name!r} must be {_KIND_NAMES[kind]}, "
                              f"not {type(data[f.name]).__name__}")


def _vocab(data: dict) -> Vocab:
    _check_record(data, {"unit": "str", "lowercase": "bool"}, "vocabulary")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is str for t in tokens):
        raise RnngenError("vocabulary tokens must be a list of strings")
    return Vocab(unit=data["unit"], lowercase=data["lowercase"], tokens=tokens)


def _check_rng(state: dict) -> None:
    try:
        np.random.default_rng().bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError):
        raise RnngenError("train progress: 'rng' is not a valid random-generator state") from None


def _resume_shapes(config: ModelConfig, shapes: dict, train: TrainConfig) -> dict:
    """The members only --resume reads: current parameters, optimiser state, recurrent state."""
    out = {f"resume.param.{k}": s for k, s in shapes.items()}
    out.update({f"resume.optim.{k}": s for k, s in optimizer_class(train.optimizer).state_shapes(shapes).items()})
    out["resume.state"] = config.state_shape(train.batch_size)
    return out


def _finite(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise RnngenError(f"array {name!r} holds NaN or infinite values")
    return arr
