"""Process identity: a pid names the process we recorded only together with its start time.

Every pid cove keeps (a container's init, its monitor, an op owner, QEMU) is stored with
field 22 of /proc/PID/stat, so a pid reused after the process died is never signalled.
"""

from __future__ import annotations


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[19])


def zombie(pid: int) -> bool:
    """Exited but not reaped yet (or gone): state Z or X."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] in (b"Z", b"X")


def alive(pid: int, start_time: int) -> bool:
    """``pid`` is still the process that had ``start_time`` (not a reused pid) and has not
    exited (not a zombie)."""
    return pid > 0 and start_time > 0 and proc_start_time(pid) == start_time and not zombie(pid)
