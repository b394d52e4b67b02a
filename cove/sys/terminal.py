"""Terminal and signal plumbing for processes cove runs in the foreground (run, exec)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any


def terminal_size() -> tuple[int, int] | None:
    import shutil

    if not os.isatty(1):
        return None
    size = shutil.get_terminal_size()
    return size.lines, size.columns


@contextlib.contextmanager
def forward_signals(pid: int | Callable[[], int]) -> Iterator[None]:
    """Pass the terminal's signals on to ``pid`` (or to what ``pid()`` says at the time:
    a restarted container has a new process)."""
    import signal

    sigs = [
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ]

    def forward(signum: int, _frame: Any) -> None:
        target = pid() if callable(pid) else pid
        if target > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signum)

    old = {s: signal.signal(s, forward) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def proxy_tty(master: int, pid: int, interactive: bool, tee: Any = None) -> int:
    """Copy between our terminal and the container's pty; returns the wait status."""
    import select
    import signal
    import termios
    import tty

    stdin = 0
    saved = None
    if interactive and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)

    def winch(_s: int, _f: Any) -> None:
        import fcntl

        with contextlib.suppress(OSError):
            size = fcntl.ioctl(1 if os.isatty(1) else stdin, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    old = signal.signal(signal.SIGWINCH, winch)
    try:
        fds = [master] + ([stdin] if interactive else [])
        while True:
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
                if tee is not None:
                    tee(data)
            if stdin in ready and interactive:
                data = os.read(stdin, 65536)
                if not data:
                    fds.remove(stdin)
                    os.write(master, b"\x04")
                else:
                    os.write(master, data)
    finally:
        signal.signal(signal.SIGWINCH, old)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return status


class NoLog:
    """A json-file log stand-in for output nobody keeps (exec, a build's RUN step)."""

    def feed(self, stream: int, data: bytes) -> None:
        pass

    def flush(self, stream: int) -> None:
        pass


NO_LOG = NoLog()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(
    outputs: dict[int, int],
    pid: int,
    log: Any,
    echo: Callable[[int, bytes], None] | None = None,
    *,
    stdin: int = -1,
    drain_broken: bool = True,
) -> int:
    """Copy a process's stdout/stderr pipes (``outputs``: read end -> stream 0 or 1) to our
    fds 1 and 2 (or to ``echo``) and to ``log``, and our stdin into its stdin pipe (``stdin``:
    the write end), until the process exits and what it wrote is read; its wait status.

    The process never holds our own fds (our terminal, if any): only pipes we made. One
    select loop, no threads. Takes ownership of every fd given: ``outputs`` is emptied and
    ``stdin`` closed, pass or fail. EOF on our stdin closes ``stdin`` (the process reads
    EOF); input is buffered one read at a time, so a process that does not read its stdin
    never stalls its output. Once our reader has left (``| head``), ``drain_broken`` keeps
    reading for the log; without it the pipe is closed, so the writer gets SIGPIPE as it
    would writing to our fd directly.
    """
    import fcntl
    import select

    pidfd = os.pidfd_open(pid)
    targets = {0: 1, 1: 2}
    broken: set[int] = set()
    exited = False
    pending = b""
    source = -1  # our stdin (fd 0), while it has not ended
    if stdin >= 0:
        fcntl.fcntl(stdin, fcntl.F_SETFL, fcntl.fcntl(stdin, fcntl.F_GETFL) | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # started with fd 0 closed: the process gets EOF
            if 0 not in outputs and os.fstat(0):
                source = 0

    def feed() -> None:
        nonlocal pending, stdin, source
        try:
            pending = pending[os.write(stdin, pending) :]
        except BlockingIOError:
            return
        except BrokenPipeError:  # the process closed its stdin: stop reading ours
            pending, source = b"", -1
            os.close(stdin)
            stdin = -1

    try:
        while True:
            if stdin >= 0 and (exited or (source < 0 and not pending)):
                os.close(stdin)  # the process ended, or so did our input: it reads EOF
                stdin = -1
            if exited and not outputs:
                break
            rlist = [*outputs] + ([] if exited else [pidfd])
            wlist = []
            if stdin >= 0:
                if pending:
                    wlist.append(stdin)
                elif source >= 0:
                    rlist.append(source)
            try:
                ready, writable, _ = select.select(rlist, wlist, [], 0 if exited else None)
            except InterruptedError:
                continue
            if not ready and not writable:
                break  # it exited and nothing more is waiting: later writers are not ours
            if writable:
                feed()
            for fd in ready:
                if fd == pidfd:
                    exited = True
                    continue
                if fd == 0 and fd not in outputs:
                    if source < 0:
                        continue  # the process closed its stdin meanwhile
                    try:
                        data = os.read(source, 65536)
                    except BlockingIOError:
                        continue  # our stdin is shared and non-blocking: nothing yet
                    except OSError:
                        data = b""  # a hung-up terminal ends the input
                    if data:
                        pending = data
                        feed()
                    else:
                        source = -1
                    continue
                data = os.read(fd, 65536)
                stream = outputs[fd]
                if not data:
                    log.flush(stream)
                    os.close(fd)
                    del outputs[fd]
                    continue
                log.feed(stream, data)
                if echo is not None:
                    echo(stream, data)
                elif stream not in broken:
                    try:
                        _write_all(targets[stream], data)
                    except BrokenPipeError:
                        broken.add(stream)  # our reader left (| head)
                        if not drain_broken:
                            os.close(fd)
                            del outputs[fd]
    finally:
        for fd, stream in outputs.items():
            log.flush(stream)
            os.close(fd)
        outputs.clear()
        if stdin >= 0:
            os.close(stdin)
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return status
