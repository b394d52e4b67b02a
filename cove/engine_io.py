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
