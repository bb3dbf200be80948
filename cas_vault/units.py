"""Sizes for people: the one place a byte count becomes ``191.8 KiB``."""

from __future__ import annotations

__all__ = ["human_bytes"]


def human_bytes(n: int) -> str:
    """Format a byte count for people: ``191.8 KiB``.

    Args:
        n: a number of bytes.

    Returns:
        Whole bytes below 1 KiB, else one decimal in KiB, MiB, GiB or TiB (powers of 1024).
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
