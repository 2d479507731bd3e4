"""The errors meant for users: bad data (file, line, column) and missing models. Ground layer."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset file that cannot be used, with where and why.

    ``str(err)`` is the message shown to users in the CLI and the app, e.g.
    ``interactions.csv, line 7, column 'timestamp': expected a number, got 'yesterday'``.
    ``column`` is a header name (str) or, for fields beyond the header, a 1-based position (int).
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: str | int | None = None):
        self.file, self.line, self.column, self.reason = file, line, column, message
        if isinstance(column, int):
            col = f"column {column}"
        else:
            col = f"column '{column}'" if column is not None else None
        where = ", ".join(p for p in (file, f"line {line}" if line is not None else None, col) if p)
        super().__init__(f"{where}: {message}" if where else message)


class ModelNotFound(RuntimeError):
    """A model or adapter that is not on disk; the message says how to get it."""
