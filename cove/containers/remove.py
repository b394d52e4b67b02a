"""rm, rm -f, container prune."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from cove.containers import lifecycle
from cove.containers.isolation import driver_for
from cove.containers.lifecycle import alive, crash_point, self_ids
from cove.containers.reconcile import purge
from cove.containers.record import config_of
from cove.containers.stop import freeze, signal_monitor
from cove.errors import Conflict, NotFound
from cove.state import OP_START, Record, Status

if TYPE_CHECKING:
    from collections.abc import Callable

    from cove.containers.engine import ContainerEngine


def remove(ce: ContainerEngine, ref: str, *, force: bool = False, volumes: bool = False) -> str:
    rec = ce.get(ref)
    running = rec.status.can_kill()
    if running and not force:
        state = "paused" if rec.status == Status.PAUSED else "running"
        raise Conflict(
            f"cannot remove container {rec.name}: container is {state}: "
            f"stop the container before removing or force remove"
        )
    if rec.op and alive(rec.op_pid, rec.op_start) and force:
        rec = _await_op(ce, rec)
    if rec.op and alive(rec.op_pid, rec.op_start):
        raise Conflict(f"container {rec.name} is being changed by another command")
    me, me_start = self_ids()
    lifecycle.begin_remove(ce.store, rec.id, me, me_start)
    crash_point("remove-marked")
    if running:
        with contextlib.suppress(ProcessLookupError):
            driver_for(rec).signal(rec, signal.SIGKILL)
        if rec.status == Status.PAUSED:
            with contextlib.suppress(OSError):
                freeze(ce, rec, False)
        signal_monitor(ce, rec)
    # let the monitor finish writing its log and exit: it holds files in the bundle
    deadline = time.monotonic() + 5
    while alive(rec.monitor_pid, rec.monitor_start) and time.monotonic() < deadline:
        time.sleep(0.02)
    if running:
        lifecycle.killed_for_removal(ce.store, rec.id)
    ce.discard(rec, volumes=volumes)
    return rec.id


def _await_op(ce: ContainerEngine, rec: Record, timeout: float = 10.0) -> Record:
    """``rm -f`` of a container another command is changing: wait for that command to
    finish. A start still owned by the container's own monitor after that is stuck (a
    monitor only owns the start between the launcher's hand-off and its helper's
    report): the monitor is killed, which makes the start roll back."""
    deadline = time.monotonic() + timeout
    while rec.op and alive(rec.op_pid, rec.op_start) and time.monotonic() < deadline:
        time.sleep(0.05)
        rec = ce.get(rec.id)
    if (rec.op == OP_START and rec.op_pid == rec.monitor_pid
            and alive(rec.op_pid, rec.op_start)):  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.op_pid, signal.SIGKILL)
        while alive(rec.op_pid, rec.op_start) and time.monotonic() < deadline + 5:
            time.sleep(0.02)
        rec = ce.get(rec.id)
    return rec


def discard(ce: ContainerEngine, rec: Record, *, volumes: bool) -> None:
    """Purge a stopped container, and with ``volumes`` its anonymous volumes."""
    purge(ce, rec)
    if volumes:
        vols = ce.volumes()
        for m in config_of(rec).mounts:
            if m.get("Type") == "volume" and m.get("Anonymous"):
                with contextlib.suppress(NotFound, Conflict):
                    vols.remove(m["Name"])


def prune(ce: ContainerEngine, only: Callable[[Record], bool] | None = None) -> list[str]:
    """Every stopped container (``only``: those it accepts, the API's filters); their ids."""
    out = []
    for rec in ce.all():
        if only is not None and not only(rec):
            continue
        if rec.status in (Status.EXITED, Status.CREATED, Status.DEAD) and not rec.op:
            with contextlib.suppress(Conflict, NotFound):
                out.append(ce.remove(rec.id))
    return out
