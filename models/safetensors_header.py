"""Reading a safetensors file's header without loading a byte of its tensors, trusting nothing in it.

The header is JSON written by whoever made the file: it may be a list, a number, an entry that is
not an object, a shape of negative or boolean sizes, offsets that overlap or point past the end.
Each of those raises ArenaError with one line naming the tensor, so the adapter is listed as
failed with that reason, and PEFT (or safetensors' own loader) never sees the file. The rules are
the format's own: https://github.com/huggingface/safetensors#format
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from kernel.errors import ArenaError

# Bytes per element of each dtype the format names; sub-byte floats (F4, F6) are not in adapters.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "E8M0": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; `start`/`end` are offsets into the data after the header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of the file by name, each entry checked, and the data exactly covered by them."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ArenaError(f"{path.name} is truncated ({size} bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise ArenaError(f"{path.name} is truncated or not safetensors (header of {header_len} bytes)")
            text = handle.read(header_len)
    except OSError as exc:
        raise ArenaError(f"{path.name} cannot be read ({exc.strerror or exc})") from None
    header = _parse(text, path.name)
    entries = {name: _entry(name, meta, path.name) for name, meta in header.items()}
    _check_coverage(entries, size - 8 - header_len, path.name)
    return entries


def _parse(text: bytes, file_name: str) -> dict:
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise ArenaError(f"{file_name} has a corrupt header (not JSON)") from None
    if not isinstance(header, dict):
        raise ArenaError(f"{file_name}: the header is a JSON {type(header).__name__}, not an object of tensors")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ArenaError(f"{file_name}: __metadata__ must be an object of strings")
    return header


def _entry(name: str, meta: object, file_name: str) -> TensorEntry:
    where = f"{file_name}: tensor {name[:120]!r}"
    if not isinstance(meta, dict):
        raise ArenaError(f"{where} is a JSON {type(meta).__name__}, not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise ArenaError(f"{where} has unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or not all(_count(n) for n in shape):
        raise ArenaError(f"{where} has a bad shape {str(shape)[:60]} (a list of sizes >= 0)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(n) for n in offsets)
            and offsets[0] <= offsets[1]):
        raise ArenaError(f"{where} has bad data_offsets {str(offsets)[:60]} (a [start, end] pair, start <= end)")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise ArenaError(f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
                         f"but {dtype} of shape {shape} takes {expected}")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _count(value: object) -> bool:
    """A size or offset: an integer >= 0 (JSON true is not a number here, nor is 4.0)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_coverage(entries: dict[str, TensorEntry], data_len: int, file_name: str) -> None:
    """The tensors tile the data with no gap and no overlap, and the file holds all of it."""
    at = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != at:
            problem = "overlaps the tensor before it" if entry.start < at else f"leaves a gap before it at byte {at}"
            raise ArenaError(f"{file_name}: tensor {entry.name[:120]!r} {problem}")
        at = entry.end
    if at > data_len:
        raise ArenaError(f"{file_name} is truncated: {data_len} bytes of tensor data, the header needs {at}")
    if at < data_len:
        raise ArenaError(f"{file_name} has {data_len - at} bytes after its last tensor: not a safetensors file")
