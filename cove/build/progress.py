"""A build's progress on stderr, and how a build ends on a signal."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import TextIO

from cove.errors import InvalidSpec


class Progress:
    """Step lines on stderr. ``plain`` streams RUN output; ``tty`` keeps one line per step
    and shows a RUN's output only when it fails; ``quiet`` shows nothing but failures."""

    def __init__(self, mode: str, out: TextIO = sys.stderr) -> None:
        if mode == "auto":
            mode = "tty" if out.isatty() else "plain"
        if mode not in ("plain", "tty", "quiet"):
            raise InvalidSpec(f"invalid --progress {mode!r}: want auto, plain or tty")
        self.mode = mode
        self.out = out
        self.label = ""
        self.started = 0.0
        self.buffer = bytearray()

    def note(self, text: str) -> None:
        if self.mode != "quiet":
            self.out.write(f"note: {text}\n")
            self.out.flush()

    def step(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.buffer.clear()
        if self.mode == "plain":
            self.out.write(label + "\n")
        elif self.mode == "tty":
            self.out.write(label + " ...\r")
        self.out.flush()

    def output(self, stream: int, data: bytes) -> None:
        if self.mode == "plain":
            self.out.flush()
            os.write(self.out.fileno(), data)
        else:
            self.buffer += data
            del self.buffer[: -(1 << 16)]  # the tail is what explains a failure

    def finish(self, cached: bool) -> None:
        word = "CACHED" if cached else f"DONE {time.monotonic() - self.started:.2f}s"
        if self.mode == "plain":
            self.out.write(f"{self.label.split(']')[0]}] {word}\n")
        elif self.mode == "tty":
            self.out.write(f"\x1b[2K{self.label} {word}\n")
        self.out.flush()

    def failed(self) -> None:
        if self.mode != "plain" and self.buffer:
            if self.mode == "tty":
                self.out.write(f"\x1b[2K{self.label} ERROR\n")
            self.out.flush()
            os.write(self.out.fileno(), bytes(self.buffer))
        self.out.flush()

    def line(self, text: str) -> None:
        if self.mode != "quiet":
            self.out.write(text + "\n")
            self.out.flush()


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM and SIGHUP end a build like Ctrl-C: through the clean-up paths."""
    import signal

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
