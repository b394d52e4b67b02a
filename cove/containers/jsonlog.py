"""Docker's json-file log driver, the writer half: one JSON object per line, rotated.

Imported by the monitor, so it imports only C modules (the monitor's RSS is the cost of
every idle container); foreground runs and ``run --vm`` write the same format through it.
The reader is ``cove.logs``.
"""

from __future__ import annotations

import _json
import os
import time

_ENCODE = _json.encode_basestring_ascii
_STREAMS = (b"stdout", b"stderr")
_MAX_LINE = 16 * 1024  # Docker splits longer lines into partial log entries


def _timestamp() -> bytes:
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z").encode()


class Log:
    """Docker's json-file driver: one JSON object per line, rotated at ``max_size``."""

    def __init__(self, path: str, max_size: int, max_file: int) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max_file
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.partial: dict[int, bytes] = {0: b"", 1: b""}

    def feed(self, stream: int, data: bytes) -> None:
        """Bytes as they come: one entry per line (and per 16 KiB of a longer one)."""
        buf = self.partial[stream] + data
        while True:
            # a newline only within the first 16 KiB ends an entry there: a longer line is
            # cut at 16 KiB even when its newline came in the same read (Docker's copier)
            nl = buf.find(b"\n", 0, _MAX_LINE)
            if nl >= 0:
                self.write(stream, buf[: nl + 1])
                buf = buf[nl + 1 :]
            elif len(buf) >= _MAX_LINE:
                self.write(stream, buf[:_MAX_LINE])
                buf = buf[_MAX_LINE:]
            else:
                break
        self.partial[stream] = buf

    def flush(self, stream: int) -> None:
        if self.partial[stream]:
            self.write(stream, self.partial[stream])
            self.partial[stream] = b""

    def write(self, stream: int, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        line = b'{"log":%s,"stream":"%s","time":"%s"}\n' % (
            _ENCODE(text).encode(),
            _STREAMS[stream],
            _timestamp(),
        )
        if self.max_size and self.size + len(line) > self.max_size and self.size:
            self._rotate()
        os.write(self.fd, line)
        self.size += len(line)

    def _rotate(self) -> None:
        if self.max_file <= 1:
            os.ftruncate(self.fd, 0)
        else:
            for n in range(self.max_file - 1, 0, -1):
                src = self.path if n == 1 else f"{self.path}.{n - 1}"
                if os.path.exists(src):
                    os.rename(src, f"{self.path}.{n}")
            os.close(self.fd)
            self.fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        self.size = 0
