"""Start-path step timings for bench/start.py (issue 20): with ``COVE_TRACE_START=1`` in the
environment each ``mark(step)`` notes ``time.perf_counter_ns()`` and ``dump()`` writes them to
stderr at exit, one ``cove-trace STEP NS`` line each. perf_counter is CLOCK_MONOTONIC on
Linux, one clock for every process, so the bench subtracts its own reading taken before the
spawn to get the interpreter's start. Off (the default) a mark is one falsy check: no
imports, no clock read, nothing written.
"""

from __future__ import annotations

import os
import time

ENV = "COVE_TRACE_START"
_on = bool(os.environ.get(ENV))
_marks: list[tuple[str, int]] = []


def mark(step: str) -> None:
    """The end of ``step`` (the time since the previous mark is that step's)."""
    if _on:
        _marks.append((step, time.perf_counter_ns()))


def dump() -> None:
    """The marks to stderr in one write (a partial trace if the command failed)."""
    if _on and _marks:
        os.write(2, "".join(f"cove-trace {s} {ns}\n" for s, ns in _marks).encode())
        _marks.clear()
