"""Output formatting shared by the CLI handlers: tables, sizes, ages, ``--format``."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from cove.errors import CoveError
from cove.spec.units import human_size as human_size  # re-exported: the CLI's tables use it


def parse_time(text: str) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
        if not m:
            return None
        return datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00"))).timestamp()


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def ago(text: str) -> str:
    t = parse_time(text)
    if t is None:
        return "N/A"
    return human_duration(time.time() - t) + " ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded with at least three spaces, as Docker's tabwriter prints."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


_FIELD = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z_][A-Za-z0-9_.]*)?\s*\}\}")


def render(template: str, obj: dict[str, Any]) -> str:
    """The subset of Go templates people use with ``--format``: ``{{.Field}}``, ``{{json .}}``."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")

    def sub(m: re.Match[str]) -> str:
        value: Any = obj
        for part in (m.group(2) or "").split("."):
            if part:
                value = value.get(part, "") if isinstance(value, dict) else ""
        if m.group(1):
            return json.dumps(value)
        return str(value) if not isinstance(value, (dict, list)) else json.dumps(value)

    return _FIELD.sub(sub, template)


# Docker's column titles for the fields people put in ``table`` templates
HEADERS = {
    "ID": "CONTAINER ID",
    "RunningFor": "CREATED",
    "CreatedAt": "CREATED AT",
    "Names": "NAMES",
    "Isolation": "ISOLATION",
    "Image": "IMAGE",
    "Status": "STATUS",
    "Ports": "PORTS",
    "Command": "COMMAND",
    "State": "STATE",
    "Size": "SIZE",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "Name": "NAME",
    "Driver": "DRIVER",
}


def format_rows(
    fmt: str | None,
    headers: Sequence[str],
    objs: Sequence[dict[str, Any]],
    to_row: Callable[[dict[str, Any]], Sequence[str]],
) -> str:
    """Render objects as a table (default), JSON lines (``json``) or a Go-style template;
    ``table TEMPLATE`` aligns its tab-separated cells under Docker's column titles."""
    if not fmt or fmt == "table":
        return table(headers, [to_row(o) for o in objs])
    if fmt == "json":
        return "\n".join(json.dumps(o) for o in objs)
    if fmt.startswith("table "):
        cells = fmt[len("table ") :].replace("\\t", "\t").split("\t")
        head = [
            re.sub(r"\{\{\s*\.([A-Za-z_]+)\s*\}\}",
                   lambda m: HEADERS.get(m.group(1), m.group(1).upper()), c)
            for c in cells
        ]  # fmt: skip
        return table(head, [[render(c, o) for c in cells] for o in objs])
    return "\n".join(render(fmt, o) for o in objs)


def ago_ts(t: float) -> str:
    return human_duration(time.time() - t) + " ago"


def inspect_each(
    refs: Sequence[str], get: Callable[[str], dict[str, Any]], template: str | None
) -> int:
    """``inspect``'s shape for every kind: a JSON array (or a template per object) of what
    was found, one ``Error:`` line per reference that was not; exit 1 if any was not."""
    from cove.errors import CoveError

    out, rc = [], 0
    for ref in refs:
        try:
            out.append(get(ref))
        except CoveError as e:
            sys.stderr.write(f"Error: {e}\n")
            rc = 1
    if template:
        for o in out:
            print(render(template, o))
    else:
        print(json.dumps(out, indent=4))
    return rc


def each(refs: list[str], fn: Callable[[str], Any], echo: bool = True) -> int:
    """Run a verb on every named object as Docker does: echo each name done, one
    ``Error:`` line for each that fails, and 1 if any failed."""
    rc = 0
    for ref in refs:
        try:
            fn(ref)
            if echo:
                print(ref)
        except CoveError as e:
            sys.stderr.write(f"Error: {e}\n")
            rc = 1
    return rc
