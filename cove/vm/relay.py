"""The supervisor's side of a vm run's agent ports (virtio serial, files and sockets in
the run's directory, ``qemu.RunFiles``): the command's stdout and stderr relayed to the
json-file log and our own output, its exit code read from ``cove.exit``, signals passed to
it over ``cove.ctl`` and our stdin copied to ``cove.stdin``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from cove.vm import qemu as qcmd

# what the supervisor passes on to the command (stop signals, kill -s, Ctrl-C); not the ones
# the kernel or the terminal use for the supervisor itself
RELAYED = tuple(
    s for s in signal.valid_signals()
    if isinstance(s, signal.Signals) and s not in {
        signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGCONT, signal.SIGTSTP,
        signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGURG, signal.SIGSEGV,
        signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGPIPE, signal.SIGPROF,
        signal.SIGVTALRM, signal.SIGSYS, signal.SIGTRAP, signal.SIGXCPU, signal.SIGXFSZ,
    } and s < signal.SIGRTMIN
)  # fmt: skip
PUNCH = 4 << 20  # bytes of relayed output after which their blocks are freed


def _punch(fd: int, length: int) -> None:
    """Free the first ``length`` bytes' blocks: the output files stay sparse however long
    a run talks. Best effort (a file system without hole punching keeps them)."""
    from cove.sys import syscalls as sc

    with contextlib.suppress(OSError):
        sc.fallocate(fd, sc.FALLOC_FL_PUNCH_HOLE | sc.FALLOC_FL_KEEP_SIZE, 0, length)


class Relay:
    """One run's relay, from QEMU's start to its exit."""

    def __init__(
        self,
        files: qcmd.RunFiles,
        qemu: subprocess.Popen[bytes],
        interactive: bool,
        ctl: Any = None,
    ) -> None:
        self.files = files
        self.qemu: subprocess.Popen[bytes] | None = qemu
        self.interactive = interactive
        self._ctl: Any = ctl  # the connected control socket (a restore connects it first)

    def run(
        self,
        echo: Callable[[int, bytes], None] | None,
        log: Any,
        event: Callable[[str], None] | None = None,
    ) -> int:
        """Relay the command's output until QEMU exits; the command's exit code. SIGINT and
        SIGTERM are passed to the command in the guest; a second one stops the VM.
        ``event("up")`` when the agent's first message arrives (the command starts),
        ``event("exit")`` when its exit code does."""
        assert self.qemu is not None
        files = self.files
        exit_port = open(files.exit, "rb")
        said = b""
        pending: list[str] = []
        forwarded = [0]

        def on_signal(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                forwarded[0] += 1
                if forwarded[0] > 2 and self.qemu is not None:
                    self.qemu.kill()  # a third Ctrl-C: the guest is not listening
            pending.append(signal.Signals(signum).name.removeprefix("SIG"))

        old = {s: signal.signal(s, on_signal) for s in RELAYED}
        streams = [(open(files.stdout, "rb"), 0), (open(files.stderr, "rb"), 1)]
        punched = [0, 0]
        # hole punching needs a writable descriptor; reading keeps the other
        writable = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in (files.stdout, files.stderr)]
        self._connect_ctl()  # before the guest reads the port: it sees the host side open
        stdin_relay = self._stdin_relay() if self.interactive else None
        try:
            while True:
                exited = self.qemu.poll() is not None
                moved = False
                for f, stream in streams:
                    data = f.read(65536)
                    if data:
                        moved = True
                        log.feed(stream, data)
                        if echo is not None:
                            echo(stream, data)
                        done = f.tell() & ~(PUNCH - 1)
                        if done - punched[stream] >= PUNCH:
                            # what was relayed leaves the disk; QEMU writes on at its offset
                            _punch(writable[stream], done)
                            punched[stream] = done
                news = exit_port.read()
                if news and event is not None:
                    said += news
                    *lines, said = said.split(b"\n")
                    for line in lines:
                        event("up" if line.strip() == b"up" else "exit")
                while pending:
                    self._send_ctl(pending.pop(0))
                if exited and not moved:
                    break
                if not moved:
                    time.sleep(0.01)
            for _, stream in streams:
                log.flush(stream)
        finally:
            exit_port.close()
            for f, _ in streams:
                f.close()
            for fd in writable:
                os.close(fd)
            for s, h in old.items():
                signal.signal(s, h)
            if stdin_relay is not None:
                stdin_relay.join(timeout=0)
        try:
            with open(files.exit) as ef:
                text = ef.read().strip().splitlines()
            if text and text[-1] != "up":  # "up" alone: the command never reported its end
                return int(text[-1])
        except (OSError, ValueError):
            pass
        rc = self.qemu.returncode
        return 128 - rc if rc is not None and rc < 0 else 255  # killed: 137 for SIGKILL

    def _connect_ctl(self) -> None:
        if self._ctl is None:
            self._ctl = connect_ctl(self.files.ctl)

    def _send_ctl(self, sig: str) -> None:
        self._connect_ctl()
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.sendall(f"{sig}\n".encode())

    def _stdin_relay(self) -> Any:
        """Copy our stdin to the guest's cove.stdin port; closing it is the command's EOF."""
        import socket
        import threading

        def pump() -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            deadline = time.monotonic() + 30
            while True:
                try:
                    s.connect(self.files.stdin)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.02)
            with s:
                seen = b""
                while b"ready\n" not in seen:  # the guest opened its stdin port
                    chunk = s.recv(64)
                    if not chunk:
                        return
                    seen += chunk
                while True:
                    try:
                        data = os.read(0, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    with contextlib.suppress(OSError):
                        s.sendall(data)
                # the port sees the host side close: the guest reads end of file
                time.sleep(0.5)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        return t


def connect_ctl(path: str, timeout: float = 5.0) -> Any:
    """A connection to a run's ``cove.ctl`` socket (QEMU's chardev server), or None."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
