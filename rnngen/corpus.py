"""Corpus files to one compact int32 stream of token ids, a block of lines at a time.

A 50M-token corpus as Python strings and ints would take several GB; as int32 ids it is
200 MB. So the text is never held whole: opening a ``TextFile`` reads it once to check it
and count its lines (which fixes the lines held out for validation), ``count_corpus``
reads it again to count tokens and the training vocabulary, and ``encode_files`` a third
time to write the ids into an array allocated once. A long stream lives in a memory-mapped
temporary file, which the operating system can write out instead of keeping it in RAM.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator

import numpy as np

from .errors import RnngenError
from .textio import TextFile
from .vocab import LINE_END, Vocab, block_tokens

# Streams of at least this many ids (32 MB) are memory-mapped; shorter ones stay in RAM.
MEMMAP_MIN_TOKENS = 8_000_000


def allocate_ids(n: int) -> np.ndarray:
    """An int32 array for ``n`` ids: in RAM, or from MEMMAP_MIN_TOKENS on in a memory-mapped
    temporary file (in $TMPDIR) that is unlinked from the start, so nothing is left behind
    even when the process is killed. Its disk space is reserved first: running out of it
    later, while writing through the map, would kill the process with SIGBUS."""
    if n < MEMMAP_MIN_TOKENS:
        return np.empty(n, dtype=np.int32)
    nbytes = n * np.dtype(np.int32).itemsize
    with tempfile.TemporaryFile() as backing:
        if hasattr(os, "posix_fallocate"):          # not on macOS
            try:
                os.posix_fallocate(backing.fileno(), 0, nbytes)
            except OSError as exc:
                raise RnngenError(f"no room for {nbytes / 1e6:,.0f} MB of token ids in {tempfile.gettempdir()} "
                                  f"({exc.strerror}); point TMPDIR to a folder with more space") from None
        return np.memmap(backing, dtype=np.int32, mode="w+", shape=(n,))


def _blocks_around_line(files: list[TextFile], line: int) -> Iterator[tuple[str, bool]]:
    """The files' blocks, each with whether it lies within their first ``line`` lines;
    the block that holds that line's end is cut there in two."""
    seen = 0
    for text_file in files:
        for block in text_file.blocks():
            lines = block.count(LINE_END)
            if seen < line < seen + lines:
                cut = -1
                for _ in range(line - seen):
                    cut = block.index(LINE_END, cut + 1)
                yield block[:cut + 1], True
                yield block[cut + 1:], False
            else:
                yield block, seen < line
            seen += lines


def count_corpus(files: list[TextFile], unit: str, lowercase: bool, train_lines: int,
                 counts: Counter[str] | None = None) -> tuple[int, int]:
    """Tokens (``<eos>`` included) in the files' first ``train_lines`` lines and in the
    lines after them. The first ones are also added to ``counts``, for the vocabulary."""
    n_train = n_rest = 0
    for block, training in _blocks_around_line(files, train_lines):
        tokens = block_tokens(block, unit, lowercase)
        if training:
            n_train += len(tokens)
            if counts is not None:
                counts.update(tokens)
        else:
            n_rest += len(tokens)
    return n_train, n_rest


def encode_files(files: list[TextFile], vocab: Vocab, n_tokens: int | None = None) -> np.ndarray:
    """All lines of ``files`` as one int32 id stream, ``<eos>`` closing each line.

    ``n_tokens`` is the stream's length when already counted (``count_corpus``); the array
    is allocated once at that size (``allocate_ids``)."""
    if n_tokens is None:
        n_tokens = count_corpus(files, vocab.unit, vocab.lowercase, train_lines=0)[1]
    ids = allocate_ids(n_tokens)
    end = 0
    for block_ids in (vocab.encode_block(block) for text_file in files for block in text_file.blocks()):
        start, end = end, end + len(block_ids)
        if end > n_tokens:
            break
        ids[start:end] = block_ids
    if end != n_tokens:
        raise RnngenError(f"{', '.join(f.name for f in files)}: changed while being read")
    return ids
