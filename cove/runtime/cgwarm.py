"""Overlap the kernel's grace period of a container's first cgroup join with start-up work.

Moving a task into a cgroup (a write to ``cgroup.procs``, in every v1 hierarchy and in
cgroup2) takes the kernel's one global ``cgroup_threadgroup_rwsem`` for writing. When no
such write happened within the last RCU grace period, ``percpu_down_write`` first waits
for a whole grace period (``rcu_sync_enter`` from its idle state): 7-15 ms measured on the
2-CPU hosts cove is benchmarked on, while every further write in the same window costs
~20 µs. runc hides most of it behind the re-exec of its init; cove's setup child would
wait it out in full, the largest single step of a start.

``start()`` forks a helper, before the face imports the runtime, that writes ``0`` into
the ``cgroup.procs`` of the cgroup it already is in (the caller's own), every 2 ms: a
migration to where the task already is moves nothing, but it enters and leaves the
rwsem's rcu_sync, which then stays armed (``rcu_sync_exit`` keeps it out of the idle
state for a grace period after each write). The grace period is waited for by the
helper, during the interpreter's imports, and the setup child's joins find it passed.
``stop()`` ends the helper: the runtime calls it just before it forks the setup child,
whose joins follow within a millisecond or two, inside the grace period that the helper's
last write keeps armed (and no child inherits the helper's pipe). The kernel state decays
to idle by itself a grace period later. Every failure only means no head
start: the helper exits and the join waits as it did before (rootless callers without
write access to their own cgroup, no cgroupfs).

Kept off every import but ``os`` and ``select`` (compiled in): the face imports this
module first.
"""

from __future__ import annotations

import os
import select
import time

PERIOD = 0.002  # seconds between writes: well inside the shortest grace period seen (7 ms)
LIMIT = 5.0  # the helper's longest life, if a caller never stops it

# (helper pid, write end of its pipe, the pid that forked the helper)
_running: tuple[int, int, int] | None = None


def own_procs_file(cgroup_file: str = "/proc/self/cgroup", base: str = "/sys/fs/cgroup") -> str:
    """The ``cgroup.procs`` of the caller's own cgroup in one hierarchy it can write, or "".

    cgroup2 first (at ``base/unified`` on the hybrid layout, at ``base`` on a pure v2
    host), then the v1 hierarchies mounted by controller name. Any hierarchy will do: the
    rwsem is shared by all of them.
    """
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    v2: list[str] = []
    v1: list[str] = []
    for line in lines:
        _, ctrl, path = [*line.split(":", 2), "", ""][:3]
        if not path.startswith("/"):
            continue
        if ctrl == "":
            v2 += [f"{base}/unified{path}", f"{base}{path}"]
        elif "=" not in ctrl:
            v1.append(f"{base}/{ctrl}{path}")
    for d in v2 + v1:
        procs = os.path.join(d, "cgroup.procs")
        if os.access(procs, os.W_OK):
            return procs
    return ""


def start(procs: str | None = None) -> bool:
    """Fork the helper that arms the cgroup rwsem; False if there is none to arm here."""
    global _running
    if _running is not None:
        return True
    path = own_procs_file() if procs is None else procs
    if not path:
        return False
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return False
    if pid == 0:  # pragma: no cover - the helper's own process
        status = 0
        try:
            _helper(path, r)
        except BaseException:
            status = 1
        os._exit(status)
    os.close(r)
    _running = (pid, w, os.getpid())
    return True


def _helper(path: str, r: int) -> None:
    # nothing of the caller's is held open here (stdout pipes, console sockets, the
    # shim's fds): a reader waiting for EOF never waits on this process
    os.closerange(0, r)
    os.closerange(r + 1, 1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        # invariant: "0" is this process, already a member of that cgroup: the kernel
        # migrates nothing, it only takes (and drops) the threadgroup rwsem
        os.write(fd, b"0")
        if select.select([r], [], [], PERIOD)[0]:
            return  # EOF: the caller stopped us, or died


def running() -> bool:
    return _running is not None


def stop() -> None:
    """End the helper, if one runs, and reap it: returns once its first write is through
    (the grace period passed), at most one period after that."""
    global _running
    if _running is None:
        return
    pid, w, parent = _running
    _running = None
    os.close(w)
    if os.getpid() != parent:
        return  # a fork of the starter: the helper is its parent's to reap
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
