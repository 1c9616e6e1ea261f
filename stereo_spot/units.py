"""Quantities as people read them."""

from __future__ import annotations


def format_bytes(size: float) -> str:
    """``1536`` → ``1.5 KB`` (binary multiples, as file managers show them)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
