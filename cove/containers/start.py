"""``docker start``: the hand-off to a new monitor (a fresh lean interpreter), which waits
for the launcher's go before the container's process starts.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from cove.containers import isolation, lifecycle, platforms
from cove.containers.lifecycle import crash_point, self_ids
from cove.containers.record import config_of
from cove.containers.startup import prefork_start
from cove.errors import Conflict, StateError
from cove.state import OP_START, Record, Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def start(ce: ContainerEngine, ref: str, *, attach_fd: int = -1, op: str = OP_START) -> Record:
    """Start a created or exited container (Docker's rules) through its driver; with ``op``
    other than OP_START the caller holds that op marker (``run -d`` holds its create's)."""
    rec = ce.get(ref) if op == OP_START else ce.store.get(ref)
    drv = isolation.driver(rec, "start")
    if op == OP_START:
        if rec.status == Status.PAUSED:
            raise Conflict(f"cannot start a paused container {rec.name}, try unpause instead")
        if rec.status in (Status.RUNNING, Status.RESTARTING):
            return rec  # Docker: starting a running container is a no-op
        if not rec.status.can_start():
            raise StateError(f"container {rec.name} is {rec.status}: cannot start it")
        me, me_start = self_ids()
        lifecycle.begin_start(ce.store, rec, me, me_start)
    return drv.start(ce, rec, attach_fd=attach_fd, op=op)


def hand_off(ce: ContainerEngine, rec: Record, *, attach_fd: int = -1) -> Record:
    """The namespaces driver's start: hand the container to a new monitor and wait until
    its process runs.

    ``attach_fd`` (one end of a socketpair) is registered with the monitor before the
    process starts, so an attached client sees all of its output.
    """
    from cove.runtime.api import ContainerStartError, proc_start_time

    cfg = config_of(rec)
    platforms.ensure_registered(ce.root, lambda: ce.engine.images.blobs.read(rec.image_id))
    hc = cfg.healthcheck
    args = {
        "root": ce.root,
        "cid": rec.id,
        "log": ce.log_path(rec.id),
        "max_size": str(cfg.log_max_size),
        "max_file": str(cfg.log_max_file),
        "tty": "1" if cfg.tty else "0",
        "stdin": "1" if cfg.open_stdin else "0",
        "stdin_once": "1" if cfg.stdin_once else "0",
        "health_interval": str(hc.interval if hc else 0),
    }
    go_r, go_w = os.pipe()
    st_r, st_w = os.pipe()
    args["status"] = str(st_w)
    if attach_fd >= 0:
        args["attach"] = str(attach_fd)
    pid = os.fork()
    if pid == 0:  # the intermediate: a new session, then the monitor, then gone
        try:
            os.setsid()
            mpid = os.fork()
            if mpid == 0:
                _become_monitor(ce, rec, args, go_r, (go_w, st_r))
            os.write(st_w, f"{mpid}\n".encode())
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(st_w)
    os.waitpid(pid, 0)
    reader = os.fdopen(st_r, "rb")
    with reader:
        try:
            line = reader.readline()
            mpid = int(line)
            mstart = proc_start_time(mpid) or 0
            crash_point("start-before-handoff")
            lifecycle.hand_off(ce.store, rec.id, mpid, mstart)
            crash_point("start-handoff")
            os.write(go_w, b"g")
        finally:
            os.close(go_w)
        crash_point("start-go")
        result = reader.readline().decode().strip()
    if result != "ok":
        code, _, msg = result.partition(" ")
        fresh = ce.store.get(rec.id)
        if not result:
            ce.reconcile(fresh)
            raise ContainerStartError(f"container {rec.name}: its monitor exited early")
        raise ContainerStartError(msg or "start failed", int(code) if code.isdigit() else 125)
    return ce.store.get(rec.id)


def _become_monitor(
    ce: ContainerEngine, rec: Record, args: dict[str, str], go_r: int, close: tuple[int, int]
) -> None:
    """In the monitor-to-be: fork the first start's helper while this process still has
    cove imported (it waits for the launcher's go), then exec the lean monitor."""
    try:
        from cove.sys import syscalls as sc

        for fd in close:
            os.close(fd)
        # invariant: the container's pid 1 is reparented to us when the helper that made
        # it exits; the flag survives execve
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        keep = [int(args["status"]), int(args.get("attach", "-1"))]
        first = prefork_start(ce.root, rec.id, go_r, args["tty"] == "1", args["stdin"] == "1", keep)
        os.close(go_r)
        args["first"] = ",".join(str(x) for x in first)
        wanted = sorted({0, 1, 2, *(fd for fd in (*keep, *first[:4]) if fd >= 0)})
        for fd in wanted[3:]:
            os.set_inheritable(fd, True)
        # nothing else of the launcher's (its caller's pipes) may live as long as the monitor
        prev = -1
        for fd in [*wanted, 1 << 20]:
            if fd > prev + 1:  # closerange(a, a) would close everything from a on
                os.closerange(prev + 1, fd)
            prev = fd
        os.execv(sys.executable, _monitor_argv(args))
    except BaseException as e:
        os.write(2, f"Error: cannot start the monitor: {e}\n".encode())
    os._exit(1)


def _monitor_argv(args: dict[str, str]) -> list[str]:
    """A fresh interpreter without site (-I -S): the monitor's memory is every container's
    cost. Our sys.path is handed over so it finds cove and, in its helpers, the deps.

    The command line names ``cove.monitor`` (a shim over ``cove.containers.monitor``), as
    it always has: ps/pgrep users find monitors by it."""
    import cove

    here = os.path.dirname(os.path.dirname(os.path.abspath(cove.__file__)))
    path = [here, *(p for p in sys.path if p and os.path.isdir(p) and p != here)]
    code = f"import sys; sys.path[:0] = {path!r}; from cove.monitor import main; main()"
    return [sys.executable, "-I", "-S", "-c", code, *(f"{k}={v}" for k, v in args.items())]
