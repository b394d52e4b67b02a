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
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cove.api.server import ApiError, Hijacked, Request, Response, write_all
from cove.errors import NotFound

if TYPE_CHECKING:  # imported where used: the server's start-up stays light
    from cove.api.forkserver import ForkServer
    from cove.containers.exec import ExecOptions, Spawned


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
    image: str = ""
    name: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


_execs: dict[str, _Exec] = {}
_execs_lock = threading.Lock()
_spawn_lock = threading.Lock()


@dataclass
class _Proc:
    """An exec'd process as the server holds it: its fds (those of cove.containers.exec's
    Spawned) and how to get its wait status: from the fork helper's child that spawned it
    (``reply``), or by reaping it ourselves (the fallback spawned it here)."""

    pid: int
    pty_master: int | None
    outputs: dict[int, int]
    stdin_w: int
    reply: socket.socket | None = None

    def wait(self) -> int:
        if self.reply is None:
            return os.waitpid(self.pid, 0)[1]
        from cove.api import forkserver

        with self.reply:  # closing it lets the child reap the pid
            try:
                msg, _ = forkserver.recv(self.reply)
            except OSError:
                msg = None
        if msg is None or "status" not in msg:
            return 255 << 8  # the helper's child died first: the status is lost
        return int(msg["status"])


def _spawn(req: Request, e: _Exec, detach: bool, tty: bool) -> _Proc:
    """The engine's exec, in a child of the fork helper (the process is its child; its fds
    come here); without a helper, here, one at a time."""
    from cove.api import forkserver

    fs = forkserver.current()
    if fs is not None:
        try:
            return _spawn_forked(fs, req, e, detach, tty)
        except forkserver.HelperGone as err:
            sys.stderr.write(f"cove serve: warning: {err}; exec in the server\n")
    s = _spawn_here(req, e, detach, tty)
    return _Proc(s.pid, s.pty_master, s.outputs, s.stdin_w)


def _spawn_forked(fs: ForkServer, req: Request, e: _Exec, detach: bool, tty: bool) -> _Proc:
    from dataclasses import asdict

    from cove.api import forkserver

    doc = {"op": "exec", "root": req.root, "cid": e.container,
           "options": asdict(_options(e, detach, tty))}  # fmt: skip
    reply = fs.request(doc)
    try:
        head, fds = forkserver.recv(reply)
        forkserver.check(head, doc)
    except BaseException:
        reply.close()
        raise
    assert head is not None
    if head["pty"]:
        return _Proc(head["pid"], fds[0], {}, -1, reply)
    outputs = dict(zip(fds, head["outputs"], strict=False))
    stdin_w = fds[len(head["outputs"])] if head["stdin"] else -1
    return _Proc(head["pid"], None, outputs, stdin_w, reply)


def _spawn_here(req: Request, e: _Exec, detach: bool, tty: bool) -> Spawned:
    """The engine's exec in the server, one at a time, and the server no child subreaper
    afterwards.

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
        _execs[eid] = _Exec(eid, rec.id, conf, image=rec.image, name=rec.name)
    _event(req, _execs[eid], "exec_create")
    return Response(201, {"Id": eid})


def _event(req: Request, e: _Exec, action: str) -> None:
    """dockerd's exec events: ``exec_create: CMD``, ``exec_start: CMD`` and ``exec_die``
    (with its exit code), on the container, naming the exec instance."""
    from cove.sys import events

    attrs = {"execID": e.id, "image": e.image, "name": e.name}
    if action == "exec_die":
        attrs["exitCode"] = str(e.exit_code)
    else:
        action = f"{action}: {' '.join(e.config['Cmd'])}"
    events.emit(req.root, "container", action, e.container, attrs)


def _options(e: _Exec, detach: bool, tty: bool) -> ExecOptions:
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
            _event(req, e, "exec_die")
            raise ApiError(400 if err.exit_code in (126, 127) else 500, str(err)) from err
        e.pid, e.running = s.pid, True
        _event(req, e, "exec_start")
        threading.Thread(target=_reap, args=(req, e, s), daemon=True).start()
        return Response(200, raw=b"", content_type="application/json")
    req.ce.get(e.container)  # a 404 before the upgrade
    # the 101 goes out alone, before the process can write (docker-py loses bytes that
    # arrive with it); then the process starts
    h = req.hijack()
    try:
        s = _spawn(req, e, False, tty)
    except ContainerStartError as err:
        e.exit_code = err.exit_code
        _event(req, e, "exec_die")
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
    _event(req, e, "exec_start")
    if s.pty_master is not None:
        e.pty_master = s.pty_master
        status = _pump_tty(s, h, e.config["AttachStdin"])
    else:
        status = _pump_pipes(s, h, e.config)
    from cove.runtime.api import exit_status

    e.exit_code = exit_status(status)
    e.running = False
    e.pty_master = -1
    _event(req, e, "exec_die")
    h.close_write()
    return None


def _reap(req: Request, e: _Exec, s: _Proc) -> None:
    from cove.runtime.api import exit_status

    e.exit_code = exit_status(s.wait())
    e.running = False
    _event(req, e, "exec_die")


def _pump_pipes(s: _Proc, h: Hijacked, conf: dict[str, Any]) -> int:
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
    try:
        return pump(s.outputs, s.pid, NO_LOG, echo, drain_broken=True)
    except ChildProcessError:
        # the fork helper's child spawned it: pump's reaping is not ours to do, its
        # status comes from that child
        return s.wait()


def _feed(h: Hijacked, fd: int) -> None:
    try:
        while True:
            data = h.read()
            if not data:
                break
            write_all(fd, data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # EOF on the client's side: the process reads EOF


def _pump_tty(s: _Proc, h: Hijacked, interactive: bool) -> int:
    """The pty's bytes raw to the client, the client's to the pty, until the process
    exits and its output is read."""
    import select

    assert s.pty_master is not None
    master, pid = s.pty_master, s.pid

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
    finally:
        os.close(pidfd)
        os.close(master)
    return s.wait()


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
