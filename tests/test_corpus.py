"""Streaming corpus preparation: the same vocabulary and ids as the per-line algorithm it
replaced, whatever the block boundaries, the storage (RAM or memory map) or the source
(file, standard input, pipe); errors name byte offsets in the file."""

import io
import os
import re
import sys
import threading
import zlib
from collections import Counter

import numpy as np
import pytest

from rnngen import corpus, textio
from rnngen.errors import RnngenError
from rnngen.textio import TextFile, read_lines
from rnngen.train import batchify, fingerprint, prepare_data, time_major, token_counts
from rnngen.vocab import EOS, UNK, Vocab

# Whitespace of every kind str.split() knows, some of which str.splitlines() would also
# break lines at (\x0b \x0c \x1c-\x1e \x85 \u2028 \u2029): lines break at "\n" only.
TRICKY_LINES = [
    "the  dog\truns .", "", "   ", "trailing spaces   ", "\tleading tab", "a\x0bb\x0cc\x1cd\x1de\x1ef\x1fg",
    "next\x85line", "line\u2028separator\u2029paragraph", "no-break\xa0space\u3000ideographic",
    "literal <eos> and <unk> tokens", "<EOS> <Unk> upper", "ΑΣ Σ ΟΔΟΣ. σ", "İstanbul ǅ ß ﬁ", "e\u0301 combining",
    "emoji 🐕 🐕", "the dog runs .", "THE DOG RUNS .", "x", "the the the", "",
]


def reference(lines, unit="word", lowercase=False, valid_fraction=0.1, max_size=None, min_count=1, valid_lines=None):
    """What prepare_data gave before it read blocks: line by line, a list of ints."""
    def tokens(line):
        line = line.lower() if lowercase else line
        return line.split() if unit == "word" else list(line)

    if valid_lines is None:
        n_valid = int(len(lines) * valid_fraction)
        lines, valid_lines = lines[:len(lines) - n_valid], lines[len(lines) - n_valid:]
    counts = Counter(t for line in lines for t in tokens(line))
    counts.pop(EOS, None)
    counts.pop(UNK, None)
    ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: -counts[t])
    vocab = [EOS, UNK] + (ranked if max_size is None else ranked[:max(0, max_size - 2)])
    index = {t: i for i, t in enumerate(vocab)}

    def encode(part):
        return [i for line in part for i in [*(index.get(t, 1) for t in tokens(line)), 0]]

    return vocab, encode(lines), encode(valid_lines) if valid_lines else None


def prepared(paths, **options):
    vocab, train, valid = prepare_data([str(p) for p in paths], log=lambda m: None, **options)
    return vocab.tokens, train.tolist(), None if valid is None else valid.tolist()


OPTIONS = [dict(), dict(lowercase=True), dict(unit="char"), dict(unit="char", lowercase=True),
           dict(valid_fraction=0.3), dict(unit="char", valid_fraction=0.3), dict(vocab_size=12, min_count=2)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_same_vocabulary_and_ids_as_line_by_line(tmp_path, options):
    path = tmp_path / "tricky.txt"
    path.write_text("".join(line + "\n" for line in TRICKY_LINES * 3), encoding="utf-8")
    ref_options = {k: v for k, v in options.items() if k not in ("vocab_size",)}
    if "vocab_size" in options:
        ref_options["max_size"] = options["vocab_size"]
    assert prepared([path], **options) == reference(TRICKY_LINES * 3, **ref_options)


@pytest.mark.parametrize("unit", ["word", "char"])
def test_vocab_build_and_encode_stream_keep_their_line_api(unit):
    vocab = Vocab.build(TRICKY_LINES, unit=unit, lowercase=True, min_count=1)
    tokens, ids, _ = reference(TRICKY_LINES, unit=unit, lowercase=True, valid_fraction=0)
    assert vocab.tokens == tokens
    assert vocab.encode_stream(TRICKY_LINES).tolist() == ids
    assert vocab.encode_stream([]).dtype == np.int32 and vocab.encode_stream([]).size == 0


def _mixed_corpus() -> bytes:
    """CRLF, CR and LF line ends, 2-4 byte UTF-8 characters and a final line without end."""
    lines = [f"ligne {i} café ñandú €{i % 7} 🐕{'x' * (i % 5)}" for i in range(300)]
    ends = ["\r\n", "\n", "\r"]
    return ("\ufeff" + "".join(line + ends[i % 3] for i, line in enumerate(lines)) + "tail é").encode()


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 64])
def test_tiny_blocks_give_the_same_result(tmp_path, monkeypatch, block_size):
    path = tmp_path / "mixed.txt"
    path.write_bytes(_mixed_corpus())
    whole = prepared([path], valid_fraction=0.25)
    monkeypatch.setattr(textio, "BLOCK_SIZE", block_size)
    with TextFile(str(path)) as text_file:
        blocks = list(text_file.blocks())
        assert len(blocks) > 100 and all(b.endswith("\n") for b in blocks)
        text = _mixed_corpus().decode().removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n") + "\n"
        assert "".join(blocks) == text and text_file.lines == 301
    assert prepared([path], valid_fraction=0.25) == whole
    assert prepared([path], valid_fraction=0.25, unit="char") == reference(text.split("\n")[:-1], "char",
                                                                           valid_fraction=0.25)


def test_several_files_and_a_valid_file(tmp_path, monkeypatch):
    monkeypatch.setattr(textio, "BLOCK_SIZE", 7)
    parts = [TRICKY_LINES[:7], TRICKY_LINES[7:15], TRICKY_LINES[15:19]]
    for i, part in enumerate(parts):
        (tmp_path / f"{i}.txt").write_text("\n".join(part))          # no final newline: the line still ends
    result = prepared([tmp_path / "0.txt", tmp_path / "1.txt"], valid_path=str(tmp_path / "2.txt"))
    assert result == reference(parts[0] + parts[1], valid_lines=parts[2])


@pytest.mark.parametrize("bad, message", [(b"\x00", "looks like a binary file (NUL byte at offset {}"),
                                          (b"\xff", "not valid UTF-8 at byte offset {} "),
                                          (b"\xe2\x82", "not valid UTF-8 at byte offset {} ")])
def test_errors_name_the_offset_in_the_file(tmp_path, monkeypatch, bad, message):
    monkeypatch.setattr(textio, "BLOCK_SIZE", 16)
    good = "ünïcödé line\r\n".encode() * 50
    path = tmp_path / "bad.txt"
    path.write_bytes(good + b"the " + bad + b" end\n" + good)
    with pytest.raises(RnngenError, match="^" + re.escape(f"{path}: " + message.format(len(good) + 4))):
        prepare_data([str(path)])


def test_replaced_bytes_at_block_ends_are_as_in_the_whole_file(tmp_path, monkeypatch):
    data = b"caf\xc3\n\xe2\x82\r\nok \xff\xfe\n\xf0\x9f\x90\n" * 20
    (tmp_path / "bad.txt").write_bytes(data)
    monkeypatch.setattr(textio, "BLOCK_SIZE", 3)
    lines = read_lines(str(tmp_path / "bad.txt"), "replace")
    assert lines == data.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")[:-1]


@pytest.mark.parametrize("data", [b"", b" \n\t\r\n", "\ufeff\u3000\n".encode()])
def test_no_text(tmp_path, data):
    (tmp_path / "blank.txt").write_bytes(data)
    with pytest.raises(RnngenError, match="blank.txt: no text"):
        prepare_data([str(tmp_path / "blank.txt")])


def test_memory_mapped_ids_are_the_same_and_leave_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "mixed.txt"
    path.write_bytes(_mixed_corpus())
    in_ram = prepare_data([str(path)], log=lambda m: None)
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(corpus, "MEMMAP_MIN_TOKENS", 1)
    monkeypatch.setattr("tempfile.tempdir", str(spool))
    vocab, train, valid = prepare_data([str(path)], log=lambda m: None)
    assert isinstance(train, np.memmap) and isinstance(valid, np.memmap)
    assert vocab.tokens == in_ram[0].tokens
    assert np.array_equal(train, in_ram[1]) and np.array_equal(valid, in_ram[2])
    assert list(spool.iterdir()) == []                  # unlinked from the start


def test_stdin(tmp_path, monkeypatch):
    (tmp_path / "mixed.txt").write_bytes(_mixed_corpus())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(_mixed_corpus()))))
    assert prepared(["-"], valid_fraction=0.2) == prepared([tmp_path / "mixed.txt"], valid_fraction=0.2)
    with pytest.raises(RnngenError, match="^<stdin>: no text"):     # already read: empty now
        prepare_data(["-"])


def test_named_pipe(tmp_path):
    (tmp_path / "mixed.txt").write_bytes(_mixed_corpus())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(_mixed_corpus(),), daemon=True)
    writer.start()
    assert prepared([fifo]) == prepared([tmp_path / "mixed.txt"])       # read once, into a spool
    writer.join(timeout=10)


def test_whole_stream_passes_in_pieces_are_as_at_once(monkeypatch):
    ids = np.random.default_rng(0).integers(0, 1000, 10_001).astype(np.int32)
    monkeypatch.setattr("rnngen.train.STREAM_PIECE", 1000)
    assert fingerprint(ids) == f"{ids.size}:{zlib.crc32(ids.tobytes()):08x}"      # as checkpoints hold it
    assert np.array_equal(token_counts(ids, 1200), np.bincount(ids, minlength=1200))


def test_batchify_chunks_are_the_old_time_major_copies():
    ids = np.arange(1000, dtype=np.int32)
    inputs, targets = batchify(ids, 7)
    assert np.shares_memory(inputs, ids) and np.shares_memory(targets, ids)
    old_inputs = np.ascontiguousarray(ids[:7 * 142].reshape(7, 142).T)
    old_targets = np.ascontiguousarray(ids[1:7 * 142 + 1].reshape(7, 142).T)
    for start in range(0, 142, 35):
        x = time_major(inputs, start, start + 35)
        assert x.flags.c_contiguous and x.dtype == np.int32
        assert np.array_equal(x, old_inputs[start:start + 35])
        assert np.array_equal(time_major(targets, start, start + 35), old_targets[start:start + 35])
