"""Durable file writes shared by the checkpoint and the metrics log."""

from __future__ import annotations

import os


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
