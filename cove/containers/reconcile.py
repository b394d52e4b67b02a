"""Reconciliation with the kernel: what a dead command or monitor left half-done is
finished or undone, and a container's every trace purged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from cove.containers import lifecycle
from cove.containers.isolation import driver_for
from cove.containers.lifecycle import alive
from cove.errors import NotFound
from cove.state import OP_CREATE, OP_REMOVE, OP_START, Record, Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def reconcile(ce: ContainerEngine, rec: Record, *, settle: float = 2.0) -> Record:
    """Make ``rec`` true to the kernel: finish or undo what a dead process left half-done,
    and notice containers whose process or monitor died. Raises NotFound if the
    container turns out never to have been finished."""
    if rec.op and not alive(rec.op_pid, rec.op_start):
        if rec.op == OP_CREATE:
            purge(ce, rec)
            raise NotFound(f"no such container: {rec.id}")
        if rec.op == OP_REMOVE:
            purge(ce, rec)
            raise NotFound(f"no such container: {rec.id}")
        if rec.op == OP_START:
            # also a create killed before state.json: the driver's cleanup is best effort
            driver_for(rec).cleanup(ce, rec)
            lifecycle.rollback_start(ce.store, rec)
            return ce.store.get(rec.id)
    if rec.op or not rec.status.can_kill():
        return rec
    # alive() is false for a zombie too: a process its monitor has not reaped yet is gone
    running = rec.status != Status.RESTARTING and alive(rec.pid, rec.start_time)
    if alive(rec.monitor_pid, rec.monitor_start):
        if running or rec.status == Status.RESTARTING:
            return rec
        # the process is gone and its monitor is recording that
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            fresh = ce.store.get(rec.id)
            if fresh.status != rec.status or fresh.pid != rec.pid:
                return fresh
            time.sleep(0.02)
        return ce.store.get(rec.id)
    # the monitor died: no one reads the output, reaps, restarts or records any more.
    # A container is never left in that state: it is stopped (its driver releases what
    # its sandbox held: runtime state, cgroups with what runs in them, networks) and reported
    driver_for(rec).cleanup(ce, rec)
    code = 137 if running else (rec.exit_code if rec.status == Status.RESTARTING else 255)
    lifecycle.monitor_died(ce.store, rec, code)
    return ce.store.get(rec.id)


def reconcile_all(ce: ContainerEngine) -> list[Record]:
    """Every container, each made true to the kernel (``ps -a``); one that turns out never
    to have been finished is left out."""
    out = []
    for rec in ce.store.all():
        with contextlib.suppress(NotFound):
            out.append(reconcile(ce, rec))
    return out


def purge(ce: ContainerEngine, rec: Record) -> None:
    """Remove every trace of a container: processes, cgroups, files, the row."""
    import shutil

    if alive(rec.monitor_pid, rec.monitor_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.monitor_pid, signal.SIGKILL)
    drv = driver_for(rec)
    drv.cleanup(ce, rec)
    if alive(rec.pid, rec.start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
    shutil.rmtree(ce.cdir(rec.id), ignore_errors=True)
    lifecycle.delete(ce.store, rec.id)
