"""Numbers as people read them: sizes, ages and durations in tables and summaries.

Used by the CLI and by plan rendering. Sizes use decimal units, as ``ollama
list`` shows them ("4.7 GB"). Pure.
"""

from __future__ import annotations


def size_str(size: int) -> str:
    """``1500000`` -> ``1.5 MB``."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def ago_str(seconds: float) -> str:
    """How long ago, the way ``ollama list`` says it: ``5 minutes ago``."""
    if seconds < 1:
        return "Less than a second ago"
    for unit, scale in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                        ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):  # fmt: skip
        if seconds >= scale:
            count = int(seconds // scale)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "Less than a second ago"


def duration_str(seconds: float) -> str:
    """An elapsed time: ``3.1s``, ``4m12s``, ``2h05m``, ``3d04h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
