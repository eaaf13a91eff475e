"""The one way the app writes a moment into its records: UTC, ISO 8601, to the millisecond."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
