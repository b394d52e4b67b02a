"""The events log: what ``docker events`` reports, one JSON line per event in
``<root>/events.log``, already in the Engine API's message shape.

Written by the verbs where their transition is recorded (the container lifecycle, image,
network and volume verbs) and read by ``cove serve``'s ``GET /events``. Each line is one
``write(2)`` to an ``O_APPEND`` file, so concurrent writers never interleave. It is kept
short: once past ``MAX_BYTES`` the writer that notices keeps the newer half (under a lock,
through a rename). Recording an event never fails a verb.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Any

NAME = "events.log"
MAX_BYTES = 1 << 20


def path(root: str) -> str:
    return os.path.join(root, NAME)


def emit(root: str, kind: str, action: str, actor: str, attrs: dict[str, str] | None = None,
         ) -> None:  # fmt: skip
    ns = time.time_ns()
    doc: dict[str, Any] = {}
    if kind in ("container", "image"):
        doc.update(status=action, id=actor)
        if kind == "container" and attrs and "image" in attrs:
            doc["from"] = attrs["image"]
    doc.update(Type=kind, Action=action, Actor={"ID": actor, "Attributes": dict(attrs or {})},
               scope="local", time=ns // 1_000_000_000, timeNano=ns)  # fmt: skip
    line = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    with contextlib.suppress(OSError):
        # invariant: 0600 under the root (events name containers and images: root's alone)
        fd = os.open(path(root), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > MAX_BYTES:
            _trim(root)


def _trim(root: str) -> None:
    lock = os.open(path(root) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path(root), "rb") as f:
            data = f.read()
        if len(data) <= MAX_BYTES:
            return  # another writer trimmed it
        keep = data[len(data) // 2 :]
        keep = keep[keep.find(b"\n") + 1 :]
        tmp = path(root) + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keep)
        os.rename(tmp, path(root))
    finally:
        os.close(lock)


def read(root: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events from byte ``offset`` on, and the offset after the last whole line (a trimmed
    log starts again at 0: the caller sees the offset shrink)."""
    try:
        with open(path(root), "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    out = []
    for raw in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(raw))
    return out, offset + end
