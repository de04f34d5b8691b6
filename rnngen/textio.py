"""Reading users' text files: UTF-8, '-' for stdin, and one-line errors for bad input.

A corpus can be larger than the memory its text would take as Python strings, so files
are read in blocks of whole lines (``TextFile.blocks``) rather than as one string.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import RnngenError

# Bytes read at a time. A block then runs on to the end of its line, so it holds whole
# lines; 1 MiB keeps the block's text and token list within some 20 MB.
BLOCK_SIZE = 1 << 20


@contextmanager
def _os_errors(path: str):
    """Turn the operating system's errors about ``path`` into one-line errors."""
    try:
        yield
    except FileNotFoundError:
        raise RnngenError(f"{path}: no such file") from None
    except PermissionError:
        raise RnngenError(f"{path}: permission denied") from None
    except OSError as exc:
        raise RnngenError(f"{path}: cannot read ({exc.strerror or exc})") from None


class TextFile:
    """A UTF-8 text file (``-``: standard input) read in blocks of whole lines, as often as
    needed: preparing a corpus reads it once to count lines, once to count tokens and once
    to encode them, so no pass holds more than a block of text.

    Opening reads the file through once to check it (the errors reading a file has always
    given, except that of a NUL byte and invalid UTF-8 in different blocks the first in the
    file is reported) and to count its lines. Standard input and pipes cannot be
    read twice, so they are first copied to an unlinked temporary file (in the system's
    temporary folder, $TMPDIR), which disappears with the process however it ends.
    """

    def __init__(self, path: str, encoding_errors: str = "strict"):
        self.path = path
        self.name = "<stdin>" if path == "-" else path
        self.encoding_errors = encoding_errors
        with _os_errors(path):
            self._file = _open_rewindable(path)
        try:
            self.lines = sum(block.count("\n") for block in self.blocks())
        except BaseException:
            self.close()
            raise

    def blocks(self) -> Iterator[str]:
        """The text in blocks of whole lines, each ending with "\\n" (the last line gets one
        if the file has none): BOM dropped, CRLF and CR turned into LF.

        A block of bytes is cut after a b"\\n", so it never splits a UTF-8 sequence or a
        CRLF; errors name the byte offset in the file, not in the block.
        """
        self._file.seek(0)
        offset, has_text = 0, False
        with _os_errors(self.path):
            while data := self._file.read(BLOCK_SIZE):
                if not data.endswith(b"\n"):
                    data += self._file.readline()
                text = decode(data, self.name, self.encoding_errors, offset)
                if offset == 0:
                    text = text.removeprefix("\ufeff")
                offset += len(data)
                has_text = has_text or (text != "" and not text.isspace())
                if text:
                    yield text if text.endswith("\n") else text + "\n"
        if not has_text:
            raise RnngenError(f"{self.name}: no text (the file is empty or only whitespace)")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TextFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_rewindable(path: str):
    """``path`` (``-``: standard input) opened for reading from the start as often as needed."""
    if path == "-":
        return _spooled(sys.stdin.buffer)
    if os.path.isdir(path):
        raise RnngenError(f"{path}: is a directory, not a text file")
    file = open(path, "rb")       # closed by TextFile.close
    if file.seekable():
        return file
    with file:
        return _spooled(file)


def _spooled(stream):
    """A copy of a stream that can be read only once, in an unlinked temporary file."""
    spool = tempfile.TemporaryFile()
    shutil.copyfileobj(stream, spool, BLOCK_SIZE)
    return spool


def decode(data: bytes, name: str, encoding_errors: str = "strict", offset: int = 0) -> str:
    """UTF-8 bytes (found at byte ``offset`` of the file ``name``) as text with CRLF/CR
    turned into LF; a NUL byte or, with strict errors, invalid UTF-8 is a one-line error."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise RnngenError(f"{name}: looks like a binary file (NUL byte at offset {offset + nul})")
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        raise RnngenError(f"{name}: not valid UTF-8 at byte offset {offset + exc.start} "
                          "(re-encode it, or pass --encoding-errors replace)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_arg(text: str, name: str, encoding_errors: str = "strict") -> str:
    """A command-line argument as UTF-8 text. Python keeps bytes that are not UTF-8 as
    lone surrogates, which would fail only later, when the text is printed."""
    try:
        return os.fsencode(text).decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        raise RnngenError(f"{name}: not valid UTF-8 at byte offset {exc.start} "
                          "(is the terminal set to UTF-8?)") from None


def read_lines(path: str, encoding_errors: str = "strict") -> list[str]:
    """Lines of a corpus file without their newlines; refuses a file with no text."""
    with TextFile(path, encoding_errors) as text_file:
        return [line for block in text_file.blocks() for line in block[:-1].split("\n")]
