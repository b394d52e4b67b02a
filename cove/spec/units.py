"""Sizes as Docker prints them: pure, shared by the CLI's tables and ``docker stats`` rows."""

from __future__ import annotations


def human_size(n: float) -> str:
    """Docker's HumanSizeWithPrecision(n, 3): decimal units."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}PB"
