"""The one exception type users see: the CLI prints it as a single line and exits non-zero."""


class RnngenError(Exception):
    """A problem with the user's input, options or files (never a bug in rnngen)."""
