"""The server's fork helper: a single-threaded process, forked by ``cove serve`` before any
thread exists, that has the container start, exec and cp paths imported and forks one
child per request to run them (as multiprocessing's forkserver does).

Why: the engine's start, exec and cp fork, and their children keep running Python (sqlite,
imports). Forked from the threaded server, such a child can inherit a lock another thread
held at that instant and hang forever; a fresh interpreter per start (cove.api.launch) is
safe but costs ~100-150 ms of interpreter and imports. A fork of this helper costs a few.

Protocol: the server and the helper share one ``SOCK_SEQPACKET`` socketpair (the control
socket; nobody else holds it, so the helper takes requests from the server only). Each
request is one message: a JSON header ``{"op", "root", ...}`` with, as SCM_RIGHTS, the child's
end of a fresh per-request socketpair (the reply channel) and the op's fds. The child answers
on the reply channel with JSON messages, passing fds back the same way; its exit closes it.

The children are the CLI's: ``ContainerEngine(Engine(root))`` and its verbs, so a started
container has the same root and the same monitor (double-forked into its own session: it
outlives the helper and the server). If the helper dies, the server re-creates it from a
fresh interpreter (``python -P -m cove.api.forkserver FD``: an exec, safe from a thread), and
if that fails starts containers through cove.api.launch, with a logged warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

from cove import errors

if TYPE_CHECKING:  # imported by the helper's preload and the child, not at import
    from cove.containers.engine import ContainerEngine

_MAX_FDS = 8
# a message longer than this goes in a memfd sent with a small header: a SEQPACKET message
# must fit the sender's socket buffer (net.core.wmem_default, ~208 KiB), and a docker exec's
# env and argv alone may reach the kernel's ~2 MiB
_MSG = 1 << 16
# the largest request taken (an answer to anything bigger says so; the helper keeps serving)
_MAX_MSG = 16 << 20


class HelperGone(Exception):
    """The request could not be handed to a helper (dead, and not re-created)."""


class TooBig(ValueError):
    """A message over _MAX_MSG, consumed; ``fds``: those it carried, still open."""

    def __init__(self, size: int, fds: list[int]) -> None:
        super().__init__(f"fork helper: a request of {size} bytes (the limit is {_MAX_MSG})")
        self.fds = fds


def module_argv(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` for a fresh interpreter the server starts. ``-P``: no
    current directory (nor the script's) first on sys.path, so a ``json.py`` in the
    directory root started ``cove serve`` from (maybe /tmp, writable by all) is never
    imported as root; the environment (PYTHONPATH, the venv) still counts, as for the
    server itself."""
    return [sys.executable, "-P", "-m", module, *args]


def _send(sock: socket.socket, doc: dict[str, Any], fds: list[int] = []) -> None:  # noqa: B006
    data = json.dumps(doc).encode()
    if len(data) > _MSG:
        body = os.memfd_create("cove-fork-request", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(body, view) :]
            socket.send_fds(sock, [json.dumps({"memfd": len(data)}).encode()], [body, *fds])
        finally:
            os.close(body)
    elif fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds it carried; (None, []) at EOF. TooBig (the message consumed,
    its fds in it) for one over _MAX_MSG, inline or in a memfd."""
    # its length first: with MSG_TRUNC a SEQPACKET recv returns the whole message's length
    # (MSG_PEEK leaves it, and its fds, queued); a short buffer would silently cut it
    size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    data, fds, _flags, _addr = socket.recv_fds(sock, max(1, min(size, _MAX_MSG)), _MAX_FDS)
    for fd in fds:
        # SCM_RIGHTS fds arrive inheritable: none may reach a container's process by
        # accident (the start path marks inheritable what it hands on)
        os.set_inheritable(fd, False)
    if size > _MAX_MSG:
        raise TooBig(size, fds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    doc = json.loads(data)
    if isinstance(doc, dict) and set(doc) == {"memfd"} and fds:
        body, fds = fds[0], fds[1:]
        try:
            size = int(doc["memfd"])
            if size > _MAX_MSG:
                raise TooBig(size, fds)
            whole = bytearray()
            while len(whole) < size and (chunk := os.pread(body, size - len(whole), len(whole))):
                whole += chunk
            doc = json.loads(whole)
        finally:
            os.close(body)
    return doc, fds


def error_doc(e: BaseException) -> dict[str, Any]:
    """A failure as the server re-raises it (raise_error): its class name, message, code."""
    from cove.runtime.api import ContainerStartError

    if isinstance(e, ContainerStartError):
        return {"kind": "ContainerStartError", "message": str(e), "code": e.exit_code}
    if isinstance(e, errors.CoveError):
        return {"kind": type(e).__name__, "message": str(e)}
    return {"kind": "CoveError", "message": f"{type(e).__name__}: {e}"}


def raise_error(doc: dict[str, Any]) -> None:
    """Raise the failure ``error_doc`` described, as the same class where it is cove's."""
    if doc.get("kind") == "ContainerStartError":
        from cove.runtime.api import ContainerStartError

        raise ContainerStartError(doc["message"], int(doc.get("code", 125)))
    kind = getattr(errors, str(doc.get("kind")), errors.CoveError)
    if not (isinstance(kind, type) and issubclass(kind, errors.CoveError)):
        kind = errors.CoveError
    if kind is errors.HostToolFailed:
        raise errors.HostToolFailed(doc["message"], "start")
    raise kind(doc["message"])


# -- the helper's side -------------------------------------------------------------------


# what the children run: imported once here, so each child forks ready (a name that
# fails to import only costs that child the time to import it)
PRELOAD = (
    "cove.containers.engine",
    "cove.containers.attach",
    "cove.containers.exec",
    "cove.containers.files",
    "cove.containers.start",
    "cove.containers.startup",
    "cove.engine",
    "cove.runtime.api",
    "cove.sys.overlay",
    "cove.vm.isolation",
    # what the forks below a child import (strace of openat on a served run): the
    # runtime's init and its seccomp, the exec path, the bridge network's manager
    "cove.bundle",
    "cove.image.files",
    "cove.network.manager",
    "cove.runtime.execstub",
    "cove.runtime.init",
    "cove.runtime.seccomp",
    "cove.runtime.seccomp_default",
    "cove.spec.flags",
    "cove.sys.safepath",
)


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from cove.containers.isolation import register
    from cove.vm.isolation import VM

    register(VM())  # as the CLI does: a vm run's container starts through its driver


def helper_main(ctl_fd: int, verbose: bool, close: tuple[int, ...] = ()) -> None:
    """The helper's loop: one forked child per request until the server's end closes.
    ``close``: the server's fds not for us (a socket-activated listening socket; the
    server forks us before it opens any other)."""
    ctl = socket.socket(fileno=ctl_fd)
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's ^C: the server stops us
    _preload()
    me = os.getpid()
    served = 0
    while True:
        ready, _, _ = select.select([ctl], [], [], 1.0)
        _reap()
        if not ready:
            continue
        try:
            doc, fds = recv(ctl)
        except TooBig as e:
            _refuse(e)  # consumed whole: the next request is read as one
            continue
        except (ConnectionError, ValueError):
            doc, fds = None, []
        if doc is None:
            os._exit(0)  # the server is gone
        served += 1
        pid = os.fork()
        if pid == 0:
            ctl.close()
            code = 1
            try:
                code = _child(doc, fds)
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        if verbose:
            what = f"{doc.get('op')} {doc.get('cid', '')}".strip()
            line = f"cove serve: fork helper {me}: {what} in child {pid} (#{served})\n"
            os.write(2, line.encode())


def _refuse(e: TooBig) -> None:
    """A request too big to take: its error on its reply channel (its first fd); its fds
    closed."""
    if e.fds:
        with socket.socket(fileno=e.fds[0]) as reply, contextlib.suppress(OSError):
            _send(reply, {"error": {"kind": "InvalidSpec", "message": str(e)}})
    for fd in e.fds[1:]:
        os.close(fd)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(doc: dict[str, Any], fds: list[int]) -> int:
    """One request, in a child of the helper; its answer on ``fds[0]``."""
    reply = socket.socket(fileno=fds[0])
    # its own process group: a group signal meant for the server (its ^C, the test's
    # killpg) does not cut a start in half
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # the monitor inherits 0-2: never the server's log or terminal
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    from cove.containers.engine import ContainerEngine
    from cove.engine import Engine

    try:
        ce = ContainerEngine(Engine(doc["root"]))
        op = doc["op"]
        if op == "start":
            attach = fds[1] if len(fds) > 1 else -1
            try:
                ce.start(doc["cid"], attach_fd=attach)
            finally:
                if attach >= 0:
                    os.close(attach)
            _send(reply, {"ok": True})
        elif op == "exec":
            _exec(ce, doc, reply)
        elif op == "stat":
            from cove.containers.files import stat_path

            _send(reply, {"ok": True, "doc": stat_path(ce, doc["cid"], doc["path"])})
        elif op == "archive_get":
            _archive_get(ce, doc, fds[1])
            _send(reply, {"ok": True})
        elif op == "archive_put":
            from cove.containers.files import archive_put

            with os.fdopen(fds[1], "rb") as body:
                archive_put(ce, doc["cid"], doc["path"], body)
            _send(reply, {"ok": True})
        else:
            raise errors.CoveError(f"fork helper: unknown request {op!r}")
        return 0
    except BaseException as e:
        with contextlib.suppress(OSError):
            _send(reply, {"error": error_doc(e)})
        return 1


def _archive_get(ce: ContainerEngine, doc: dict[str, Any], fd: int) -> None:
    """The tar, chunked, straight onto the client's connection (``fd``, a dup of it)."""
    from cove.api.server import Chunks
    from cove.containers.files import archive_get

    conn = socket.socket(fileno=fd)
    try:
        chunks = Chunks(conn)
        archive_get(ce, doc["cid"], doc["path"], chunks)
        chunks.close()
    finally:
        conn.close()


def _exec(ce: ContainerEngine, doc: dict[str, Any], reply: socket.socket) -> None:
    """The engine's exec; its fds (pty master, or pipes) to the server, then, as its
    subreaper (the runtime makes us one), its wait status once it exits."""
    from cove.containers.exec import ExecOptions, spawn

    s = spawn(ce, doc["cid"], ExecOptions(**doc["options"]))
    if s.pty_master is not None:
        fds = [s.pty_master]
    else:
        fds = [*s.outputs]
        if s.stdin_w >= 0:
            fds.append(s.stdin_w)
    head = {"ok": True, "pid": s.pid, "pty": s.pty_master is not None,
            "outputs": [s.outputs[fd] for fd in s.outputs], "stdin": s.stdin_w >= 0}  # fmt: skip
    try:
        _send(reply, head, fds)
    finally:
        for fd in fds:
            os.close(fd)
    # its status without reaping it: until the server closes the channel (it has read the
    # status, so it is done with its pidfd on the pid), the pid stays ours and cannot be
    # reused by another process
    info = os.waitid(os.P_PID, s.pid, os.WEXITED | os.WNOWAIT)
    if info is None:  # not possible without WNOHANG; typed as Optional
        status = 255 << 8
    elif info.si_code == os.CLD_EXITED:
        status = info.si_status << 8
    else:  # killed (with a core: 0x80)
        status = info.si_status | (0x80 if info.si_code == os.CLD_DUMPED else 0)
    with contextlib.suppress(OSError):
        _send(reply, {"status": status})
        reply.recv(1)  # EOF: the server is done with the pid
    os.waitpid(s.pid, 0)


# -- the server's side -------------------------------------------------------------------


class ForkServer:
    """The server's handle on its helper: thread-safe requests, re-creation on death."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.lock = threading.Lock()
        self.ctl: socket.socket | None = None
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def fork(self, close: tuple[int, ...] = ()) -> None:
        """The first helper, forked (its pages shared copy-on-write with ours): call before
        any thread exists; with threads, a fresh interpreter instead."""
        if threading.active_count() != 1:
            with self.lock:
                self._respawn()
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                mine.close()
                helper_main(theirs.detach(), self.verbose, close)
            finally:
                os._exit(1)
        theirs.close()
        self.ctl, self.pid = mine, pid
        sys.stderr.write(f"cove serve: fork helper {pid} ready\n")

    def _respawn(self) -> None:
        """A new helper from a fresh interpreter (fork+exec: safe from a thread)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = theirs.fileno()
        argv = module_argv("cove.api.forkserver", str(fd), *(["--verbose"] if self.verbose else []))
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.ctl, self.pid = mine, self.proc.pid
        sys.stderr.write(f"cove serve: fork helper {self.pid} ready (re-created)\n")

    def _alive(self) -> bool:
        if self.ctl is None or not self.pid:
            return False
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def _drop(self, why: str) -> None:
        sys.stderr.write(f"cove serve: warning: fork helper {self.pid} is gone ({why})\n")
        if self.ctl is not None:
            self.ctl.close()
        self.ctl, self.pid, self.proc = None, 0, None

    def request(self, doc: dict[str, Any], fds: list[int] = []) -> socket.socket:  # noqa: B006
        """Hand ``doc`` (with ``fds``, still ours to close) to a child of the helper; the
        reply channel. HelperGone if no helper could take it."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self.lock:
                for attempt in (1, 2):
                    if not self._alive():
                        if self.ctl is not None:
                            self._drop("exited")
                        try:
                            self._respawn()
                        except OSError as e:
                            raise HelperGone(f"cannot re-create the fork helper: {e}") from e
                    assert self.ctl is not None
                    try:
                        _send(self.ctl, doc, [theirs.fileno(), *fds])
                        return mine
                    except OSError as e:
                        self._drop(str(e))
                        if attempt == 2:
                            raise HelperGone(f"the fork helper took no request: {e}") from e
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        raise HelperGone("unreachable")

    def call(self, doc: dict[str, Any], fds: list[int] = []) -> dict[str, Any]:  # noqa: B006
        """A request with one answer; its failure raised here as the child raised it."""
        with self.request(doc, fds) as reply:
            answer, extra = recv(reply)
        for fd in extra:
            os.close(fd)
        return check(answer, doc)

    def close(self) -> None:
        with self.lock:
            if self.ctl is not None:
                self.ctl.close()  # the helper reads EOF and exits
                self.ctl = None
            if self.proc is not None:
                self.proc.wait()
            elif self.pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
            self.pid = 0


def check(answer: dict[str, Any] | None, doc: dict[str, Any]) -> dict[str, Any]:
    if answer is None:
        raise errors.CoveError(
            f"cannot {doc.get('op')} {doc.get('cid', '')}: the fork helper's child exited "
            "without an answer"
        )
    if "error" in answer:
        raise_error(answer["error"])
    return answer


_server: ForkServer | None = None


def install(fs: ForkServer | None) -> None:
    global _server
    _server = fs


def current() -> ForkServer | None:
    """The running server's helper (None outside ``cove serve``, or in tests of faces)."""
    return _server


if __name__ == "__main__":
    helper_main(int(sys.argv[1]), "--verbose" in sys.argv[2:])
