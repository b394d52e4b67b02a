"""Reading Docker json-file logs: ``--tail``, ``--since``/``--until``, ``--follow`` across
rotation."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from cove.errors import InvalidSpec
from cove.state import Record, Status


def parse_when(text: str | None, what: str) -> float | None:
    """A Docker time filter: RFC 3339, a unix timestamp, or a duration back from now."""
    if not text:
        return None
    if re.fullmatch(r"(\d+(?:\.\d+)?(ns|us|ms|s|m|h))+", text):
        from cove.spec.flags import parse_duration

        return time.time() - parse_duration(text, what)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = text.replace("Z", "+00:00")
        # Python's fromisoformat wants at most microseconds
        t = re.sub(r"(\.\d{6})\d+", r"\1", t)
        dt = datetime.fromisoformat(t)
        if dt.tzinfo is None:
            dt = dt.astimezone()
        return dt.timestamp()
    except ValueError as e:
        raise InvalidSpec(f"invalid value for {what}: {text!r}") from e


def _when(stamp: str) -> float:
    t = re.sub(r"(\.\d{6})\d+", r"\1", stamp.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        return 0.0


def _files(path: str) -> list[str]:
    rotated = []
    n = 1
    while os.path.exists(f"{path}.{n}"):
        rotated.append(f"{path}.{n}")
        n += 1
    return [*reversed(rotated), path]


def _parse(line: bytes) -> tuple[str, str, bytes] | None:
    try:
        doc = json.loads(line)
        return doc["stream"], doc["time"], doc["log"].encode()
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash or a rotation in progress


def read_logs(
    ce: Any,
    rec: Record,
    *,
    follow: bool = False,
    tail: str = "all",
    since: str | None = None,
    until: str | None = None,
) -> Iterator[tuple[str, str, bytes]]:
    """(stream, timestamp, text) of each log entry."""
    if tail not in ("all", "") and not tail.lstrip("-").isdigit():
        raise InvalidSpec(f"invalid value for --tail: {tail!r}")
    n_tail = None if tail in ("all", "") or int(tail) < 0 else int(tail)
    t_since = parse_when(since, "--since")
    t_until = parse_when(until, "--until")
    path = ce.log_path(rec.id)

    def wanted(entry: tuple[str, str, bytes]) -> bool:
        t = _when(entry[1]) if t_since is not None or t_until is not None else 0.0
        if t_since is not None and t < t_since:
            return False
        return not (t_until is not None and t > t_until)

    entries: deque[tuple[str, str, bytes]] = deque(maxlen=n_tail if n_tail else None)
    pos, inode = 0, 0
    for f in _files(path):
        try:
            with open(f, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break
                    e = _parse(line)
                    if e and wanted(e):
                        entries.append(e)
                if f == path:
                    pos = fh.tell()
                    inode = os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            continue
    if n_tail == 0:
        entries.clear()
    yield from entries
    if not follow:
        return
    partial = b""
    while True:
        try:
            st = os.stat(path)
            if st.st_ino != inode or st.st_size < pos:  # rotated or truncated
                inode, pos, partial = st.st_ino, 0, b""
            with open(path, "rb") as fh:
                fh.seek(pos)
                data = fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            data = b""
        if data:
            chunks = (partial + data).split(b"\n")
            partial = chunks.pop()
            for line in chunks:
                e = _parse(line)
                if e and wanted(e):
                    yield e
            continue
        if t_until is not None and time.time() > t_until:
            return
        try:
            fresh = ce.get(rec.id)
        except Exception:
            return
        if fresh.status not in (Status.RUNNING, Status.PAUSED, Status.RESTARTING):
            if fresh.status != Status.CREATED or not fresh.op:
                # one last read: the monitor flushes before it records the exit
                rest = b""
                with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
                    fh.seek(pos)
                    rest = fh.read()
                for line in (partial + rest).split(b"\n"):
                    e = _parse(line)
                    if e and wanted(e):
                        yield e
                return
        time.sleep(0.1)
