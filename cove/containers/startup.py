"""Create and start a container from a helper process and tell the monitor how it went.

Run in a child forked by the monitor (each restart) or, for the first start, forked from
the launcher's image before it became the monitor (``prefork_start``). It sits below
``cove.containers`` (the launcher calls it) and ``cove.supervise`` (the monitor's other
helpers), so neither imports the other's layer.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

from cove.containers import lifecycle
from cove.containers.netattach import network_down, network_up
from cove.containers.record import config_of
from cove.errors import StartFailed, StateError, best_effort
from cove.state import Status, Store

if TYPE_CHECKING:
    from cove.runtime.api import Runtime
    from cove.spec.runtime import Spec


def runtime(root: str) -> Runtime:
    # imported at call time: cove.containers imports this module, and its read-only verbs
    # (ps, inspect, logs) never need the runtime
    from cove.runtime.api import Runtime

    return Runtime(os.path.join(root, "runtime"), os.path.join(root, "cache"))


def start(
    root: str,
    cid: str,
    stdio: tuple[int, int, int],
    sockfd: int,
    opened: tuple[Store, Runtime, Spec | None] | None = None,
) -> int:
    """Create and start the container; tell the monitor ``ok PID`` (+ the pty) or the error.
    ``opened``: the store, the runtime and the bundle's parsed spec (None: parse it here),
    if the caller made them already."""
    from cove.runtime.api import proc_start_time

    sock = socket.socket(fileno=sockfd)
    store, rt, spec = opened or (Store(root), runtime(root), None)
    rec = store.get(cid)  # after the go: the launcher's hand-off is in it
    with best_effort(f"delete the runtime state a previous run of {cid} left", __name__):
        rt.delete(cid, force=True)
    null = os.open(os.devnull, os.O_RDWR)
    fd_in, fd_out, fd_err = (null if fd < 0 else fd for fd in stdio)
    try:
        bundle = os.path.join(root, "containers", cid)
        created = rt.create(cid, bundle, stdio=(fd_in, fd_out, fd_err), spec=spec)
        rec.config["NetworkSettings"] = network_up(root, store.db, rec, created.pid)
        if rec.status == Status.RESTARTING and store.get(cid).manual_stop:
            raise StateError(f"container {cid} was stopped during the restart back-off")
        rt.start(cid)
        rt.wait_exec(created)
    except BaseException as e:
        code = e.exit_code if isinstance(e, StartFailed) else 125
        with best_effort(f"delete the runtime state of {cid} after a failed start", __name__):
            rt.delete(cid, force=True)
        network_down(root, store.db, cid)
        lifecycle.start_failed(store, rec, code, str(e))
        sock.send(f"{code} {e}".encode())
        return 1
    health: dict[str, Any] = {}
    if config_of(rec).healthcheck is not None:
        health = {"Status": "starting", "FailingStreak": 0, "Log": []}
    lifecycle.started(
        store,
        cid,
        pid=created.pid,
        start_time=proc_start_time(created.pid) or 0,
        config=rec.config,
        health=health,
    )
    msg = f"ok {created.pid}".encode()
    if created.pty_master is not None:
        socket.send_fds(sock, [msg], [created.pty_master])
    else:
        sock.send(msg)
    return 0


def prefork_start(
    root: str, cid: str, go_r: int, tty: bool, stdin: bool, close: list[int]
) -> tuple[int, int, int, int, int]:
    """Fork the first start's helper from the launcher's image (everything is imported
    already); it waits for the launcher's go, so nothing starts before the launcher has
    recorded who owns the start. Returns (out_r, err_r, in_w, sock, pid) for the monitor."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = (-1, -1) if tty else os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin and not tty else (-1, -1)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            left.close()
            for fd in (out_r, err_r, in_w, *close):
                if fd >= 0:
                    os.close(fd)
            # made while the launcher records the hand-off, off the start's critical path:
            # the database open (and its check), the runtime, the bundle's spec parsed (a
            # failure is left to start(), which reports it). Nothing here writes a row or
            # touches the kernel before the go.
            rt = runtime(root)
            spec = None
            with contextlib.suppress(Exception):
                spec = rt.load_spec(os.path.join(root, "containers", cid))
            opened = (Store(root), rt, spec)
            if os.read(go_r, 1) == b"g":  # EOF: the launcher died before recording us
                os.close(go_r)
                code = start(root, cid, (in_r, out_w, err_w), right.detach(), opened)
        except BaseException as e:
            os.write(2, f"cove-monitor: start: {e}\n".encode())
        os._exit(code)  # never run the launcher's exit handlers or close its database
    right.close()
    for fd in (out_w, err_w, in_r):
        if fd >= 0:
            os.close(fd)
    return out_r, err_r, in_w, left.detach(), pid
