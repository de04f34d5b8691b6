"""A training run's metrics log (``rnngen train --log-file``): :class:`RunLog` turns the
training loop's figures into the records of :mod:`rnngen.metrics`, which defines the format
and the rules for a resume and a rollback.

What it reads of the loop's progress (``rnngen.train.Progress``): ``tokens``, ``elapsed``,
``epoch`` and ``chunk`` (the fractional epoch), ``lr``, and the epoch's loss so far
(``epoch_nll`` over ``epoch_tokens``). Records are written: at the start (``start``, or
``resume`` at the checkpoint's tokens), every ``every`` seconds of wall time, at each
periodic checkpoint (so a resume finds a record at its point), at each epoch's end (with the
validation perplexity and the ``epoch_end``, ``best`` and ``lr_decay`` events), after a
rollback (``rollback``, the records after its point gone) and when training stops
(``stop``). A RunLog without a path writes nothing.
"""

from __future__ import annotations

import math
import os
import time

from .errors import RnngenError
from .metrics import MetricsLog, read_log


class RunLog:
    """Appends a run's records to the metrics log at ``path`` ("": none). A new run starts
    the file afresh (an existing file must be a metrics log: anything else is left alone and
    is an error); a resumed one drops the records written after its checkpoint."""

    def __init__(self, path: str, every: float, n_chunks: int, progress, resumed: bool):
        self.every, self.n_chunks = every, n_chunks
        self.file = None
        if not path:
            return
        if resumed:
            self.file = MetricsLog(path, resume_from=progress.tokens)
        else:
            _check_overwritable(path)
            self.file = MetricsLog(path, fresh=True)
        self.write(progress, ["resume" if resumed else "start"])

    def due(self) -> bool:
        """Is a periodic record due?"""
        return self.file is not None and self.every > 0 and time.perf_counter() - self.last >= self.every

    def write(self, p, events=(), tokens_per_s: float | None = None, **figures) -> None:
        """A record of where ``p`` stands; ``figures`` (``lr``, ``train_loss``, ``valid_ppl``,
        ``epoch``) replace the ones read from ``p``."""
        if self.file is None:
            return
        record = {"lr": p.lr, "epoch": p.epoch + min(p.chunk / self.n_chunks, 1.0),
                  "train_loss": p.epoch_nll / p.epoch_tokens if p.epoch_tokens else None, **figures}
        self.record = self.file.write(tokens=p.tokens, train_seconds=p.elapsed, tokens_per_s=tokens_per_s,
                                      events=events, **record)
        self.last = time.perf_counter()

    def saved(self, p, tokens_per_s: float | None) -> None:
        """A checkpoint was written at ``p``: a record there unless one is already."""
        if self.file is not None and self.file.last_tokens != p.tokens:
            self.write(p, (), tokens_per_s)

    def epoch(self, entry: dict, is_best: bool, p) -> None:
        """An epoch's end (or, ``partial``, the end of the part trained): the history
        ``entry`` and the progress ``p`` after it (the learning rate maybe lowered)."""
        events = [] if entry["partial"] else ["epoch_end"]
        events += ["best"] if is_best else []
        events += ["lr_decay"] if p.lr < entry["lr"] else []
        self.write(p, events, entry["tokens_per_s"], lr=entry["lr"], valid_ppl=entry["valid_ppl"],
                   train_loss=math.log(entry["train_ppl"]))      # a perplexity is at least 1

    def stop(self, p, tokens_per_s: float | None) -> None:
        """Training stops at ``p`` (finished, a limit, a signal) and saves it. Its ``lr`` is
        the steps' up to it: a decay at an epoch's end just before applies to no step yet."""
        if self.file is not None:
            lr = self.record["lr"] if self.record["tokens"] == p.tokens else p.lr
            self.write(p, ["stop"], tokens_per_s, lr=lr)

    def rollback(self, p) -> None:
        """Training went back to ``p`` (the last save): the records after it go."""
        if self.file is not None:
            self.file.truncate_after(p.tokens)
            self.write(p, ["rollback"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_overwritable(path: str) -> None:
    """A new run empties its log: refuse when the file holds something else (a typo'd name)."""
    try:
        if os.path.getsize(path) == 0:
            return
    except OSError:                 # missing (created later), or an error MetricsLog reports
        return
    try:
        read_log(path)
    except RnngenError as exc:
        raise RnngenError(f"--log-file {path} exists and is not a metrics log, so a new run will not "
                          f"overwrite it ({exc})") from None
