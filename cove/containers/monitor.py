"""The per-container monitor: a small process that is the container's parent (conmon's role).

It runs in its own session, double-forked away from the cove command that started it,
as a fresh interpreter that imports only C modules (its RSS is the cost of every idle
container). It pumps the container's stdout/stderr into Docker's json-file log and to
attached clients, reaps the container, and applies the restart policy and health checks.
Everything heavy (the runtime, SQLite) happens in short-lived forked helpers from
``cove.supervise``, so their imports never stay resident here.

Arguments are ``key=value`` words (see ``Options``); fd numbers come from the launcher.
"""

from __future__ import annotations

import _signal
import _socket
import os
import select
import sys
import time

# the json-file writer: a C-modules-only module as this one (foreground runs share it)
from cove.containers.jsonlog import Log


class Options:
    def __init__(self, argv: list[str]) -> None:
        kv = dict(a.split("=", 1) for a in argv)
        self.root = kv["root"]
        self.cid = kv["cid"]
        # the first start's helper, forked by the launcher before it became us:
        # "out_r,err_r,in_w,sock,pid"
        self.first = [int(x) for x in kv["first"].split(",")] if kv.get("first") else []
        self.status_fd = int(kv["status"])
        self.log = kv["log"]
        self.max_size = int(kv.get("max_size", "0"))
        self.max_file = max(1, int(kv.get("max_file", "1")))
        self.tty = kv.get("tty") == "1"
        self.stdin = kv.get("stdin") == "1"
        # docker run -i (not -d): the first attached client's EOF closes the container's stdin
        self.stdin_once = kv.get("stdin_once") == "1"
        self.restart = kv.get("restart", "no")
        self.restart_max = int(kv.get("restart_max", "0"))
        self.health_interval = float(kv.get("health_interval", "0"))
        self.attach_fd = int(kv.get("attach", "-1"))
        self.cdir = os.path.join(self.root, "containers", self.cid)


class Monitor:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.log = Log(opts.log, opts.max_size, opts.max_file)
        self.reaped: dict[int, int] = {}
        self.clients: list[_socket.socket] = []
        self.half_closed: list[_socket.socket] = []
        self.outputs: dict[int, int] = {}  # fd -> stream (0 stdout, 1 stderr)
        self.stdin_w = -1
        self.pty = -1
        self.pid = 0
        self.health_pid = 0
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(self.wake_w)
        _signal.signal(_signal.SIGCHLD, lambda *_: None)
        _signal.signal(_signal.SIGUSR1, lambda *_: None)  # "look again": sent by stop/rm
        self.listener = self._listen()
        if opts.attach_fd >= 0:
            first = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, opts.attach_fd)
            first.setblocking(False)
            self.clients.append(first)

    # -- attach socket ------------------------------------------------------

    def _listen(self) -> _socket.socket:
        """A unix socket in the bundle; bound through /proc/self/fd so long roots still fit."""
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        dfd = os.open(self.o.cdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            path = f"/proc/self/fd/{dfd}/attach.sock"
            if os.path.exists(path):
                os.unlink(path)
            s.bind(path)
            # root's alone whatever the umask (connecting needs write access); the bundle
            # around it is private too, so nobody reaches it between bind and chmod
            os.chmod(path, 0o600)
        finally:
            os.close(dfd)
        s.listen(8)
        s.setblocking(False)
        return s

    def _accept(self) -> None:
        try:
            conn, _ = self.listener._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return
        client = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, conn)
        client.setblocking(False)
        self.clients.append(client)

    def _client_input(self, c: _socket.socket) -> None:
        try:
            data = c.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        target = self.pty if self.pty >= 0 else self.stdin_w
        if not data:
            # the client closed its input (stdin ended): it still gets the output
            self.half_closed.append(c)
            if target == self.stdin_w and target >= 0 and self.o.stdin_once:
                os.close(self.stdin_w)  # the attached stdin closed: the container sees EOF
                self.stdin_w = -1
            return
        if target >= 0:
            try:
                os.write(target, data)
            except OSError:
                pass

    def _drop(self, c: _socket.socket) -> None:
        if c in self.clients:
            self.clients.remove(c)
        if c in self.half_closed:
            self.half_closed.remove(c)
        c.close()

    def _broadcast(self, stream: int, data: bytes) -> None:
        frame = bytes((stream + 1, 0, 0, 0)) + len(data).to_bytes(4, "big") + data
        for c in list(self.clients):
            # never block on a client: one that cannot keep up is dropped (the log has it all)
            try:
                sent = c.send(frame)
            except OSError:
                sent = 0
            if sent != len(frame):
                self._drop(c)

    # -- output -------------------------------------------------------------

    def _output(self, fd: int, stream: int) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""  # EIO: the pty's last holder closed it
        if not data:
            self._flush(stream)
            return False
        self._broadcast(stream, data)
        self.log.feed(stream, data)
        return True

    def _flush(self, stream: int) -> None:
        self.log.flush(stream)

    # -- children -------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.health_pid:
                self.health_pid = 0  # its result is in the database; the status is not needed
                continue
            self.reaped[pid] = status

    def _wait(self, pid: int) -> int:
        while pid not in self.reaped:
            try:
                got, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return 255 << 8
            except InterruptedError:
                continue
            self.reaped[got] = status
        return self.reaped.pop(pid)

    def _helper(self, name: str, *args: str) -> int:
        """Run ``cove.supervise.<name>`` in a forked child; returns its exit status."""
        pid = os.fork()
        if pid == 0:
            try:
                from cove.containers import supervise

                code = getattr(supervise, name)(self.o.root, self.o.cid, *args)
            except BaseException as e:
                os.write(2, f"cove-monitor: {name}: {e}\n".encode())
                code = 125
            os._exit(code)
        status = self._wait(pid)
        return os.waitstatus_to_exitcode(status) if status >= 0 else 255

    # -- one run of the container ----------------------------------------------

    def _start(self, pre: list[int] | None = None) -> str:
        """Create and start the container in a helper; '' or the error line."""
        if pre:
            out_r, err_r, in_w, sockfd, pid = pre
            left = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, sockfd)
        else:
            out_r, err_r, in_w, left, pid = self._spawn()
        msg, fds = b"", []
        try:
            msg, anc = self._answer(left, pid)
            for level, kind, data in anc:
                if level == _socket.SOL_SOCKET and kind == 1:  # SCM_RIGHTS
                    fds += [int.from_bytes(data[i : i + 4], "little") for i in range(0, 16, 4)][
                        : len(data) // 4
                    ]
        except OSError:
            pass
        left.close()
        self._wait(pid)
        text = msg.decode("utf-8", "replace")
        if not text.startswith("ok "):
            for fd in (out_r, err_r, in_w, *fds):
                if fd >= 0:
                    os.close(fd)
            return text or "125 the container could not be started"
        self.pid = int(text.split()[1])
        self.outputs = {out_r: 0}
        if err_r >= 0:
            self.outputs[err_r] = 1
        if fds:
            os.close(out_r)
            self.pty = fds[0]
            self.outputs = {self.pty: 0}
        self.stdin_w = in_w
        for fd in self.outputs:
            os.set_blocking(fd, False)
        return ""

    def _answer(self, left: _socket.socket, pid: int) -> tuple[bytes, list[tuple[int, int, bytes]]]:
        """The start helper's message, or nothing once it has died without one. Its end of
        the socket is not enough to tell: a container process it forked and that waits in
        "created" holds a copy of it until its execve, so EOF never comes if the helper is
        SIGKILLed then (and this monitor, the start's recorded owner, would wait forever)."""
        while True:
            try:
                ready, _, _ = select.select([left.fileno(), self.wake_r], [], [])
            except InterruptedError:
                continue
            if left.fileno() in ready:
                msg, anc, _flags, _addr = left.recvmsg(4096, 64)
                return msg, anc
            try:
                while os.read(self.wake_r, 64):
                    pass
            except BlockingIOError:
                pass
            self._reap()
            if pid in self.reaped and not select.select([left], [], [], 0)[0]:
                return b"", []

    def _spawn(self) -> tuple[int, int, int, _socket.socket, int]:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = (-1, -1) if self.o.tty else os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if self.o.stdin and not self.o.tty else (-1, -1)
        left, right = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            left.close()
            code = 125
            try:
                from cove.containers import supervise

                code = supervise.start(
                    self.o.root, self.o.cid, (in_r, out_w, err_w), right.fileno()
                )
            except BaseException as e:
                os.write(2, f"cove-monitor: start: {e}\n".encode())
            os._exit(code)
        right.close()
        for fd in (out_w, err_w, in_r):
            if fd >= 0:
                os.close(fd)
        return out_r, err_r, in_w, left, pid

    def _pump(self) -> int:
        """Until the container's process exits: logs, attach clients, health checks."""
        interval = self.o.health_interval
        next_health = time.monotonic() + (interval if interval else 1e18)
        while self.pid not in self.reaped:
            fds = [self.wake_r, self.listener.fileno(), *self.outputs]
            fds += [c.fileno() for c in self.clients if c not in self.half_closed]
            timeout = max(0.0, next_health - time.monotonic())
            try:
                ready, _, _ = select.select(fds, [], [], min(timeout, 3600))
            except InterruptedError:
                continue
            for fd in ready:
                if fd == self.wake_r:
                    while True:
                        try:
                            if not os.read(self.wake_r, 64):
                                break
                        except BlockingIOError:
                            break
                    self._reap()
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd in self.outputs:
                    if not self._output(fd, self.outputs[fd]):
                        del self.outputs[fd]
                        os.close(fd)
                        if fd == self.pty:
                            self.pty = -1
                else:
                    for c in self.clients:
                        if c.fileno() == fd:
                            self._client_input(c)
                            break
            if interval and time.monotonic() >= next_health:
                next_health = time.monotonic() + interval
                if not self.health_pid:
                    self._health()
        status = self.reaped.pop(self.pid)
        # what is still buffered in the pipes belongs to this run; later writers (processes
        # outside the container's pid namespace) are not waited for
        for fd, stream in list(self.outputs.items()):
            while self._output(fd, stream):
                try:
                    if not select.select([fd], [], [], 0)[0]:
                        break
                except OSError:
                    break
            self._flush(stream)
            os.close(fd)
        self.outputs = {}
        self.pty = -1
        if self.stdin_w >= 0:
            os.close(self.stdin_w)
            self.stdin_w = -1
        for c in list(self.clients):
            self._drop(c)
        return status

    def _health(self) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                from cove.containers import supervise

                code = supervise.health(self.o.root, self.o.cid)
            except BaseException as e:
                os.write(2, f"cove-monitor: health: {e}\n".encode())
            os._exit(code)
        self.health_pid = pid

    def _sleep(self, seconds: float) -> None:
        """Back-off before a restart; a signal (stop, rm) cuts it short."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                ready, _, _ = select.select([self.wake_r], [], [], left)
            except InterruptedError:
                continue
            if ready:
                try:
                    while os.read(self.wake_r, 64):
                        pass
                except BlockingIOError:
                    pass
                self._reap()
                if self._helper("should_restart") != 0:
                    return

    def run(self) -> int:
        delay = 0.1
        first = True
        while True:
            err = self._start(self.o.first if first else None)
            if first:
                _report(self.o.status_fd, err or "ok")
                first = False
            if err:
                return 1
            started = time.monotonic()
            status = self._pump()
            if self.health_pid:
                os.kill(self.health_pid, 9)
                self._wait(self.health_pid)
                self.health_pid = 0
            # the helper records the exit and decides: 0 stop, 10 restart
            if self._helper("finish", str(status)) != 10:
                return 0
            if time.monotonic() - started >= 10:
                delay = 0.1  # Docker resets the back-off once a run lasted 10 s
            self._sleep(delay)
            delay = min(delay * 2, 60.0)
            if self._helper("should_restart") != 0:
                self._helper("give_up")
                return 0


def _report(fd: int, text: str) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, text.encode() + b"\n")
    except OSError:
        pass  # the launcher is gone: the container runs anyway
    os.close(fd)


def main(argv: list[str] | None = None) -> None:
    # the launcher made us a child subreaper before execve (the flag survives it): the
    # container's pid 1 is reparented to us when the helper that made it exits
    opts = Options(sys.argv[1:] if argv is None else argv)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    errlog = os.open(
        os.path.join(opts.cdir, "monitor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    os.dup2(errlog, 2)
    os.close(null)
    os.close(errlog)
    os.chdir("/")
    code = Monitor(opts).run()
    try:
        os.unlink(os.path.join(opts.cdir, "attach.sock"))
    except OSError:
        pass
    os._exit(code)
