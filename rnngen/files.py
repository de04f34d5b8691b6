"""Durable file writes shared by the checkpoint and the metrics log."""

from __future__ import annotations

import os
import uuid


def fsync_folder(folder: str) -> None:
    """Make a rename inside ``folder`` durable; some file systems cannot fsync a folder, and
    the rename has happened anyway."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def temp_name(path: str) -> str:
    """``.<name>.<pid>-<random>.tmp`` next to ``path``: same file system, so the rename is atomic."""
    folder, base = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{base}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def replace_atomically(path: str, write, text: bool = False) -> None:
    """Put a new ``path`` in place in one step: ``write(fh)`` fills a temporary file
    (:func:`temp_name`, mode as ``path``'s when it exists), which is fsynced and renamed
    over ``path``. A crash at any moment leaves the old file whole; on any failure the
    temporary file is removed and the error raised again."""
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # umask applies, unlike mkstemp
        with os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb") as fh:
            if os.path.exists(path):
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(os.path.dirname(os.path.abspath(path)))
