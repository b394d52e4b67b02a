"""The only writer of container rows.

Every change of a container's row is one named transition below; a transition whose
precondition is about who owns the row (an operation in flight, the process it recorded)
states it in its SQL, so a racing command changes nothing instead of overwriting a newer
state. Status changes go through ``Store.update``, which checks them against the legal
transitions in the same transaction. Process identity (``alive``, ``self_ids``) and the
crash points the tests kill cove at live here too: they are what the op markers rest on.

Kept free of the runtime and the network: reconciliation (``cove.containers.reconcile``)
does the kernel side and calls these to record what it did.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import Any

from cove.errors import Conflict
from cove.state import OP_REMOVE, OP_START, Record, Status, Store, now
from cove.sys import events

# -- process identity ----------------------------------------------------------------------


def alive(pid: int, start_time: int) -> bool:
    """The process is there, is the one we recorded (not a reused pid), and is not a zombie
    (a dead process whose parent has not reaped it yet)."""
    from cove.sys.proc import alive as proc_alive

    return proc_alive(pid, start_time)


def self_ids() -> tuple[int, int]:
    from cove.runtime.api import proc_start_time

    return os.getpid(), proc_start_time(os.getpid()) or 0


def crash_point(name: str) -> None:
    """Tests kill cove at named steps (``COVE_CRASH_AT``) to prove nothing half-made stays,
    or stop it there (``COVE_STOP_AT``, SIGSTOP) to run another command in that window."""
    if os.environ.get("COVE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("COVE_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


# -- create ----------------------------------------------------------------------------------


def _event(store: Store, cid: str, action: str, **attrs: str) -> None:
    """The transition in the events log (``docker events``): best effort, never fails it."""
    try:
        rec = store.get(cid)
    except Exception:
        return
    events.emit(store.root, "container", action, rec.id,
                {"image": rec.image, "name": rec.name, **attrs})  # fmt: skip


def add(store: Store, rec: Record) -> None:
    """A new row (in ``create``, marked with its op), or one rebuilt by ``system check``."""
    store.add(rec)
    _event(store, rec.id, "create")


def created(store: Store, cid: str, config: dict[str, Any], *, keep_op: bool) -> None:
    """The bundle is made: its Docker config recorded. Without ``keep_op`` the create is
    over; with it the row stays in flight for the caller (run hands it to start, a build
    keeps it until it removes the container)."""
    if keep_op:
        store.update(cid, config=config)
    else:
        store.update(cid, config=config, op="", op_pid=0, op_start=0)


def delete(store: Store, cid: str) -> None:
    """The row goes last, after every trace it names (processes, cgroups, files)."""
    _event(store, cid, "destroy")
    store.remove(cid)


# -- start -----------------------------------------------------------------------------------


def begin_start(store: Store, rec: Record, me: int, me_start: int) -> None:
    """Mark a start in flight, owned by this process: only a row no one else is changing
    and in a startable status (created, exited)."""
    store.db.execute("BEGIN IMMEDIATE")
    try:
        cur = store.db.execute(
            "SELECT op, status FROM containers WHERE id = ?", (rec.id,)
        ).fetchone()
        if cur is None or cur[0] or not Status(cur[1]).can_start():
            raise Conflict(f"container {rec.name} is being changed by another command")
        store.db.execute(
            "UPDATE containers SET op = ?, op_pid = ?, op_start = ?, manual_stop = 0, "
            "restart_count = 0, error = '' WHERE id = ? AND op = ''",
            (OP_START, me, me_start, rec.id),
        )
        store.db.execute("COMMIT")
    except BaseException:
        store.db.execute("ROLLBACK")
        raise


def hand_off(store: Store, cid: str, monitor: int, monitor_start: int) -> None:
    """The launcher hands its start to the new monitor: the monitor owns the op from here
    until its helper reports, so a launcher killed now leaves nothing to roll back."""
    store.update(
        cid,
        op_pid=monitor,
        op_start=monitor_start,
        monitor_pid=monitor,
        monitor_start=monitor_start,
    )


def started(
    store: Store,
    cid: str,
    *,
    pid: int,
    start_time: int,
    config: dict[str, Any],
    health: dict[str, Any],
) -> None:
    """A monitor's helper started the process: running, the start op over."""
    store.update(
        cid,
        config=config,
        status=Status.RUNNING,
        pid=pid,
        start_time=start_time,
        started_at=now(),
        op="",
        op_pid=0,
        op_start=0,
        error="",
        oom_killed=False,
        health=health,
    )
    _event(store, cid, "start")


def start_failed(store: Store, rec: Record, code: int, error: str) -> None:
    """A monitor's helper could not start the process: the op is over, the error recorded;
    a restart that failed ends the restart loop (exited)."""
    fields: dict[str, Any] = {}
    if rec.status == Status.RESTARTING:
        fields = {"status": Status.EXITED, "finished_at": now()}
    store.update(
        rec.id,
        op="",
        op_pid=0,
        op_start=0,
        exit_code=code,
        error=error,
        monitor_pid=0,
        **fields,
    )


def running_here(
    store: Store, cid: str, *, pid: int, start_time: int, config: dict[str, Any] | None = None
) -> None:
    """The process runs as this process's child, and this process is its monitor (the
    foreground run, a build's RUN step, a ``run --vm`` supervisor)."""
    me, me_start = self_ids()
    fields: dict[str, Any] = {"config": config} if config is not None else {}
    store.update(
        cid,
        status=Status.RUNNING,
        pid=pid,
        start_time=start_time,
        started_at=now(),
        monitor_pid=me,
        monitor_start=me_start,
        **fields,
    )


def rollback_start(store: Store, rec: Record) -> None:
    """The start's owner died: back to where it began (exited if it ever ran, else
    created). Only if that dead owner still holds the op."""
    back = Status.EXITED if rec.started_at else Status.CREATED
    store.db.execute(
        "UPDATE containers SET status = ?, op = '', op_pid = 0, op_start = 0, "
        "monitor_pid = 0, pid = 0 WHERE id = ? AND op = ? AND op_pid = ? AND op_start = ?",
        (back.value, rec.id, OP_START, rec.op_pid, rec.op_start),
    )


# -- exits -----------------------------------------------------------------------------------


def exited(
    store: Store, cid: str, code: int, *, oom: bool | None = None, clear_pid: bool = False
) -> None:
    """The process exited and no restart follows: its monitor's work is done. ``oom``
    None: not known (the OOM flag stays as it was)."""
    fields: dict[str, Any] = {"pid": 0} if clear_pid else {}
    if oom is not None:
        fields["oom_killed"] = oom
    store.update(
        cid, status=Status.EXITED, exit_code=code, finished_at=now(), monitor_pid=0, **fields
    )
    _event(store, cid, "die", exitCode=str(code))


def run_failed(store: Store, cid: str, code: int, error: str) -> None:
    """A foreground run failed in cove (not in the container): the error and code, and an
    exit if the process had started."""
    rec = store.get(cid)
    fields: dict[str, Any] = {"exit_code": code, "monitor_pid": 0, "error": error}
    if rec.status == Status.RUNNING:
        fields.update(status=Status.EXITED, finished_at=now())
    store.update(cid, **fields)


def restarting(store: Store, rec: Record, code: int, *, oom: bool) -> None:
    """The process exited and its restart policy wants it back: the monitor stays."""
    store.update(
        rec.id,
        status=Status.RESTARTING,
        exit_code=code,
        oom_killed=oom,
        finished_at=now(),
        restart_count=rec.restart_count + 1,
    )


def gave_up(store: Store, cid: str) -> None:
    """The restart loop ends (stopped or removed during the back-off)."""
    if store.get(cid).status == Status.RESTARTING:
        store.update(cid, status=Status.EXITED, monitor_pid=0)


def monitor_died(store: Store, rec: Record, code: int) -> None:
    """Its monitor died: no one reads the output, reaps, restarts or records any more, so
    the container is recorded stopped. Only if nothing changed since ``rec`` was read: the
    monitor may have recorded the exit and exited between that read and its liveness
    check."""
    store.db.execute(
        "UPDATE containers SET status = ?, exit_code = ?, finished_at = ?, pid = 0, "
        "monitor_pid = 0, error = ? WHERE id = ? AND status = ? AND pid = ? "
        "AND monitor_pid = ? AND finished_at = ?",
        (Status.EXITED.value, code, now(), "container monitor died", rec.id,
         rec.status.value, rec.pid, rec.monitor_pid, rec.finished_at),
    )  # fmt: skip


# -- verbs on a live container ---------------------------------------------------------------


def stop_requested(store: Store, cid: str) -> None:
    """``stop``/``kill``: no restart policy brings it back."""
    store.update(cid, manual_stop=True)


def paused(store: Store, cid: str, frozen: bool) -> None:
    store.update(cid, status=Status.PAUSED if frozen else Status.RUNNING)
    _event(store, cid, "pause" if frozen else "unpause")


def killed_for_removal(store: Store, cid: str) -> None:
    """``rm -f`` of a running container: its monitor is told to go without recording the
    exit, so the events log gets what dockerd reports for it: kill (9), then die (137)."""
    _event(store, cid, "kill", signal=str(signal.SIGKILL.value))
    _event(store, cid, "die", exitCode="137")


def signalled(store: Store, cid: str, sig: int) -> None:
    """A signal sent by ``kill``: no row changes, the events log has it (dockerd's
    ``kill`` event names the signal's number)."""
    _event(store, cid, "kill", signal=str(sig))


def health(store: Store, cid: str, result: dict[str, Any]) -> None:
    store.update(cid, health=result)


def set_config(store: Store, cid: str, config: dict[str, Any]) -> None:
    """Docker's config changed by a verb (network connect/disconnect)."""
    store.update(cid, config=config)


def rename(store: Store, cid: str, new: str) -> None:
    try:
        store.db.execute("UPDATE containers SET name = ? WHERE id = ?", (new, cid))
    except sqlite3.IntegrityError as e:
        raise Conflict(f'the container name "/{new}" is already in use by another container') from e


def begin_remove(store: Store, cid: str, me: int, me_start: int) -> None:
    """Marked for removal, owned by this process: a removal killed halfway is finished by
    the next command that reads the row."""
    store.update(
        cid,
        status=Status.REMOVING,
        op=OP_REMOVE,
        op_pid=me,
        op_start=me_start,
        manual_stop=True,
    )
