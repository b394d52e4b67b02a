"""runc's control verbs over a created container: pause, resume, ps, events and stats.

Each takes the runtime's state directory (runc's ``--root``) and a container id, finds the
container's cgroup from its ``state.json`` (``cgroupsPath``, written at create) and
returns plain data shaped as runc's output: ``ps`` its pids (``runc ps --format json``),
``stats`` the ``data`` of ``runc events --stats``, ``events`` runc's event documents. No
caller outside the runtime builds a cgroup path: they call these.

Freezing works on cgroup v1 (the freezer controller's ``freezer.state``, used on the
hybrid layout as runc does) and v2 (``cgroup.freeze``, confirmed by ``cgroup.events``).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from cove.errors import NotFound, StateError, Unsupported
from cove.runtime.cgroups import Cgroups, Layout
from cove.sys.proc import proc_start_time, zombie


def _state(state_dir: str, cid: str) -> dict[str, Any]:
    if not cid or "/" in cid or cid.startswith("."):
        raise NotFound(f"container {cid!r} does not exist")
    path = os.path.join(state_dir, cid, "state.json")
    try:
        with open(path) as f:
            doc: dict[str, Any] = json.load(f)
    except FileNotFoundError as e:
        raise NotFound(f"container {cid} does not exist in the runtime") from e
    return doc


def cgroups_of(state_dir: str, cid: str, layout: Layout | None = None) -> Cgroups:
    """The container's cgroups, as recorded at create (``cove/<id>`` for older records)."""
    doc = _state(state_dir, cid)
    return Cgroups(str(doc.get("cgroupsPath") or f"cove/{cid}"), layout)


def _running(state_dir: str, cid: str) -> bool:
    doc = _state(state_dir, cid)
    pid = int(doc.get("pid") or 0)
    return pid > 0 and proc_start_time(pid) == doc.get("startTime") and not zombie(pid)


def _freeze(state_dir: str, cid: str, frozen: bool, layout: Layout | None) -> None:
    cg = cgroups_of(state_dir, cid, layout)
    if layout is None and not _running(state_dir, cid):
        # runc: "container not running" (a fake tree, given a layout, has no process)
        raise StateError(f"container {cid} is not running")
    try:
        cg.freeze(frozen)
    except OSError as e:
        if e.errno == errno.ENOTSUP:
            raise Unsupported(f"container {cid}: no freezer cgroup on this host") from e
        raise


def pause(state_dir: str, cid: str, *, layout: Layout | None = None) -> None:
    """``runc pause``: freeze every process of the container; returns once frozen."""
    _freeze(state_dir, cid, True, layout)


def resume(state_dir: str, cid: str, *, layout: Layout | None = None) -> None:
    """``runc resume``: thaw the container; returns once thawed."""
    _freeze(state_dir, cid, False, layout)


def freezer_state(cgroups: Cgroups) -> str:
    """``FROZEN`` or ``THAWED`` (v1 words for both hierarchies); ``""`` with no freezer."""
    dirs = cgroups.dirs()
    v1 = dirs.get("freezer") if not cgroups.layout.pure_v2 else None
    try:
        if v1:
            with open(os.path.join(v1, "freezer.state")) as f:
                return parse_freezer_state(f.read())
        if "" in dirs:
            with open(os.path.join(dirs[""], "cgroup.events")) as f:
                return "FROZEN" if flat_keyed(f.read()).get("frozen") == 1 else "THAWED"
    except FileNotFoundError:
        pass  # expected: a cgroup already removed, or a kernel without cgroup.freeze
    return ""


def parse_freezer_state(text: str) -> str:
    """v1 ``freezer.state``: FREEZING counts as not yet frozen, as runc reads it."""
    return "FROZEN" if text.strip() == "FROZEN" else "THAWED"


def paused(state_dir: str, cid: str, *, layout: Layout | None = None) -> bool:
    """Whether ``runc state`` would say ``paused``."""
    return freezer_state(cgroups_of(state_dir, cid, layout)) == "FROZEN"


def ps(state_dir: str, cid: str, *, layout: Layout | None = None) -> list[int]:
    """``runc ps --format json``: the host pids in the container's cgroups, sorted."""
    return cgroups_of(state_dir, cid, layout).pids()


def flat_keyed(text: str) -> dict[str, int]:
    """A cgroup "flat keyed" file (``cpu.stat``, ``memory.stat``, ``memory.events``,
    ``cgroup.events``): ``key value`` lines; values that are not numbers are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def stats_doc(raw: dict[str, int], pids_limit: int = 0) -> dict[str, Any]:
    """Raw counters (``Cgroups.stats()``) as the ``data`` of ``runc events --stats``
    (runc's types.Stats; the fields cove reads, zero where a controller is missing)."""
    return {
        "cpu": {"usage": {"total": raw.get("cpu_ns", 0)}},
        "memory": {"usage": {"usage": raw.get("mem_usage", 0), "limit": raw.get("mem_limit", 0)}},
        "pids": {"current": raw.get("pids", 0), "limit": pids_limit},
        "blkio": {
            "ioServiceBytesRecursive": [
                {"op": "Read", "value": raw.get("io_read", 0)},
                {"op": "Write", "value": raw.get("io_write", 0)},
            ]
        },
    }


def _pids_limit(cg: Cgroups) -> int:
    dirs = cg.dirs()
    d = dirs.get("") if cg.layout.pure_v2 else dirs.get("pids")
    if not d:
        return 0
    try:
        with open(os.path.join(d, "pids.max")) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0  # expected: no pids controller here
    return int(text) if text.isdigit() else 0  # "max": no limit, as runc reports 0


def stats(state_dir: str, cid: str, *, layout: Layout | None = None) -> dict[str, Any]:
    """``runc events --stats``'s ``data``: one sample of the container's counters."""
    cg = cgroups_of(state_dir, cid, layout)
    return stats_doc(cg.stats(), _pids_limit(cg))


def events(
    state_dir: str,
    cid: str,
    *,
    interval: float = 5.0,
    layout: Layout | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """``runc events``: a ``stats`` event every ``interval`` seconds, and an ``oom`` event
    when the kernel's OOM killer hits the container; ends when the container is gone."""
    cg = cgroups_of(state_dir, cid, layout)
    ooms = cg.oom_killed()
    while True:
        try:
            if layout is None and not _running(state_dir, cid):
                return
            data = stats(state_dir, cid, layout=layout)
        except NotFound:
            return
        yield {"type": "stats", "id": cid, "data": data}
        if not ooms and cg.oom_killed():
            ooms = True
            yield {"type": "oom", "id": cid}
        sleep(interval)


def oom_killed(state_dir: str, cid: str, *, layout: Layout | None = None) -> bool:
    """Whether the kernel's OOM killer killed a process of the container (runc's ``oom``
    event, read once): the monitor asks before it deletes the runtime state."""
    return cgroups_of(state_dir, cid, layout).oom_killed()


def destroy_cgroups(state_dir: str, cid: str, *, layout: Layout | None = None) -> None:
    """Kill what runs in the container's cgroups and remove them (``runc delete --force``'s
    cgroup half). A create killed before it wrote state.json left them at the default
    path ``cove/<id>``: that is where they are looked for then."""
    try:
        cg = cgroups_of(state_dir, cid, layout)
    except NotFound:
        cg = Cgroups(f"cove/{cid}", layout)
    cg.destroy()
