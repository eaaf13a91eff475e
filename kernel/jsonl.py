"""JSONL files that survive crashes: read with line numbers in errors, append whole lines only."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import ArenaError


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a bad line raises naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ArenaError(f"{path}: no such file")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ArenaError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ArenaError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ArenaError(f"{path} line {number}: expected a JSON object")
        rows.append((number, obj))
    return rows


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file beside the target, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_done(path: Path) -> list[dict]:
    """Complete records of an earlier, possibly interrupted run; a torn last line is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records, torn = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            torn = True  # killed mid-write: redo that record
    if torn:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


class JsonlAppender:
    """Appends one record per line and flushes it, so an interrupted run loses at most one line."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
