"""Reading users' text files: UTF-8, '-' for stdin, and one-line errors for bad input."""

from __future__ import annotations

import os
import sys

from .errors import RnngenError


def read_text(path: str, encoding_errors: str = "strict") -> str:
    """The whole file as text with CRLF/CR turned into LF. ``-`` reads standard input."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
            name = "<stdin>"
        else:
            name = path
            if os.path.isdir(path):
                raise RnngenError(f"{path}: is a directory, not a text file")
            with open(path, "rb") as fh:
                data = fh.read()
    except FileNotFoundError:
        raise RnngenError(f"{path}: no such file") from None
    except PermissionError:
        raise RnngenError(f"{path}: permission denied") from None
    except OSError as exc:
        raise RnngenError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode(data, name, encoding_errors)


def decode(data: bytes, name: str, encoding_errors: str = "strict") -> str:
    nul = data.find(b"\x00")
    if nul >= 0:
        raise RnngenError(f"{name}: looks like a binary file (NUL byte at offset {nul})")
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        raise RnngenError(f"{name}: not valid UTF-8 at byte offset {exc.start} "
                          "(re-encode it, or pass --encoding-errors replace)") from None
    if text.startswith("\ufeff"):
        text = text[1:]
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
    text = read_text(path, encoding_errors)
    if not text.strip():
        raise RnngenError(f"{path if path != '-' else '<stdin>'}: no text (the file is empty or only whitespace)")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
