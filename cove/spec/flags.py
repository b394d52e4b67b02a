"""Docker's run flags as data: pure parsers shared by every face (CLI, Engine API, cove-runc).

No I/O: a flag that needs the host (``--mount`` checks its bind source, ``--device`` stats its
node) is finished in ``cove.bundle``.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from cove.errors import InvalidSpec
from cove.spec import runtime as rt

SIZES = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str) -> int:
    t = text.strip().lower().removesuffix("b") or "0"
    unit = t[-1] if t[-1] in SIZES else "b"
    num = t[:-1] if t[-1] in SIZES else t
    try:
        value = int(float(num) * SIZES[unit])
    except ValueError as e:
        raise InvalidSpec(f"invalid {what} {text!r}") from e
    if value < 0:
        raise InvalidSpec(f"invalid {what} {text!r}")
    return value


def parse_mapping(text: str, what: str) -> rt.IDMapping:
    try:
        c, h, n = (int(x) for x in text.split(":"))
    except ValueError as e:
        raise InvalidSpec(f"invalid {what} {text!r}: want CONTAINER_ID:HOST_ID:SIZE") from e
    return rt.IDMapping(c, h, n)


@dataclass
class MountRequest:
    """One of -v, --mount, --tmpfs, --volumes-from or an image VOLUME, before resolution."""

    type: str  # bind | volume | tmpfs
    source: str  # host path, volume name, or "" for a new anonymous volume
    target: str
    readonly: bool = False
    options: list[str] = field(default_factory=list)


def parse_volume(text: str) -> MountRequest:
    """``-v``: HOST:CTR[:ro], NAME:CTR[:ro] or CTR (an anonymous volume), as Docker."""
    parts = text.split(":")
    if len(parts) == 1:
        if not text.startswith("/"):
            raise InvalidSpec(f"invalid volume {text!r}: the container path must be absolute")
        return MountRequest("volume", "", text)
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise InvalidSpec(f"invalid volume {text!r}: want HOST:CONTAINER[:ro|rw]")
    src, dest = parts[0], parts[1]
    mode = parts[2].split(",") if len(parts) == 3 else []
    if not dest.startswith("/"):
        raise InvalidSpec(f"invalid volume {text!r}: the container path must be absolute")
    bad = [m for m in mode if m not in ("ro", "rw", "z", "Z")]
    if bad:
        raise InvalidSpec(f"invalid volume {text!r}: unknown mode {bad[0]!r}")
    if src.startswith("/"):
        return MountRequest("bind", os.path.abspath(src), dest, "ro" in mode)
    if src.startswith("."):
        raise InvalidSpec(f"invalid volume {text!r}: a host path must be absolute")
    return MountRequest("volume", src, dest, "ro" in mode)


def parse_tmpfs(text: str) -> rt.Mount:
    dest, _, opts = text.partition(":")
    if not dest.startswith("/"):
        raise InvalidSpec(f"invalid tmpfs {text!r}: the path must be absolute")
    options = ["nosuid", "nodev", *(opts.split(",") if opts else ["mode=1777"])]
    return rt.Mount(dest, "tmpfs", "tmpfs", options)


def parse_ulimits(ulimits: list[str]) -> list[rt.Rlimit]:
    out = []
    for u in ulimits:
        name, _, values = u.partition("=")
        soft, _, hard = values.partition(":")
        try:
            s = int(soft)
            h = int(hard) if hard else s
        except ValueError as e:
            raise InvalidSpec(f"invalid ulimit {u!r}: want NAME=SOFT[:HARD]") from e
        out.append(rt.Rlimit("RLIMIT_" + name.upper(), h, s))
    return out


_DURATION = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in seconds; a bare number is seconds."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise InvalidSpec(f"invalid {what} {text!r}: want a duration such as 30s or 1m30s")
    return sum(float(n) * _DURATION[u] for n, u in parts)


def parse_restart(text: str) -> dict[str, Any]:
    """``--restart``: Docker's RestartPolicy document."""
    name, _, count = text.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure"):
        raise InvalidSpec(f"invalid restart policy {text!r}")
    if count and name != "on-failure":
        raise InvalidSpec(f"invalid restart policy {text!r}: only on-failure takes a count")
    try:
        n = int(count) if count else 0
    except ValueError as e:
        raise InvalidSpec(f"invalid restart policy {text!r}: bad count") from e
    if n < 0:
        raise InvalidSpec(f"invalid restart policy {text!r}: negative count")
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": n}


def parse_signal(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit():
        return int(t)
    name = t if t.startswith("SIG") else "SIG" + t
    try:
        return int(signal.Signals[name])
    except KeyError as e:
        raise InvalidSpec(f"invalid signal: {text}") from e
