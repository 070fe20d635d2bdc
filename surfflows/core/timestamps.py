"""Time stamps stored on documents."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string (the format of every stored time stamp)."""
    return datetime.now(UTC).isoformat()
