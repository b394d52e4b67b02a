"""``/containers/{id}/exec`` and ``/exec/{id}/...``: exec instances over the container
engine's exec (``cove.containers.exec.spawn``, the CLI's own path).

Exec instances are the server's memory, as they are dockerd's: an id, the options, and
once started the process, its terminal and its exit code (126 cannot invoke, 127 not
found, as ``docker exec`` reports them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from cove.api.server import ApiError, Hijacked, Request, Response
from cove.errors import NotFound


@dataclass
class _Exec:
    id: str
    container: str
    config: dict[str, Any]
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    pty_master: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)


_execs: dict[str, _Exec] = {}
_execs_lock = threading.Lock()
_spawn_lock = threading.Lock()


def _spawn(req: Request, e: _Exec, detach: bool, tty: bool) -> Any:
    """The engine's exec, one at a time, and the server no child subreaper afterwards.

    The runtime makes its caller a child subreaper so that the exec'd process (forked by
    its helper, which exits) is reparented to it. Left set, every monitor that a later
    start leaves behind would be reparented to the server too and never reaped (zombies):
    the flag is cleared once the process is ours; the lock keeps two execs from clearing
    it under each other."""
    from cove.containers.exec import spawn
    from cove.sys import syscalls as sc

    with _spawn_lock:
        try:
            return spawn(req.ce, e.container, _options(e, detach, tty))
        finally:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 0)


def _get(eid: str) -> _Exec:
    with _execs_lock:
        e = _execs.get(eid)
    if e is None:
        raise NotFound(f"No such exec instance: {eid}")
    return e


def create(req: Request) -> Response:
    from cove.containers.exec import _check_running

    body = req.json()
    cmd = body.get("Cmd")
    if not cmd:
        raise ApiError(400, "No exec command specified")
    rec = req.ce.get(req.params["id"])
    _check_running(rec)
    eid = secrets.token_hex(32)
    conf = {
        "Cmd": [cmd] if isinstance(cmd, str) else list(cmd),
        "Env": list(body.get("Env") or []),
        "User": body.get("User") or "",
        "WorkingDir": body.get("WorkingDir") or "",
        "Tty": bool(body.get("Tty")),
        "Privileged": bool(body.get("Privileged")),
        "AttachStdin": bool(body.get("AttachStdin")),
        "AttachStdout": bool(body.get("AttachStdout")),
        "AttachStderr": bool(body.get("AttachStderr")),
    }
    with _execs_lock:
        _execs[eid] = _Exec(eid, rec.id, conf)
    return Response(201, {"Id": eid})


def _options(e: _Exec, detach: bool, tty: bool) -> Any:
    from cove.containers.exec import ExecOptions

    c = e.config
    return ExecOptions(
        command=c["Cmd"],
        detach=detach,
        interactive=c["AttachStdin"] and not detach,
        tty=tty,
        env=c["Env"],
        user=c["User"] or None,
        workdir=c["WorkingDir"] or None,
        privileged=c["Privileged"],
    )


def start(req: Request) -> Response | None:
    from cove.runtime.api import ContainerStartError

    e = _get(req.params["id"])
    body = req.json()
    detach = bool(body.get("Detach"))
    tty = bool(body.get("Tty", e.config["Tty"]))
    with e.lock:
        if e.started:
            raise ApiError(409, f"exec {e.id} has already been started")
        e.started = True
    if detach:
        try:
            s = _spawn(req, e, True, tty)
        except ContainerStartError as err:
            e.exit_code = err.exit_code
            raise ApiError(400 if err.exit_code in (126, 127) else 500, str(err)) from err
        e.pid, e.running = s.pid, True
        threading.Thread(target=_reap, args=(e,), daemon=True).start()
        return Response(200, raw=b"", content_type="application/json")
    req.ce.get(e.container)  # a 404 before the upgrade
    # the 101 goes out alone, before the process can write (docker-py loses bytes that
    # arrive with it); then the process starts
    h = req.hijack()
    try:
        s = _spawn(req, e, False, tty)
    except ContainerStartError as err:
        e.exit_code = err.exit_code
        msg = f"OCI runtime exec failed: {err}\r\n".encode()
        with contextlib.suppress(OSError):
            h.send(msg) if tty else h.frame(1, msg)
        h.close_write()
        return None
    except Exception:
        e.exit_code = 126
        h.close_write()
        raise
    e.pid, e.running = s.pid, True
    if s.pty_master is not None:
        e.pty_master = s.pty_master
        status = _pump_tty(s.pty_master, s.pid, h, e.config["AttachStdin"])
    else:
        status = _pump_pipes(s, h, e.config)
    from cove.runtime.api import exit_status

    e.exit_code = exit_status(status)
    e.running = False
    e.pty_master = -1
    h.close_write()
    return None


def _reap(e: _Exec) -> None:
    from cove.runtime.api import exit_status

    _, status = os.waitpid(e.pid, 0)
    e.exit_code = exit_status(status)
    e.running = False


def _pump_pipes(s: Any, h: Hijacked, conf: dict[str, Any]) -> int:
    """stdout/stderr pipes to stdcopy frames; the client's input into stdin, its
    half-close closing it."""
    from cove.sys.terminal import NO_LOG, pump

    gone = False

    def echo(stream: int, data: bytes) -> None:
        nonlocal gone
        if gone or not conf["AttachStdout" if stream == 0 else "AttachStderr"]:
            return
        try:
            h.frame(stream + 1, data)
        except OSError:
            gone = True  # the client left: the process runs on, unread

    stdin_w, s.stdin_w = s.stdin_w, -1
    if stdin_w >= 0:
        threading.Thread(target=_feed, args=(h, stdin_w), daemon=True).start()
    return pump(s.outputs, s.pid, NO_LOG, echo, drain_broken=True)


def _feed(h: Hijacked, fd: int) -> None:
    try:
        while True:
            data = h.read()
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # EOF on the client's side: the process reads EOF


def _pump_tty(master: int, pid: int, h: Hijacked, interactive: bool) -> int:
    """The pty's bytes raw to the client, the client's to the pty, until the process
    exits and its output is read."""
    import select

    def feed() -> None:
        try:
            while True:
                data = h.read()
                if not data:
                    break
                os.write(master, data)
        except OSError:
            pass

    if interactive:
        threading.Thread(target=feed, daemon=True).start()
    pidfd = os.pidfd_open(pid)
    exited = False
    try:
        while True:
            ready, _, _ = select.select([master] + ([] if exited else [pidfd]), [], [],
                                       0 if exited else None)  # fmt: skip
            if not ready:
                break  # exited, and nothing more is waiting
            if pidfd in ready:
                exited = True
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""  # EIO: the last holder of the slave closed it
                if not data:
                    break
                with contextlib.suppress(OSError):
                    h.send(data)
        _, status = os.waitpid(pid, 0)
        return status
    finally:
        os.close(pidfd)
        os.close(master)


def resize(req: Request) -> Response:
    import fcntl
    import struct
    import termios

    e = _get(req.params["id"])
    height, width = req.int_arg("h") or 0, req.int_arg("w") or 0
    if e.pty_master >= 0 and height and width:
        with contextlib.suppress(OSError):
            fcntl.ioctl(e.pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    return Response(201, raw=b"", content_type="text/plain")


def inspect(req: Request) -> Response:
    e = _get(req.params["id"])
    c = e.config
    return Response(
        200,
        {
            "ID": e.id,
            "Running": e.running,
            "ExitCode": e.exit_code,
            "ProcessConfig": {
                "tty": c["Tty"],
                "entrypoint": c["Cmd"][0],
                "arguments": c["Cmd"][1:],
                "privileged": c["Privileged"],
                "user": c["User"],
            },
            "OpenStdin": c["AttachStdin"],
            "OpenStderr": c["AttachStderr"],
            "OpenStdout": c["AttachStdout"],
            "CanRemove": False,
            "ContainerID": e.container,
            "DetachKeys": "",
            "Pid": e.pid,
        },
    )


ROUTES = [
    ("POST", r"/containers/(?P<id>[^/]+)/exec", create),
    ("POST", r"/exec/(?P<id>[^/]+)/start", start),
    ("POST", r"/exec/(?P<id>[^/]+)/resize", resize),
    ("GET", r"/exec/(?P<id>[^/]+)/json", inspect),
]
