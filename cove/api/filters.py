"""The prune endpoints' filters, as dockerd reads them: ``until`` (a Unix time, an RFC 3339
date, or a Go duration back from now: objects created before it) and ``label`` /
``label!`` (``key`` or ``key=value``: all must hold / none may)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from cove.api.server import ApiError


def _until(text: str) -> float:
    """dockerd's timestamp forms: seconds[.nanos] since the epoch, a date, or a duration."""
    from cove.errors import InvalidSpec
    from cove.spec.flags import parse_duration

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text, "until")
    except InvalidSpec:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ApiError(400, f"failed to parse value as time or duration: {text!r}") from e
    if when.tzinfo is None:  # a date without a zone is the daemon's local time, as Go's
        return time.mktime(when.timetuple()) + when.microsecond / 1e6
    return when.timestamp()


def created_time(text: str) -> float:
    """An RFC 3339 ``Created`` (nanoseconds cut to Python's micro) as a Unix time; 0 if
    it is not one."""
    import re

    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _label_holds(labels: dict[str, str], want: str) -> bool:
    key, eq, value = want.partition("=")
    return key in labels and (not eq or labels[key] == value)


def prune_filter(
    filters: dict[str, list[str]], allowed: tuple[str, ...] = ("until", "label", "label!")
) -> Callable[[float, dict[str, str]], bool]:
    """A predicate over (created, labels): true for what the prune may remove. An unknown
    filter is a 400, as dockerd's ``invalid filter``."""
    for key in filters:
        if key not in allowed:
            raise ApiError(400, f"invalid filter '{key}'")
    untils = [_until(v) for v in filters.get("until", [])]
    want = filters.get("label", [])
    unwanted = filters.get("label!", [])

    def accepts(created: float, labels: dict[str, str]) -> bool:
        if any(created >= u for u in untils):
            return False
        if not all(_label_holds(labels, w) for w in want):
            return False
        return not any(_label_holds(labels, u) for u in unwanted)

    return accepts
