"""``exec``: a new process in a running container, with its namespaces, cgroups, and the
same capabilities, seccomp filter and no_new_privs as the container's own process."""

from __future__ import annotations

import contextlib
import copy
import os
import select
import time
from dataclasses import dataclass, field
from typing import Any

from cove.containers.isolation import driver
from cove.errors import Conflict
from cove.state import Record, Status


@dataclass
class ExecOptions:
    command: list[str]
    detach: bool = False
    interactive: bool = False
    tty: bool = False
    env: list[str] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    privileged: bool = False


def _process(ce: Any, rec: Record, o: ExecOptions) -> tuple[Any, bool]:
    from cove import bundle as ctr
    from cove.runtime import caps as capmod
    from cove.spec import runtime as rt

    oci = ce.oci_spec(rec)
    proc: rt.Process = copy.deepcopy(oci.process)
    proc.args = list(o.command)
    proc.env = ctr.merge_env(proc.env, o.env)
    proc.terminal = o.tty
    proc.console_size = None
    if o.workdir:
        proc.cwd = o.workdir
    if o.user:
        u = ctr.resolve_user(o.user, [], ce.layers_top_first(rec))
        proc.user = rt.User(u.uid, u.gid, proc.user.umask, u.additional)
        if not any(e.startswith("HOME=") for e in o.env):
            proc.env = [e for e in proc.env if not e.startswith("HOME=")] + [f"HOME={u.home}"]
    caps = proc.capabilities
    if o.privileged:
        every = [c for i, c in enumerate(capmod.CAPS) if i <= capmod.last_cap()]
        caps = rt.Capabilities(bounding=every, effective=every, permitted=every)
    if caps is not None and proc.user.uid != 0:
        caps = rt.Capabilities(bounding=caps.bounding)
    elif caps is not None:
        caps = rt.Capabilities(
            bounding=caps.bounding, effective=caps.bounding, permitted=caps.bounding
        )
    proc.capabilities = caps
    return proc, not o.privileged


def _check_running(rec: Record) -> None:
    driver(rec, "exec")  # refused unless the driver supports it
    if rec.status == Status.PAUSED:
        raise Conflict(f"container {rec.id} is paused, unpause the container before exec")
    if rec.status != Status.RUNNING:
        raise Conflict(f"container {rec.id} is not running")


@dataclass
class Spawned:
    """An exec'd process, a child of the caller: its pty master (``tty``), or the read
    ends of its stdout/stderr pipes (fd -> 0 stdout, 1 stderr) and the write end of its
    stdin (-1 unless interactive). The caller pumps, closes, and reaps ``pid``."""

    pid: int
    pty_master: int | None
    outputs: dict[int, int]
    stdin_w: int

    def close(self) -> None:
        for fd in (*self.outputs, self.stdin_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.outputs = {}
        self.stdin_w = -1


def spawn(ce: Any, ref: str, o: ExecOptions) -> Spawned:
    """Start ``o.command`` in the container; raises ContainerStartError (exit code 126
    cannot invoke, 127 not found) if it could not be exec'd."""
    rec = ce.get(ref)
    _check_running(rec)
    proc, seccomp = _process(ce, rec, o)
    devnull = os.open(os.devnull, os.O_RDWR)
    ends: list[int] = []  # the process's ends of its pipes: closed here once it has them
    outputs: dict[int, int] = {}
    stdin_w = -1
    try:
        if o.detach:
            stdio: tuple[int, int, int] | None = (devnull, devnull, devnull)
        elif o.tty:
            stdio = None
        else:
            # pipes we copy, never our own fds: our terminal must not reach the process
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            ends.append(out_w)
            outputs[out_r] = 0
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            ends.append(err_w)
            outputs[err_r] = 1
            in_r = devnull
            if o.interactive:
                in_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                ends.append(in_r)
            stdio = (in_r, out_w, err_w)
        runtime = ce.runtime()
        created = runtime.exec_process(rec.id, proc, stdio=stdio, seccomp=seccomp)
    except BaseException:
        for fd in (*outputs, stdin_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in (devnull, *ends):
            os.close(fd)
    try:
        runtime.wait_exec(created)
    except BaseException:
        for fd in (*outputs, stdin_w):
            if fd >= 0:
                os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(created.pid, 0)  # it exited without exec'ing: reap it
        raise
    return Spawned(created.pid, created.pty_master, outputs, stdin_w)


def exec_in(ce: Any, ref: str, o: ExecOptions) -> int:
    """Run ``o.command`` in the container; its exit code (0 at once with ``detach``)."""
    from cove.runtime.api import exit_status
    from cove.sys.terminal import NO_LOG, forward_signals, proxy_tty, pump

    s = spawn(ce, ref, o)
    if o.detach:
        return 0
    with forward_signals(s.pid):
        if s.pty_master is not None:
            status = proxy_tty(s.pty_master, s.pid, o.interactive)
        else:
            # no log keeps exec's output: once our reader leaves, the process's writes fail
            status = pump(s.outputs, s.pid, NO_LOG, stdin=s.stdin_w, drain_broken=False)
    return exit_status(status)


def run_check(ce: Any, rec: Record, args: list[str], timeout: float) -> tuple[int, str]:
    """A health check: run ``args`` in the container, capture its output, kill it at
    ``timeout`` (exit code -1, as Docker reports a timed-out check)."""
    from cove.runtime.api import ContainerStartError, exit_status

    _check_running(rec)
    proc, seccomp = _process(ce, rec, ExecOptions(args))
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        created = ce.runtime().exec_process(rec.id, proc, stdio=(devnull, w, w), seccomp=seccomp)
    finally:
        os.close(w)
        os.close(devnull)
    out = b""
    try:
        ce.runtime().wait_exec(created)
    except Exception as e:
        os.close(r)
        # the runtime's init reports Docker's code (127 not found, 126 cannot run) with the
        # error itself; anything else failed before the exec: 126, as Docker's "cannot invoke"
        return (e.exit_code if isinstance(e, ContainerStartError) else 126), str(e)
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        data = os.read(r, 65536)
        if not data:
            break
        out = (out + data)[-65536:]
    os.close(r)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.kill(created.pid, 9)
    _, status = os.waitpid(created.pid, 0)
    if timed_out:
        return -1, f"Health check exceeded timeout ({timeout:g}s)"
    return exit_status(status), out.decode("utf-8", "replace")
