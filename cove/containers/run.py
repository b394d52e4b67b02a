"""``docker run``: ``run`` and ``run -d`` through the driver the options name; the
namespaces driver's foreground paths (this process the container's parent), the captured
path of a build's RUN step, and attached runs through a monitor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cove.containers import isolation, lifecycle
from cove.containers.attach import attach_stream, forward_signals_to
from cove.containers.jsonlog import Log
from cove.containers.netattach import network_down, network_up
from cove.containers.reconcile import purge
from cove.containers.record import config_of
from cove.errors import StartFailed, best_effort
from cove.state import OP_CREATE
from cove.sys import trace

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def run_foreground(ce: ContainerEngine, opts: Any) -> int:
    """``docker run`` without -d: this process is the container's parent and monitor
    (the lean path: no monitor process, output straight to our stdio)."""
    from cove.runtime.api import exit_status
    from cove.sys.terminal import forward_signals, proxy_tty, pump

    cid = ce.create(opts)
    trace.mark("created")
    runtime = ce.runtime()
    code = 125

    cfg = config_of(ce.store.get(cid))
    log = Log(ce.log_path(cid), cfg.log_max_size, cfg.log_max_file)
    outputs: dict[int, int] = {}
    stdin_w = -1
    try:
        stdio = None
        devnull = -1
        ends: list[int] = []
        if not opts.tty:
            # the output goes through us, to our stdio and to the json-file log (``logs``);
            # -i input too: the container never holds our fds (our terminal)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            outputs = {out_r: 0, err_r: 1}
            ends = [out_w, err_w]
            if opts.interactive:
                devnull, stdin_w = os.pipe2(os.O_CLOEXEC)
            else:
                devnull = os.open(os.devnull, os.O_RDONLY)
            stdio = (devnull, out_w, err_w)
        try:
            created = _create_here(ce, runtime, cid, stdio)
        finally:
            for fd in (devnull, *ends):
                if fd >= 0:
                    os.close(fd)
        trace.mark("runtime-create")
        with forward_signals(created.pid):
            _start_exec(runtime, cid, created)
            trace.mark("runtime-start")
            if created.pty_master is not None:
                status = proxy_tty(
                    created.pty_master,
                    created.pid,
                    opts.interactive,
                    lambda data: log.feed(0, data),
                )
                log.flush(0)
            else:
                feed, stdin_w = stdin_w, -1  # pump owns it from here
                status = pump(outputs, created.pid, log, stdin=feed)
        trace.mark("wait")
        code = exit_status(status)
        oom = created.cgroups.oom_killed()
        if oom:
            code = 137
        lifecycle.exited(ce.store, cid, code, oom=oom)
        trace.mark("exited")
        return code
    except BaseException as e:
        code = e.exit_code if isinstance(e, StartFailed) else 125
        with best_effort(f"record the failed run of {cid}", __name__):
            lifecycle.run_failed(ce.store, cid, code, str(e))
        raise
    finally:
        for fd in (*outputs, stdin_w):
            if fd >= 0:
                os.close(fd)
        os.close(log.fd)
        with best_effort(f"delete the runtime state of {cid}", __name__):
            runtime.delete(cid, force=True)
        network_down(ce.root, ce.store.db, cid)
        trace.mark("runtime-delete")
        if opts.rm:
            with best_effort(f"remove container {cid} (--rm)", __name__):
                ce.discard(ce.store.get(cid), volumes=True)
        trace.mark("cleanup")


def _create_here(ce: ContainerEngine, runtime: Any, cid: str, stdio: Any) -> Any:
    """Create the container as this process's child, attach its networks and record it
    running with this process as its monitor (the foreground paths)."""
    from cove.runtime.api import proc_start_time

    created = runtime.create(cid, ce.cdir(cid), stdio=stdio)
    rec = ce.store.get(cid)
    rec.config["NetworkSettings"] = network_up(ce.root, ce.store.db, rec, created.pid)
    lifecycle.running_here(
        ce.store,
        cid,
        pid=created.pid,
        start_time=proc_start_time(created.pid) or 0,
        config=rec.config,
    )
    return created


def run_captured(ce: ContainerEngine, cid: str, echo: Callable[[int, bytes], None]) -> int:
    """Run a created container to its exit with stdin closed, its output to
    ``echo(stream, data)`` and no log (a build's RUN step); its exit code.

    The row keeps the caller's ``op``: the caller removes the container, or, should it
    die, the next command does. An interrupt (Ctrl-C) kills the process on the way out.
    """
    from cove.runtime.api import exit_status
    from cove.sys.terminal import NO_LOG, pump

    runtime = ce.runtime()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    outputs = {out_r: 0, err_r: 1}
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        try:
            created = _create_here(ce, runtime, cid, (devnull, out_w, err_w))
        finally:
            for fd in (devnull, out_w, err_w):
                os.close(fd)
        _start_exec(runtime, cid, created)
        status = pump(outputs, created.pid, NO_LOG, echo)
        code = 137 if created.cgroups.oom_killed() else exit_status(status)
        lifecycle.exited(ce.store, cid, code)
        return code
    finally:
        for fd in outputs:
            os.close(fd)
        with best_effort(f"delete the runtime state of {cid}", __name__):
            runtime.delete(cid, force=True)
        network_down(ce.root, ce.store.db, cid)


def run(ce: ContainerEngine, opts: Any) -> int:
    """``docker run`` without -d, through the driver the options name; the exit code."""
    return isolation.for_options(opts).run(ce, opts)


def run_detached(ce: ContainerEngine, opts: Any) -> str:
    """``docker run -d``: the driver creates the container (its create's op marker kept)
    and starts it under a supervisor of its own."""
    from cove.runtime.api import ContainerStartError

    drv = isolation.for_options(opts)
    cid = drv.create(ce, opts, op=OP_CREATE)
    try:
        drv.start(ce, ce.store.get(cid), op=OP_CREATE)
    except ContainerStartError:
        if opts.rm:
            with contextlib.suppress(Exception):
                purge(ce, ce.store.get(cid))
        raise
    return cid


def run_attached(ce: ContainerEngine, opts: Any) -> int:
    """Foreground run through a monitor (restart policies, health checks): attach, then
    return the first run's exit code, as ``docker run`` does."""
    import socket

    cid = ce.create(opts, op=OP_CREATE)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ce.start(cid, attach_fd=theirs.fileno(), op=OP_CREATE)
    finally:
        theirs.close()
    started = ce.store.get(cid).started_at
    with forward_signals_to(ce, cid):
        attach_stream(mine, opts.interactive, opts.tty)
    return ce.wait(cid, after=started)


def _start_exec(runtime: Any, cid: str, created: Any) -> None:
    """Let a created container exec its process; reap it should the exec fail."""
    runtime.start(cid)
    try:
        runtime.wait_exec(created)
    except Exception:
        os.waitpid(created.pid, 0)
        raise
