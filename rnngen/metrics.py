"""The metrics log: one record per line, appended while training runs, read to draw curves.

Form: JSON lines (one object a line, ``.jsonl`` or any other name) or, when the path ends
in ``.csv`` (any case), CSV with a header line. Both hold the same records and read back
to the same dicts. Lines end in ``\\n``; the text is UTF-8.

Format version 1. Every record has these fields, in this order (the CSV column order):

    version        int           format version of the record: 1
    time           str           clock time the record was written: ISO 8601, UTC, milliseconds,
                                 e.g. ``2025-01-31T14:05:09.123Z``
    train_seconds  float         seconds spent training in the run so far, cumulative across
                                 resumes (the checkpoint's ``elapsed``); rounded to 1 ms
    tokens         int           training tokens processed in the run so far, cumulative
    epoch          float         epochs done, fractional: 2.25 is a quarter into epoch 3
    train_loss     float|null    mean cross-entropy of the current epoch's tokens so far, nats
                                 per token (what the progress line's train ppl comes from)
    train_ppl      float|null    exp(train_loss)
    valid_ppl      float|null    validation perplexity; null when not measured at this record
    lr             float         learning rate of the steps up to this record; in a ``start``,
                                 ``resume`` or ``rollback`` record, the rate training goes on with
    tokens_per_s   float|null    training throughput: tokens per second of training time,
                                 rounded to 0.1
    events         list of str   what happened at this record, from the vocabulary below; may be []

``null`` is ``null`` in JSON and an empty cell in CSV. A number that is not finite (a diverged
loss) is the string ``"inf"``, ``"-inf"`` or ``"nan"`` in JSON (which has no such numbers)
and the same text in CSV. CSV joins ``events`` with ``;``. The CSV header is the field
names joined by ``,`` and is written only when the file is new or empty::

    version,time,train_seconds,tokens,epoch,train_loss,train_ppl,valid_ppl,lr,tokens_per_s,events

Events:
    start      first record of a new run (tokens 0)
    resume     training continues here from a checkpoint taken at this many tokens
    epoch_end  an epoch has finished (valid_ppl is measured here when there is validation)
    best       the best perplexity so far (valid, or train without validation): the model
               the checkpoint serves was taken here
    lr_decay   the learning rate is lowered after this record (the next records show it)
    rollback   training went back to this point after diverging (lr is the lowered rate)
    stop       training stopped here and saved a checkpoint (finished, a limit, a signal)

Rules a reader can rely on: ``tokens`` never decreases from one record to the next; readers
ignore fields they do not know (new fields may be added within a version; a change to an
existing field's meaning raises the version); a last line without its newline that does not
parse is a record being written (or cut short by a kill) and is skipped.

Resume rule: a run resumed from a checkpoint taken at ``N`` tokens opens the log with
``resume_from=N``. Records with more than ``N`` tokens describe training the checkpoint
does not have (done after it, then lost to a kill) and are dropped, as are the records of an
earlier resume from the same point (from its ``resume`` or ``rollback`` record at ``N`` on).
The log then describes the run that continued: no gap, no duplicate, tokens monotone. A
rollback to the state at ``N`` tokens calls ``truncate_after(N)`` before writing its
``rollback`` record: records after ``N`` go, and so does an earlier ``rollback`` record at
``N``. Dropping rewrites the file atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
from datetime import datetime, timezone

from .errors import RnngenError
from .files import replace_atomically

VERSION = 1
FIELDS = ("version", "time", "train_seconds", "tokens", "epoch", "train_loss", "train_ppl", "valid_ppl",
          "lr", "tokens_per_s", "events")
EVENTS = ("start", "resume", "epoch_end", "best", "lr_decay", "rollback", "stop")
CSV_HEADER = ",".join(FIELDS)

# How each field is checked and converted when read.
_KINDS = {"version": "int", "time": "time", "train_seconds": "float", "tokens": "int", "epoch": "float",
          "train_loss": "float|null", "train_ppl": "float|null", "valid_ppl": "float|null", "lr": "float",
          "tokens_per_s": "float|null", "events": "events"}
_KIND_NAMES = {"int": "a non-negative integer", "float": "a number", "float|null": "a number or null",
               "time": "an ISO 8601 time", "events": f"a list of events from {', '.join(EVENTS)}"}
_NON_FINITE = ("inf", "-inf", "nan")       # how JSON lines spell numbers strict JSON lacks


def is_csv(path) -> bool:
    """Whether ``path`` holds (or gets) the CSV form: its name ends in ``.csv``."""
    return os.fspath(path).lower().endswith(".csv")


def utc_now() -> str:
    """The current clock time as the ``time`` field writes it."""
    return format_time(datetime.now(timezone.utc))


def format_time(when: datetime) -> str:
    """``when`` (naive means UTC) as ISO 8601 UTC with milliseconds and a ``Z``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_record(*, tokens: int, train_seconds: float, epoch: float, lr: float, train_loss: float | None = None,
                valid_ppl: float | None = None, tokens_per_s: float | None = None, events=(),
                time: datetime | str | None = None) -> dict:
    """A version-1 record (fields in order); ``train_ppl`` is computed from ``train_loss``.

    A wrong value here is a bug in the caller, so it raises ValueError, not RnngenError.
    """
    events = list(events)
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"unknown metrics event(s) {unknown}; known: {', '.join(EVENTS)}")
    if isinstance(tokens, bool) or not isinstance(tokens, numbers.Integral) or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
    stamp = utc_now() if time is None else _to_time(time, False) if isinstance(time, str) else format_time(time)
    loss = None if train_loss is None else float(train_loss)
    return {"version": VERSION, "time": stamp, "train_seconds": round(float(train_seconds), 3), "tokens": int(tokens),
            "epoch": float(epoch), "train_loss": loss, "train_ppl": None if loss is None else _exp(loss),
            "valid_ppl": None if valid_ppl is None else float(valid_ppl), "lr": float(lr),
            "tokens_per_s": None if tokens_per_s is None else round(float(tokens_per_s), 1), "events": events}


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def format_line(record: dict, as_csv: bool) -> str:
    """One record as a line of the JSON-lines or CSV form, newline included."""
    if as_csv:
        return ",".join(_csv_cell(record[k]) for k in FIELDS) + "\n"
    return json.dumps({k: _json_value(record[k]) for k in FIELDS}, allow_nan=False) + "\n"


def _csv_cell(value) -> str:
    """null as an empty cell, events joined by ";", floats in their shortest exact form."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(value)
    return repr(value) if isinstance(value, float) else str(value)


def _json_value(value):
    """Strict JSON has no inf or nan: those numbers become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    return value


def read_log(path) -> list[dict]:
    """The records of a metrics log (either form), numbers parsed, ``events`` a list.

    A missing, unreadable, empty or malformed file raises RnngenError naming the file and line.
    """
    entries, _ = _parse(os.fspath(path), _read_text(os.fspath(path), missing_ok=False))
    if not entries:
        raise RnngenError(f"{os.fspath(path)}: empty metrics log (no records)")
    return [record for _, _, record in entries]


def _read_text(path: str, missing_ok: bool) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise RnngenError(f"{path}: no such metrics log") from None
    except OSError as exc:
        raise RnngenError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RnngenError(f"{path}: line {line}: not UTF-8 text") from None


def _parse(path: str, text: str) -> tuple[list[tuple[int, str, dict]], bool]:
    """(line number, line, record) per record, and whether an unfinished last line was skipped."""
    lines = text.split("\n")
    last = lines.pop()                  # "" when the text ends with a newline
    as_csv = is_csv(path)
    if as_csv and (lines or last):
        _check_header(path, lines[0] if lines else last)
        lines, last = (lines[1:], last) if lines else ([], "")
    entries, first = [], 2 if as_csv else 1
    for n, line in enumerate(lines, first):
        if line.strip():
            entries.append((n, line, _parse_after(path, n, line, as_csv, entries)))
    if last.strip():
        try:
            entries.append((first + len(lines), last, _parse_after(path, first + len(lines), last, as_csv, entries)))
        except RnngenError:
            return entries, True
    return entries, False


def _check_header(path: str, line: str) -> None:
    """The CSV header must start with the version-1 columns (later columns are ignored)."""
    if _csv_cells(f"{path}: line 1", line)[:len(FIELDS)] != list(FIELDS):
        raise RnngenError(f"{path}: line 1: not a metrics log header (expected {CSV_HEADER})")


def _parse_after(path: str, n: int, line: str, as_csv: bool, entries: list) -> dict:
    """Line ``n`` as a record, which must not have fewer tokens than the record before it."""
    record = _parse_line(f"{path}: line {n}", line, as_csv)
    if entries and record["tokens"] < entries[-1][2]["tokens"]:
        raise RnngenError(f"{path}: line {n}: tokens {record['tokens']} after {entries[-1][2]['tokens']} "
                          "(tokens never decrease in a metrics log)")
    return record


def _parse_line(where: str, line: str, as_csv: bool) -> dict:
    if as_csv:
        cells = _csv_cells(where, line)
        if len(cells) < len(FIELDS):
            raise RnngenError(f"{where}: {len(cells)} columns where a record has {len(FIELDS)}")
        raw = dict(zip(FIELDS, cells))
    else:
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise RnngenError(f"{where}: not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(raw, dict):
            raise RnngenError(f"{where}: not a JSON object")
    version = _field(where, raw, "version", as_csv)
    if version != VERSION:
        newer = " (written by a newer rnngen: upgrade to read it)" if version > VERSION else ""
        raise RnngenError(f"{where}: metrics format version {version}, this rnngen reads {VERSION}{newer}")
    return {key: _field(where, raw, key, as_csv) for key in FIELDS}


def _csv_cells(where: str, line: str) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:            # e.g. a cell longer than csv.field_size_limit()
        raise RnngenError(f"{where}: not a CSV row ({exc})") from None


def _field(where: str, raw: dict, key: str, as_csv: bool):
    if key not in raw:
        raise RnngenError(f"{where}: no {key} field")
    kind = _KINDS[key]
    try:
        return _CONVERT[kind](raw[key], as_csv)
    except (TypeError, ValueError, OverflowError):      # OverflowError: an int too large for a float
        shown = repr(raw[key]) if len(repr(raw[key])) <= 40 else repr(raw[key])[:37] + "..."
        raise RnngenError(f"{where}: {key} must be {_KIND_NAMES[kind]}, not {shown}") from None


def _to_int(value, as_csv: bool) -> int:
    number = int(value) if as_csv else value if type(value) is int else None
    if number is None or number < 0:
        raise ValueError(value)
    return number


def _to_float(value, as_csv: bool) -> float:
    if as_csv or (isinstance(value, str) and value in _NON_FINITE):
        return float(value)
    if type(value) not in (int, float):
        raise TypeError(value)
    return float(value)


def _to_float_or_null(value, as_csv: bool) -> float | None:
    return None if value == ("" if as_csv else None) else _to_float(value, as_csv)


def _to_time(value, as_csv: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    datetime.fromisoformat(value.replace("Z", "+00:00"))      # Python 3.10 does not read "Z"
    return value


def _to_events(value, as_csv: bool) -> list[str]:
    events = (value.split(";") if value else []) if as_csv else value
    if not isinstance(events, list) or not all(e in EVENTS for e in events):
        raise ValueError(value)
    return list(events)


_CONVERT = {"int": _to_int, "float": _to_float, "float|null": _to_float_or_null, "time": _to_time,
            "events": _to_events}


class MetricsLog:
    """Appends records to a metrics log, a line each, flushed at once (``tail -f`` shows them).

    The file is created when missing; an existing one must be a metrics log of the same
    form (a CSV one with exactly this version's columns), else RnngenError and the file is
    left as it was. ``resume_from=N`` applies the resume rule (module docstring) first;
    ``fresh=True`` empties the file first (a new run). An unfinished last line (a writer
    killed mid-line) is removed. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, *, resume_from: int | None = None, fresh: bool = False):
        if fresh and resume_from is not None:
            raise ValueError("a fresh metrics log has nothing to resume from")
        self.path = os.fspath(path)
        self.as_csv = is_csv(self.path)
        self.last_tokens: int | None = None     # tokens of the last record in the file
        self._fh = None
        if fresh:
            self._open("w")
        else:
            self._trim(resume_from, ("resume", "rollback"))

    def write(self, *, tokens: int, train_seconds: float, epoch: float, lr: float, train_loss: float | None = None,
              valid_ppl: float | None = None, tokens_per_s: float | None = None, events=(),
              time: datetime | str | None = None) -> dict:
        """Append one record (see :func:`make_record`) and flush it; returns the record."""
        record = make_record(tokens=tokens, train_seconds=train_seconds, epoch=epoch, lr=lr, train_loss=train_loss,
                             valid_ppl=valid_ppl, tokens_per_s=tokens_per_s, events=events, time=time)
        if self.last_tokens is not None and tokens < self.last_tokens:
            raise RnngenError(f"{self.path}: a record at {tokens} tokens cannot follow one at {self.last_tokens} "
                              "(the log is of a later point of the run; resume from its checkpoint or use a new log)")
        try:
            self._fh.write(format_line(record, self.as_csv))
            self._fh.flush()
        except OSError as exc:
            raise RnngenError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.last_tokens = tokens
        return record

    def truncate_after(self, tokens: int) -> int:
        """Rollback to the state at ``tokens``: drop the records after it and an earlier
        ``rollback`` record at it (module docstring). Returns how many records went."""
        self.close()
        return self._trim(tokens, ("rollback",))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _trim(self, tokens: int | None, markers: tuple[str, ...]) -> int:
        """Keep the records up to ``tokens`` (all with None), rewrite the file if that drops
        any or its last line is unfinished, and reopen it for appending."""
        text = _read_text(self.path, missing_ok=True)
        entries, _ = _parse(self.path, text)
        if self.as_csv and text.strip() and text.split("\n", 1)[0].rstrip("\r") != CSV_HEADER:
            raise RnngenError(f"{self.path}: its columns differ from the ones this rnngen writes "
                              f"({CSV_HEADER}); write to a new file")
        keep = entries if tokens is None else _kept(entries, tokens, markers)
        if len(keep) < len(entries) or (text and not text.endswith("\n")):
            header = [CSV_HEADER] if self.as_csv and text.strip() else []
            _replace_file(self.path, "".join(line + "\n" for line in header + [e[1] for e in keep]))
        self.last_tokens = keep[-1][2]["tokens"] if keep else None
        self._open("a")
        return len(entries) - len(keep)

    def _open(self, mode: str) -> None:
        try:
            self._fh = open(self.path, mode, encoding="utf-8", newline="")
            if self.as_csv and os.fstat(self._fh.fileno()).st_size == 0:
                self._fh.write(CSV_HEADER + "\n")
                self._fh.flush()
        except OSError as exc:
            self.close()
            raise RnngenError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def _kept(entries: list, tokens: int, markers: tuple[str, ...]) -> list:
    """The records up to ``tokens``, less any from the first ``markers`` record at ``tokens`` on."""
    keep = [e for e in entries if e[2]["tokens"] <= tokens]     # a prefix: tokens never decrease
    for i, (_, _, record) in enumerate(keep):
        if record["tokens"] == tokens and set(markers) & set(record["events"]):
            return keep[:i]
    return keep


def _replace_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder (same mode
    as the file it replaces), fsync, rename, fsync the folder."""
    try:
        replace_atomically(path, lambda fh: fh.write(text), text=True)
    except OSError as exc:
        raise RnngenError(f"cannot rewrite {path}: {exc.strerror or exc} (the log is unchanged)") from None


def history_to_records(history: list[dict], tokens_per_step: int | None = None) -> list[dict]:
    """Records (as read from a log) made from a checkpoint's per-epoch ``history``, so a
    checkpoint plots like a log.

    ``time`` is None (a history has no clock times); ``train_seconds`` is the entry's
    ``elapsed``; ``tokens`` is the entry's ``tokens`` (recorded since rnngen counts them),
    else ``step * tokens_per_step`` (pass the checkpoint's batch_size * bptt: approximate,
    as an epoch's last chunk is shorter), else None.
    Events: ``epoch_end`` for a whole epoch, ``stop`` for a part one, ``best`` at a new
    lowest perplexity (valid, else train), ``lr_decay`` where the next entry's rate is lower.
    """
    records, best = [], math.inf
    for i, h in enumerate(history):
        train_ppl, valid_ppl = float(h["train_ppl"]), h.get("valid_ppl")
        events = ["stop" if h.get("partial") else "epoch_end"]
        if (valid_ppl if valid_ppl is not None else train_ppl) < best:
            best = valid_ppl if valid_ppl is not None else train_ppl
            events.append("best")
        if i + 1 < len(history) and history[i + 1]["lr"] < h["lr"]:
            events.append("lr_decay")
        step, elapsed, speed, tokens = h.get("step"), h.get("elapsed"), h.get("tokens_per_s"), h.get("tokens")
        if tokens is None and step is not None and tokens_per_step:
            tokens = step * tokens_per_step
        records.append({
            "version": VERSION, "time": None, "train_seconds": None if elapsed is None else float(elapsed),
            "tokens": tokens,
            "epoch": _history_epoch(history, i), "train_loss": math.log(train_ppl), "train_ppl": train_ppl,
            "valid_ppl": None if valid_ppl is None else float(valid_ppl), "lr": float(h["lr"]),
            "tokens_per_s": None if speed is None else float(speed), "events": events})
    return records


def _history_epoch(history: list[dict], i: int) -> float:
    """Entry ``i``'s fractional epoch. A part epoch (``partial``) sits between the steps at
    which its epoch began and ended (or would end, at the previous epoch's length); halfway
    through when steps are missing."""
    h, ends = history[i], {0: 0}
    if not h.get("partial"):
        return float(h["epoch"])
    ends.update((g["epoch"], g.get("step")) for g in history if not g.get("partial"))
    e, step = h["epoch"], h.get("step")
    begin, end = ends.get(e - 1), ends.get(e)
    if end is None and begin is not None and ends.get(e - 2) is not None:
        end = 2 * begin - ends[e - 2]
    if step is None or begin is None or end is None or end <= begin:
        return e - 0.5
    return e - 1 + min(max((step - begin) / (end - begin), 0.0), 1.0)
