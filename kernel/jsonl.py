"""JSONL files that survive crashes: read with line numbers in errors, append whole lines only."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import files
from .errors import ArenaError, write_error
from .files import too_long

MAX_JSONL_BYTES = 256 * 2**20  # read whole into memory
MAX_LINE_CHARS = 2**20  # one record: a prompt, an answer or a vote's conversation


def read_jsonl(path: Path, max_bytes: int = MAX_JSONL_BYTES,
               max_line_chars: int = MAX_LINE_CHARS) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a bad line raises naming file and line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(files.read_text(path, max_bytes).splitlines(), 1):
        if not line.strip():
            continue
        reason = too_long(len(line), max_line_chars)
        if reason:
            raise ArenaError(f"{path} line {number}: {reason}")
        try:
            obj = files.parse_json(line)
        except ValueError as exc:
            raise ArenaError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ArenaError(f"{path} line {number}: expected a JSON object")
        rows.append((number, obj))
    return rows


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file beside the target, then rename: readers never see half a file."""
    path = Path(path)
    if path.is_dir():
        raise ArenaError(f"{path} is a folder: give a file name")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from None
        raise


def load_done(path: Path) -> list[dict]:
    """Complete records of an earlier, possibly interrupted run; a torn last line is dropped.

    Any other line that is not a JSON object means the file is not one this program wrote: it is
    refused, never rewritten, so pointing the output at someone else's file loses nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise ArenaError(f"{path} is a folder: give a file name")
    if not path.is_file():
        return []
    lines = files.read_text(path, MAX_JSONL_BYTES).splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = files.parse_json(line)
        except ValueError:
            if number == len(lines):
                continue  # torn by a kill mid-write
            record = None
        if not isinstance(record, dict):
            raise ArenaError(f"{path} line {number} is not a record this program wrote: "
                             "choose another output file")
        records.append(record)
    if len(records) < len(lines):  # killed mid-write: redo that record
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return records


class JsonlAppender:
    """Appends one record per line and flushes it, so an interrupted run loses at most one line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ArenaError(f"{self.path} is a folder: give a file name")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def write(self, record: dict) -> None:
        try:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as exc:
            raise write_error(exc, self.path) from None

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass  # only after a failed write, which already said why

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
