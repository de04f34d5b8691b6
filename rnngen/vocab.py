"""Tokenisation and the vocabulary: text lines <-> integer token ids.

Every line is one sentence. The end-of-line token ``<eos>`` closes each line, and a
training stream is the lines joined by it (the Penn Treebank protocol). Words outside
the vocabulary map to ``<unk>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, repeat

import numpy as np

from .errors import RnngenError

EOS = "<eos>"
UNK = "<unk>"
UNITS = ("word", "char")
LINE_END = "\n"         # in a block of lines: a word-unit line end becomes EOS, a char-unit one stays this
LINES_PER_BLOCK = 4096  # lines joined into one block when the caller holds a list of lines


def split_tokens(line: str, unit: str, lowercase: bool = False) -> list[str]:
    """Split one line (without its newline) into tokens."""
    if lowercase:
        line = line.lower()
    if unit == "word":
        return line.split()
    return list(line)


def block_tokens(block: str, unit: str, lowercase: bool = False) -> Sequence[str]:
    """The tokens of a block of whole lines (each ending with "\\n"), a line end standing
    for ``<eos>``: the word unit gives ``EOS``, the char unit keeps ``LINE_END``.

    One split of the whole block makes one call where a split per line makes thousands, and
    gives the same tokens: splitting lines on "\\n" and then on whitespace is splitting on
    whitespace.
    """
    if lowercase:
        block = block.lower()
    if unit == "word":
        return block.replace(LINE_END, f" {EOS} ").split()
    return block


def lines_as_blocks(lines: Iterable[str]) -> Iterator[str]:
    """Lines (without their newlines) joined into blocks for ``block_tokens``."""
    lines = iter(lines)
    while batch := list(islice(lines, LINES_PER_BLOCK)):
        yield "".join(line + LINE_END for line in batch)


@dataclass
class Vocab:
    """Token <-> id maps. Ids 0 and 1 are always ``<eos>`` and ``<unk>``."""

    unit: str = "word"
    lowercase: bool = False
    tokens: list[str] = field(default_factory=lambda: [EOS, UNK])

    def __post_init__(self):
        if self.unit not in UNITS:
            raise RnngenError(f"unknown unit {self.unit!r} (choose word or char)")
        if self.tokens[:2] != [EOS, UNK]:
            raise RnngenError("vocabulary must start with <eos>, <unk>")
        self.index = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise RnngenError("vocabulary holds a token twice")
        self._block_index = {**self.index, LINE_END: self.eos}   # for the tokens of block_tokens

    @property
    def eos(self) -> int:
        return 0

    @property
    def unk(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, lines: Iterable[str], unit: str = "word", lowercase: bool = False,
              max_size: int | None = None, min_count: int = 1) -> Vocab:
        """The vocabulary of ``lines`` (without their newlines); see ``from_counts``."""
        counts: Counter[str] = Counter()
        for block in lines_as_blocks(lines):
            counts.update(block_tokens(block, unit, lowercase))
        return cls.from_counts(counts, unit, lowercase, max_size, min_count)

    @classmethod
    def from_counts(cls, counts: Counter[str], unit: str = "word", lowercase: bool = False,
                    max_size: int | None = None, min_count: int = 1) -> Vocab:
        """The ``max_size`` most frequent tokens seen at least ``min_count`` times, from
        ``counts`` of ``block_tokens`` in the order the tokens first appeared.

        Ties in frequency are broken by the token's first appearance, so the result does
        not depend on hash order. ``max_size`` counts ``<eos>`` and ``<unk>``.
        """
        special = {EOS, UNK, LINE_END}
        # Counter preserves first-insertion order and sorted() is stable: ties keep it.
        ranked = sorted((t for t, c in counts.items() if c >= min_count and t not in special),
                        key=lambda t: -counts[t])
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 2)]
        return cls(unit=unit, lowercase=lowercase, tokens=[EOS, UNK] + ranked)

    def encode_line(self, line: str) -> tuple[np.ndarray, int]:
        """Token ids of one line (without ``<eos>``) and how many were out of vocabulary."""
        index, unk = self.index, self.unk
        ids = [index.get(t, unk) for t in split_tokens(line, self.unit, self.lowercase)]
        arr = np.asarray(ids, dtype=np.int32)
        return arr, int(np.count_nonzero(arr == unk)) if arr.size else 0

    def encode_block(self, block: str) -> np.ndarray:
        """Token ids of a block of whole lines (see ``block_tokens``), ``<eos>`` closing each."""
        tokens = block_tokens(block, self.unit, self.lowercase)
        return np.fromiter(map(self._block_index.get, tokens, repeat(self.unk)), dtype=np.int32,
                           count=len(tokens))

    def encode_stream(self, lines: Iterable[str]) -> np.ndarray:
        """All lines (without their newlines) as one int32 stream, each followed by ``<eos>``."""
        blocks = [self.encode_block(block) for block in lines_as_blocks(lines)]
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        sep = " " if self.unit == "word" else ""
        return sep.join(self.tokens[int(i)] for i in ids)

    def to_json(self) -> dict:
        """The vocabulary as a checkpoint stores it (read back by rnngen.checkpoint, which checks it)."""
        return {"unit": self.unit, "lowercase": self.lowercase, "tokens": self.tokens}
