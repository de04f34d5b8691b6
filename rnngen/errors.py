"""The one exception type users see: the CLI prints it as a single line and exits non-zero.

It is defined in :mod:`rnngen.config`, the bottom of the package, so that every module can
raise it, this one included; ``rnngen.errors.RnngenError`` is its public name."""

from .config import RnngenError

__all__ = ["RnngenError"]
