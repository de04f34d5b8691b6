"""Tokenisation and the vocabulary: text lines <-> integer token ids.

Every line is one sentence. The end-of-line token ``<eos>`` closes each line, and a
training stream is the lines joined by it (the Penn Treebank protocol). Words outside
the vocabulary map to ``<unk>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .errors import RnngenError

EOS = "<eos>"
UNK = "<unk>"
UNITS = ("word", "char")


def split_tokens(line: str, unit: str, lowercase: bool = False) -> list[str]:
    """Split one line (without its newline) into tokens."""
    if lowercase:
        line = line.lower()
    if unit == "word":
        return line.split()
    return list(line)


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
        """The ``max_size`` most frequent tokens seen at least ``min_count`` times.

        Ties in frequency are broken by the token's first appearance, so the result does
        not depend on hash order. ``max_size`` counts ``<eos>`` and ``<unk>``.
        """
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(split_tokens(line, unit, lowercase))
        counts.pop(EOS, None)
        counts.pop(UNK, None)
        # Counter preserves first-insertion order and sorted() is stable: ties keep it.
        ranked = sorted((t for t, c in counts.items() if c >= min_count),
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

    def encode_stream(self, lines: Iterable[str]) -> np.ndarray:
        """All lines as one int32 stream, each line followed by ``<eos>``."""
        index, unk = self.index, self.unk
        ids: list[int] = []
        for line in lines:
            ids.extend(index.get(t, unk) for t in split_tokens(line, self.unit, self.lowercase))
            ids.append(0)
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        sep = " " if self.unit == "word" else ""
        return sep.join(self.tokens[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"unit": self.unit, "lowercase": self.lowercase, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        try:
            return cls(unit=data["unit"], lowercase=bool(data["lowercase"]),
                       tokens=[str(t) for t in data["tokens"]])
        except (KeyError, TypeError) as exc:
            raise RnngenError(f"malformed vocabulary: {exc}") from None
