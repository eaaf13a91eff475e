"""Reading training files: JSON arrays, JSONL and CSV/TSV into numbered rows, UTF-8 checked.

A broken JSONL line becomes a `BadRow` in its place rather than failing the file, so the report can
name it and the other rows still train.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from kernel import files
from kernel.errors import ArenaError

# A dataset is held in memory whole, and each parsed row takes several times its bytes there.
MAX_DATASET_BYTES = 256 * 2**20
JSON_CELLS = ("conversations", "messages", "history", "tools")  # CSV columns that may hold JSON text


class BadRow(Exception):
    """A row that cannot be trained on: `kind` is counted in the report, `detail` names the field."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


def read_rows(path: Path) -> list[tuple[int, object]]:
    """(row number, parsed row) for every row; unparseable JSONL lines come back as BadRow values."""
    text = read_text(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return read_csv(text, path)
    if text.lstrip().startswith("["):
        try:
            rows = files.parse_json(text)
        except ValueError as exc:
            raise ArenaError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return list(enumerate(rows, 1))
    rows = read_jsonl_rows(text)
    if all(isinstance(row, BadRow) for _, row in rows):  # not JSONL at all: say so once, not per line
        number, bad = rows[0]
        raise ArenaError(f"{path} line {number}: not valid JSON ({bad.detail}); expected a JSON array or JSONL")
    return rows


def read_text(path: Path) -> str:
    text = files.read_text(path, MAX_DATASET_BYTES)
    if not text.strip():
        raise ArenaError(f"{path}: the file is empty")
    return text


def read_jsonl_rows(text: str) -> list[tuple[int, object]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, files.parse_json(line)))
        except ValueError as exc:  # one broken line should not cost the other rows
            rows.append((number, BadRow("not valid JSON", exc.msg)))
    return rows


def read_csv(text: str, path: Path) -> list[tuple[int, object]]:
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    if not reader.fieldnames:
        raise ArenaError(f"{path}: the CSV file has no header row")
    return [(number, csv_row(record)) for number, record in enumerate(reader, 1)]


def csv_row(record: dict) -> dict:
    """CSV cells are strings: empty cells mean absent, JSON columns are parsed when they hold JSON."""
    row = {}
    for key, value in record.items():
        if key is None or value is None or value == "":
            continue  # extra cells without a header, short rows, empty cells
        key = key.strip()
        if key in JSON_CELLS and value.lstrip()[:1] in ("[", "{"):
            try:
                value = files.parse_json(value)
            except ValueError:
                pass  # left as text: conversion then reports the wrong type for this field
        row[key] = value
    return row
