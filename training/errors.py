"""Errors about input data that a user can act on: they name the file, the column and the row count."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `str()` is the message shown to the user (no stack trace)."""

    def __init__(
        self, file: str, message: str, column: str | None = None, bad_rows: int | None = None
    ) -> None:
        self.file = file
        self.column = column
        self.bad_rows = bad_rows
        parts = [file]
        if column is not None:
            parts.append(f"column {column!r}")
        text = ": ".join(parts) + f": {message}"
        if bad_rows is not None:
            text += f" ({bad_rows} bad rows)"
        super().__init__(text)
