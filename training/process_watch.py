"""Watching a trainer process from outside: if it died, why (its log's tail says).

Whether it is still the same live process is kernel.process's (the Evaluate tab's runs ask it too).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

LOG_TAIL_LINES = 40
DIED = "the training process died (killed or out of memory?); see the log"
ERROR_PATTERNS = (  # most telling first: our one-line errors, then the last line of a traceback
    re.compile(r"^error:", re.IGNORECASE),
    re.compile(r"^[\w.]*(Error|Exception)\b"),
    re.compile(r"No module named|CUDA out of memory|^Killed\b"),
)
LAUNCHER_NOISE = "CalledProcessError"  # accelerate re-raises after the trainer fails: it says nothing new


def one_line(text, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


def tail_lines(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> list[str]:
    """The last lines of a log without reading all of it; a progress bar's \\r redraws keep their last state."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = text.split("\n")[1 if size > max_bytes else 0:]  # the first row may be cut
    rows = [next((s for s in reversed(row.split("\r")) if s.strip()), "") for row in rows]
    while rows and not rows[-1].strip():
        rows.pop()
    return rows[-lines:]


def last_error_line(lines: list[str]) -> str | None:
    """The line that best says why a run failed: the last `error:` line, else the last exception line."""
    for pattern in ERROR_PATTERNS:
        for line in reversed(lines):
            if pattern.search(line.strip()) and LAUNCHER_NOISE not in line:
                return one_line(line.strip())
    return None


def died_reason(lines: list[str]) -> str:
    text = "\n".join(lines)
    if "CUDA out of memory" in text or "OutOfMemoryError" in text:
        return f"{DIED} — it shows CUDA out of memory"
    if re.search(r"^Killed\b|SIGKILL", text, re.MULTILINE):
        return f"{DIED} — it shows the process was killed"
    error = last_error_line(lines)
    return f"{DIED} — last error: {error}" if error else DIED
