"""The app's one file reader and writer: JSON, JSONL and CSV read with line or row numbers in every error,
writes that readers never see half done, appends that lose at most the line being written.

Two ways to meet a bad JSONL line: `read_jsonl` stops at it (prompt files, Arena exports: the user fixes
the file), `read_rows` keeps it as a `BadRow` in its place (training data, suites: one broken line should
not cost the other rows). Files this app appends to while another process reads them (metrics, answers)
are read with `complete_records`, which skips a line torn by a kill.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from .errors import ArenaError, write_error

# Files are read whole into memory, and each parsed row takes several times its bytes there: a 10 GB or a
# binary file is refused before a byte of it is held or parsed.
MAX_TEXT_BYTES = 256 * 2**20
MAX_LINE_CHARS = 2**20  # one record: a prompt, an answer, a vote's conversation, a training row


class BadRow(Exception):
    """A row that cannot be used: `kind` is what went wrong (counted in reports), `detail` names the field."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


# --- reading -------------------------------------------------------------------------------------------------

def read_text(path: str | Path, what: str = "file", empty_ok: bool = True, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file (a BOM from spreadsheet exports is dropped) no larger than max_bytes, or an error
    naming it."""
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
    try:  # plain utf-8, not utf-8-sig, so the byte offset counts a BOM too
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ArenaError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if not empty_ok and not text.strip():
        raise ArenaError(f"{path}: the file is empty")
    return text


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


def json_lines(text: str, max_line_chars: int | None = None) -> list[tuple[int, object]]:
    """(line number, value) for every non-blank line; a line that is not JSON, or longer than max_line_chars
    (when given), is a BadRow in its place."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        reason = too_long(len(line), max_line_chars) if max_line_chars else ""
        if reason:
            rows.append((number, BadRow("line too long", reason)))
            continue
        try:
            rows.append((number, parse_json(line)))
        except ValueError as exc:
            rows.append((number, BadRow("not valid JSON", exc.msg)))
    return rows


def parse_jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, object) per non-blank line; the first bad line raises, naming file and line."""
    rows = []
    for number, value in json_lines(text, MAX_LINE_CHARS):
        if isinstance(value, BadRow):
            reason = f"not valid JSON ({value.detail})" if value.kind == "not valid JSON" else value.detail
            raise ArenaError(f"{path} line {number}: {reason}")
        if not isinstance(value, dict):
            raise ArenaError(f"{path} line {number}: expected a JSON object")
        rows.append((number, value))
    return rows


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; a bad line raises naming file and line."""
    return parse_jsonl(Path(path), read_text(path))


def parse_json_array(path: Path, text: str) -> list:
    try:
        values = parse_json(text)
    except ValueError as exc:
        raise ArenaError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(values, list):
        raise ArenaError(f"{path}: expected a JSON array")
    return values


def read_rows(path: str | Path, json_columns: tuple[str, ...] = ()) -> list[tuple[int, object]]:
    """(row number, row) of a JSON array, JSONL or CSV/TSV file. Rows are numbered from 1 (JSONL: by line);
    a JSONL line that is not JSON is a BadRow in its place. CSV cells named in json_columns are parsed
    when they hold JSON."""
    path = Path(path)
    text = read_text(path, empty_ok=False)
    if path.suffix.lower() in (".csv", ".tsv"):
        return read_csv(text, path, json_columns)
    if text.lstrip().startswith("["):
        return list(enumerate(parse_json_array(path, text), 1))
    rows = json_lines(text)
    if all(isinstance(row, BadRow) for _, row in rows):  # not JSONL at all: say so once, not per line
        number, bad = rows[0]
        raise ArenaError(f"{path} line {number}: not valid JSON ({bad.detail}); expected a JSON array or JSONL")
    return rows


def read_csv(text: str, path: Path, json_columns: tuple[str, ...]) -> list[tuple[int, object]]:
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    if not reader.fieldnames:
        raise ArenaError(f"{path}: the CSV file has no header row")
    return [(number, csv_row(record, json_columns)) for number, record in enumerate(reader, 1)]


def csv_row(record: dict, json_columns: tuple[str, ...]) -> dict:
    """CSV cells are strings: empty cells mean absent, JSON columns are parsed when they hold JSON."""
    row = {}
    for key, value in record.items():
        if key is None or value is None or value == "":
            continue  # extra cells without a header, short rows, empty cells
        key = key.strip()
        if key in json_columns and value.lstrip()[:1] in ("[", "{"):
            try:
                value = parse_json(value)
            except ValueError:
                pass  # left as text: the caller then reports the wrong type for this field
        row[key] = value
    return row


def complete_records(path: str | Path) -> tuple[list[dict], bool]:
    """(every complete record, whether a torn line was skipped) of a JSONL file this app appends to.
    A missing file has none; a line still being written, or torn by a kill, is skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], False
    records, torn = [], False
    for _, value in json_lines(text):
        if isinstance(value, dict):
            records.append(value)
        else:
            torn = True
    return records, torn


def load_done(path: str | Path) -> list[dict]:
    """Complete records of an earlier, possibly interrupted run; a torn last line is dropped from the file.

    Any other line that is not a JSON object means the file is not one this program wrote: it is
    refused, never rewritten, so pointing the output at someone else's file loses nothing.
    """
    path = Path(path)
    refuse_folder(path)
    if not path.is_file():
        return []
    lines = read_text(path).splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = parse_json(line)
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


# --- writing -------------------------------------------------------------------------------------------------

def refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise ArenaError(f"{path} is a folder: give a file name")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temp file beside the target, then rename: readers never see half a file, and a full disk
    leaves the old file as it was."""
    path = Path(path)
    refuse_folder(path)
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


def append_record(path: str | Path, record: dict) -> None:
    """Append one record as one whole line, for a file another process reads while this one writes."""
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()


class JsonlAppender:
    """Appends one record per line and flushes it, so an interrupted run loses at most one line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        refuse_folder(self.path)
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
