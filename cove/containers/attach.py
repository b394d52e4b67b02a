"""The client end of an attach: framed output from a monitor's socket to our stdio, our
stdin to it, and signals forwarded to whatever process the container runs now.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from cove.containers.lifecycle import alive
from cove.errors import Conflict
from cove.state import Record

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def forward_signals_to(ce: ContainerEngine, cid: str) -> Any:
    """Signals to whatever process the container runs now (it may have restarted)."""
    from cove.sys.terminal import forward_signals

    def current() -> int:
        rec = ce.store.get(cid)
        return rec.pid if alive(rec.pid, rec.start_time) else 0

    return forward_signals(current)


def split_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole frames at the head of ``buf`` from a monitor's attach socket (Docker's
    stdcopy framing: a stream byte, three zero bytes, a big-endian length, the payload) as
    (1 stdout | 2 stderr, the frame with its header), and the partial rest."""
    frames: list[tuple[int, bytes]] = []
    while len(buf) >= 8:
        end = 8 + int.from_bytes(buf[4:8], "big")
        if len(buf) < end:
            break
        frames.append((2 if buf[0] == 2 else 1, buf[:end]))
        buf = buf[end:]
    return frames, buf


def attach_stream(sock: Any, interactive: bool, tty: bool) -> None:
    """Copy a monitor's framed output to our stdout/stderr, our stdin to it, until it ends."""
    import select

    stdin = 0
    saved = None
    if tty and interactive and os.isatty(stdin):
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(stdin)
        ttymod.setraw(stdin)
    buf = b""
    fds = [sock.fileno()] + ([stdin] if interactive else [])
    try:
        while True:
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    break
                frames, buf = split_frames(buf + data)
                for stream, frame in frames:
                    os.write(stream, frame[8:])
            if interactive and stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    fds.remove(stdin)
                    import socket

                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()


def connect_attach(ce: ContainerEngine, rec: Record) -> Any:
    import socket

    dfd = os.open(ce.cdir(rec.id), os.O_PATH | os.O_DIRECTORY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/proc/self/fd/{dfd}/attach.sock")
    except OSError as e:
        s.close()
        raise Conflict(f"cannot attach to container {rec.name}: its monitor is gone") from e
    finally:
        os.close(dfd)
    return s


def resize_tty(rec: Record, height: int, width: int) -> None:
    """Set the window size of a running container's terminal (the API's resize): through
    its process's stdout, the pty's slave (stdin is the pty only with -i); the kernel
    sends SIGWINCH to its foreground process group. A container without a terminal, or
    not running, is left alone."""
    import fcntl
    import struct
    import termios

    if not (height and width) or not alive(rec.pid, rec.start_time):
        return
    if not rec.config.get("Config", {}).get("Tty"):
        return
    try:
        # O_NOCTTY: the server must never acquire the container's terminal as its own
        fd = os.open(f"/proc/{rec.pid}/fd/1", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.isatty(fd):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
    finally:
        os.close(fd)
