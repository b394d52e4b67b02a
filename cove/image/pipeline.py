"""A layer's bytes as a pipeline of threads: read (and store and hash the blob), inflate
(and hash the tar), while the caller's thread unpacks.

Each byte stream is hashed once, by the thread that already holds the bytes: the stage that
reads the blob feeds its sinks (the blob file and its digest), the stage that decompresses
feeds the diff id's hash. zlib/isal, hashlib and file writes release the GIL on large
buffers, so the stages run on separate cores. Queues between stages are bounded: a slow
consumer holds its producers back, and no layer is held in memory.

A stage that fails passes its exception down the pipe, and the consumer raises it where it
reads; a consumer that gives up stops the stages above it (``Pipeline.stop``), which then end
without reading further.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from cove.image.streams import CHUNK, Sink

_DEPTH = 8  # chunks (of up to CHUNK bytes) queued between two stages
_POLL = 0.1  # seconds between looks at the stop flag while a queue is full or empty


class Cancelled(Exception):
    """The consumer stopped this stage."""


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class QueueReader:
    """The file-like end of a stage's queue; ``stop`` (the reading stage's flag) ends a wait."""

    def __init__(self, q: queue.Queue[Any], stop: threading.Event | None) -> None:
        self._q = q
        self.stop = stop
        self._buf = b""
        self._off = 0
        self._eof = False
        self._error: BaseException | None = None  # what ended the stream, raised again

    def _next(self) -> bool:
        """Refill the buffer; False at the end of the stream."""
        if self._error is not None:
            raise self._error
        if self._eof:
            return False
        while True:
            try:
                item = self._q.get(timeout=_POLL) if self.stop is not None else self._q.get()
                break
            except queue.Empty:
                if self.stop is not None and self.stop.is_set():
                    raise Cancelled() from None
        if isinstance(item, _Failed):
            self._eof, self._error = True, item.exc
            raise item.exc
        if not item:
            self._eof = True
            return False
        self._buf, self._off = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._off :]]
            self._buf, self._off = b"", 0
            while self._next():
                parts.append(self._buf)
                self._buf = b""
            return b"".join(parts)
        if self._off >= len(self._buf) and not self._next():
            return b""
        if self._off == 0 and n >= len(self._buf):
            out = self._buf
        else:
            out = self._buf[self._off : self._off + n]
        self._off += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class Stage:
    """A thread reading ``src`` to its end: every chunk goes to ``sinks``, then downstream."""

    def __init__(self, src: Any, sinks: list[Sink], name: str,
                 stop: threading.Event | None = None,
                 at_end: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.stop = stop or threading.Event()
        self._at_end = at_end  # run here once the source is read whole
        self._q: queue.Queue[Any] = queue.Queue(maxsize=_DEPTH)
        self._thread = threading.Thread(target=self._run, args=(src, sinks), name=name, daemon=True)
        self._reader: QueueReader | None = None

    def start(self) -> Stage:
        self._thread.start()
        return self

    def reader(self, stop: threading.Event | None = None) -> QueueReader:
        """The one reader of this stage's output (``stop``: the reading stage's flag)."""
        if self._reader is None:
            self._reader = QueueReader(self._q, stop)
        return self._reader

    def _run(self, src: Any, sinks: list[Sink]) -> None:
        try:
            while not self.stop.is_set():
                data = src.read(CHUNK)
                if not data:
                    break
                for sink in sinks:
                    sink.write(data)
                self._put(data)
            if self._at_end is not None and not self.stop.is_set():
                self._at_end()
            self._put(b"")
        except BaseException as e:
            self._put(_Failed(e))

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self._q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def join(self) -> None:
        self._thread.join()


class Pipeline:
    """Stages from the source down; the caller reads ``out``."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def add(self, src: Any, sinks: list[Sink], name: str,
            at_end: Callable[[], None] | None = None) -> QueueReader:  # fmt: skip
        """A stage reading ``src`` (the previous stage's reader, or the source); ``at_end``
        runs in its thread after the source's last byte."""
        stage = Stage(src, sinks, name, at_end=at_end)
        if self.stages:
            self.stages[-1].reader().stop = stage.stop
        self.stages.append(stage)
        stage.start()
        return stage.reader()

    @property
    def out(self) -> QueueReader:
        return self.stages[-1].reader()

    def finish(self) -> None:
        """After ``out`` reached its end: every stage has ended."""
        for stage in self.stages:
            stage.join()

    def drain_source(self) -> None:
        """Stop every stage but the first, then read the first to its end here (its sinks
        see the whole source): raises what the first stage raises."""
        for stage in self.stages[1:]:
            stage.stop.set()
            stage.join()
        first = self.stages[0].reader()
        first.stop = None
        first.drain()

    def stop(self) -> None:
        """Stop every stage and wait for their threads: none uses a sink after this."""
        for stage in self.stages:
            stage.stop.set()
        for stage in self.stages:
            stage.join()
