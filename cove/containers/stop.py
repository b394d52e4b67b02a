"""stop, kill, wait, restart, pause and unpause."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from cove.containers import lifecycle
from cove.containers.isolation import driver, driver_for
from cove.containers.lifecycle import alive
from cove.containers.record import config_of
from cove.errors import Conflict, InvalidSpec, NotFound
from cove.state import Record, Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def signal_monitor(ce: ContainerEngine, rec: Record) -> None:
    if alive(rec.monitor_pid, rec.monitor_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.monitor_pid, signal.SIGUSR1)


def stop(
    ce: ContainerEngine, ref: str, *, timeout: float | None = None, sig: int | None = None
) -> Record:
    from cove.spec import flags

    rec = ce.get(ref)
    if not rec.status.can_kill():
        return rec
    lifecycle.stop_requested(ce.store, rec.id)
    if rec.status == Status.RESTARTING:
        signal_monitor(ce, rec)
        return await_exit(ce, rec, 10)
    cfg = config_of(rec)
    if sig is None:
        sig = flags.parse_signal(cfg.stop_signal)
    if timeout is None:
        timeout = 10 if cfg.stop_timeout is None else cfg.stop_timeout
    pidfd = _pidfd(rec.pid)
    try:
        with contextlib.suppress(ProcessLookupError):
            # the driver knows where the command's signal goes
            driver_for(rec).signal(rec, sig)
        if rec.status == Status.PAUSED:
            freeze(ce, rec, False)
        if pidfd is not None and not _wait_fd(pidfd, timeout):
            with contextlib.suppress(ProcessLookupError):
                driver_for(rec).signal(rec, signal.SIGKILL)
            _wait_fd(pidfd, 10)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return await_exit(ce, rec, 10)


def await_exit(ce: ContainerEngine, rec: Record, timeout: float) -> Record:
    deadline = time.monotonic() + timeout
    while True:
        fresh = ce.reconcile(ce.store.get(rec.id), settle=0.0)
        if fresh.manual_stop and fresh.status == Status.RUNNING and fresh.pid != rec.pid:
            # a restart that raced with the stop: the stop wins
            with contextlib.suppress(ProcessLookupError):
                os.kill(fresh.pid, signal.SIGKILL)
            rec = fresh
            continue
        if fresh.status not in (Status.RUNNING, Status.PAUSED) or fresh.pid != rec.pid:
            if fresh.status != Status.RESTARTING or not fresh.manual_stop:
                return fresh
        if time.monotonic() > deadline:
            return fresh
        time.sleep(0.02)


def kill(ce: ContainerEngine, ref: str, sig: int = signal.SIGKILL) -> Record:
    from cove.spec import flags

    rec = ce.get(ref)
    if rec.status == Status.RESTARTING:  # Docker: a kill ends the restart loop
        lifecycle.stop_requested(ce.store, rec.id)
        signal_monitor(ce, rec)
        return await_exit(ce, rec, 10)
    if rec.status not in (Status.RUNNING, Status.PAUSED):
        raise Conflict(f"cannot kill container: {ref}: container {rec.id} is not running")
    stop_sig = flags.parse_signal(config_of(rec).stop_signal)
    if sig in (signal.SIGKILL, stop_sig):
        lifecycle.stop_requested(ce.store, rec.id)
    driver_for(rec).signal(rec, sig)
    lifecycle.signalled(ce.store, rec.id, sig)
    if sig == signal.SIGKILL:
        if rec.status == Status.PAUSED:
            freeze(ce, rec, False)
        return await_exit(ce, rec, 10)
    return rec


WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


def wait(ce: ContainerEngine, ref: str, *, after: float = 0.0, condition: str = "") -> int:
    """Block until the container is not running; its exit code (``docker wait``): the
    first exit after the call, also one that a restart policy follows.

    ``condition`` is the Engine API's: ``next-exit`` waits for an exit after the call even
    if the container was never started, ``removed`` for the row to go (an auto-removal
    after the exit: the code survives it in the store's exits)."""
    if condition and condition not in WAIT_CONDITIONS:
        raise InvalidSpec(f"invalid condition: {condition!r}")
    rec = ce.store.get(ref)
    after = after or time.time()
    code = rec.exit_code
    watch = _MonitorWatch()
    try:
        while True:
            try:
                fresh = ce.reconcile(ce.store.get(rec.id), settle=0.0)
            except NotFound:
                gone = ce.store.exit_of_removed(rec.id)
                return gone[0] if gone else code
            if fresh.finished_at >= after and fresh.finished_at > 0:
                code = fresh.exit_code
                if condition != "removed":
                    return code
            idle = fresh.status in (Status.EXITED, Status.DEAD, Status.CREATED) and not fresh.op
            if idle and condition in ("", "not-running"):
                return fresh.exit_code
            watch.pause(fresh.monitor_pid, 0.05)
    finally:
        watch.close()


class _MonitorWatch:
    """A poll's pause that ends early when the container's monitor exits: it records the
    exit (and does an auto-removal) before it exits, so the next look sees the end at once
    instead of up to a poll later. Only a hint: every state still comes from the store."""

    def __init__(self) -> None:
        self.pid = 0
        self.fd = -1

    def pause(self, monitor_pid: int, seconds: float) -> None:
        import select

        if monitor_pid != self.pid:
            self.close()
            self.pid = monitor_pid
            if monitor_pid:
                with contextlib.suppress(OSError):  # gone already: the plain pause
                    self.fd = os.pidfd_open(monitor_pid)
        if self.fd < 0:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if ready:  # it exited: once only, later pauses are plain
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


def restart(ce: ContainerEngine, ref: str, *, timeout: float | None = None) -> Record:
    driver(ce.get(ref), "restart")  # refused before anything is stopped
    rec = ce.get(ref)
    if rec.status.can_kill():
        ce.stop(rec.id, timeout=timeout)
    return ce.start(rec.id)


def freeze(ce: ContainerEngine, rec: Record, frozen: bool) -> None:
    driver_for(rec).pause(ce, rec, frozen)


def pause(ce: ContainerEngine, ref: str) -> Record:
    rec = ce.get(ref)
    drv = driver(rec, "pause")
    if rec.status == Status.PAUSED:
        raise Conflict(f"container {rec.id} is already paused")
    if not rec.status.can_pause():
        raise Conflict(f"container {rec.id} is not running")
    drv.pause(ce, rec, True)
    lifecycle.paused(ce.store, rec.id, True)
    return ce.store.get(rec.id)


def unpause(ce: ContainerEngine, ref: str) -> Record:
    rec = ce.get(ref)
    drv = driver(rec, "unpause")
    if not rec.status.can_unpause():
        raise Conflict(f"container {rec.id} is not paused")
    drv.pause(ce, rec, False)
    lifecycle.paused(ce.store, rec.id, False)
    return ce.store.get(rec.id)


# -- remove -----------------------------------------------------------------


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def _wait_fd(fd: int, timeout: float) -> bool:
    import select

    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(ready)
