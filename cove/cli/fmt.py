"""Output formatting shared by the CLI handlers: tables, sizes, ages, ``--format``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cove.errors import CoveError
from cove.spec.units import human_duration as human_duration  # re-exported, as human_size
from cove.spec.units import human_size as human_size  # re-exported: the CLI's tables use it

if TYPE_CHECKING:  # imported when a --format is given: off the start path (issue 20)
    from cove.spec.gotemplate import Template


def parse_time(text: str) -> float | None:
    import re
    from datetime import datetime

    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
        if not m:
            return None
        return datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00"))).timestamp()


def ago(text: str) -> str:
    t = parse_time(text)
    if t is None:
        return "N/A"
    return human_duration(time.time() - t) + " ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as Docker's tabwriter (minwidth 10, padding 3) prints them."""
    return tabwrite(["\t".join(r) for r in [headers, *rows]])


def tabwrite(lines: Sequence[str]) -> str:
    """Go's text/tabwriter as Docker configures it (minwidth 10, tabwidth 1, padding 3,
    spaces): a tab-terminated cell is padded to its column's widest cell plus 3, at least
    10; a line's last cell is not padded. Trailing blanks are dropped."""
    split = [ln.split("\t") for ln in lines]
    widths: list[int] = []
    for cells in split:
        for i, c in enumerate(cells[:-1]):
            if i == len(widths):
                widths.append(0)
            widths[i] = max(widths[i], len(c))
    out = []
    for cells in split:
        padded = [c.ljust(max(widths[i] + 3, 10)) for i, c in enumerate(cells[:-1])]
        out.append(("".join(padded) + cells[-1]).rstrip())
    return "\n".join(out)


def _template(source: str, exit_code: int = 1) -> Template:
    """Parse a ``--format`` template; a bad one ends the command as Docker's CLI does: one
    ``template parsing error: ...`` line and ``exit_code`` (64 for inspect, else 1)."""
    from cove.spec import gotemplate

    try:
        return gotemplate.parse(source)
    except gotemplate.TemplateError as e:
        sys.stderr.write(f"template parsing error: {e}\n")
        raise SystemExit(exit_code) from e


def _execute(tmpl: Template, obj: Any, funcs: dict[str, Callable[..., Any]] | None = None) -> str:
    from cove.spec import gotemplate

    try:
        return tmpl.execute(obj, funcs)
    except gotemplate.TemplateError as e:
        sys.stderr.write(f"template parsing error: {e}\n")
        raise SystemExit(1) from e


def render(template: str, obj: dict[str, Any]) -> str:
    """One object through a Go template as ``inspect -f`` does (no ``\\t`` rewriting:
    Docker's inspect passes the template to text/template unchanged)."""
    return _execute(_template(template, 64), obj)


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
    "Scope": "SCOPE",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
    "Mountpoint": "MOUNTPOINT",
    "IPv6": "IPV6",
    "Internal": "INTERNAL",
    "CreatedBy": "CREATED BY",
    "Comment": "COMMENT",
    "Container": "CONTAINER",
    "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT",
    "MemPerc": "MEM %",
    "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O",
    "PIDs": "PIDS",
}

# where a list verb titles a field differently from ``ps`` (Docker's per-kind contexts)
KIND_HEADERS: dict[str, dict[str, str]] = {
    "container": {},
    "image": {"ID": "IMAGE ID"},
    "history": {"ID": "IMAGE", "CreatedSince": "CREATED"},
    "network": {"ID": "NETWORK ID"},
    "volume": {"Name": "VOLUME NAME"},
    "stats": {},
}


def format_rows(
    fmt: str | None,
    headers: Sequence[str],
    objs: Sequence[dict[str, Any]],
    to_row: Callable[[dict[str, Any]], Sequence[str]],
    kind: str = "container",
) -> str:
    """Render objects as Docker's list verbs do: the default table (no format or ``table``),
    JSON lines (``json``), or a Go template per object; ``table TEMPLATE`` puts a header
    row of Docker's column titles over tab-aligned columns. As Docker's formatter, the
    template loses ``table`` and surrounding spaces and has ``\\t``/``\\n`` made real."""
    if not fmt or fmt == "table":
        return table(headers, [to_row(o) for o in objs])
    is_table = fmt.startswith("table")
    source = "{{json .}}" if fmt == "json" else fmt[len("table") :] if is_table else fmt
    source = source.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    tmpl = _template(source)
    body = [_execute(tmpl, o) for o in objs]
    if not is_table:
        return "\n".join(body)
    titles = {**HEADERS, **KIND_HEADERS[kind]}
    head = {f: titles.get(f, f.upper()) for f in tmpl.fields()}
    from cove.spec.gotemplate import HEADER_FUNCS

    header = _execute(tmpl, head, HEADER_FUNCS)
    return tabwrite("\n".join([header, *body]).split("\n"))


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
        tmpl = _template(template, 64)
        for o in out:
            print(_execute(tmpl, o))
    else:
        import json

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
