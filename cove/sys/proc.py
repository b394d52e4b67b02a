"""Process identity: a pid names the process we recorded only together with its start time.

Every pid cove keeps (a container's init, its monitor, an op owner, QEMU) is stored with
field 22 of /proc/PID/stat, so a pid reused after the process died is never signalled.
"""

from __future__ import annotations

import os


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
    exited (not a zombie). One read of /proc/PID/stat: ``ps`` asks this twice a container."""
    if pid <= 0 or start_time <= 0:
        return False
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        data = os.read(fd, 4096)  # the whole line: 52 numbers and a 16-byte comm
    except OSError:
        return False
    finally:
        os.close(fd)
    # fields after the comm, which may itself hold ") ": state is field 3, starttime 22
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == start_time
