"""Reading a user's text file: size-capped, UTF-8 checked, every problem one line naming the file.

Datasets, evaluation suites and prompt files all come through here, so a 10 GB file or a binary
one is refused before a byte of it is held in memory or parsed.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ArenaError


def read_text(path: str | Path, max_bytes: int, what: str = "file") -> str:
    """The file's text, without a leading BOM (spreadsheet exports add one; it is not content)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ArenaError(f"{path}: no such {what}")
        size = path.stat().st_size
        if size > max_bytes:
            raise ArenaError(f"{path}: the {what} is {megabytes(size)} MB, more than the limit of "
                             f"{megabytes(max_bytes)} MB; split it")
        raw = path.read_bytes()
    except OSError as exc:
        raise ArenaError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")  # plain utf-8, not utf-8-sig, so the offset counts a BOM too
    except UnicodeDecodeError as exc:
        raise ArenaError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return text.removeprefix("\ufeff")


def too_long(length: int, limit: int, unit: str = "characters") -> str:
    """The reason a line or row is refused: '' when it is within the limit."""
    return f"{length:,} {unit}, more than the {limit:,} allowed" if length > limit else ""


def megabytes(size: int) -> str:
    value = size / 2**20
    return f"{value:.1f}" if value >= 0.1 else f"{value:.2g}"  # tiny test limits must not read as 0.0


def parse_json(text: str | bytes) -> object:
    """json.loads, where JSON nested deeper than Python's stack is the JSONDecodeError it is, not a crash."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None
