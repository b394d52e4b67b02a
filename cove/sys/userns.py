"""Rootless cove: the per-user state root and the user namespace cove runs in.

Podman's model. A non-root ``cove`` joins one long-lived user namespace per user, held by a
pause process (``sleep infinity`` made in it); the namespace maps uid/gid 0 to the user and
1..N to the user's ``/etc/subuid`` and ``/etc/subgid`` range, written by the setuid helpers
``newuidmap``/``newgidmap`` (Debian's ``uidmap``). The pause process also holds a mount
namespace owned by that user namespace, so every command sees the same mounts (a network
namespace cove binds there lives as long as the pause process). Each command setns()es into
both and then runs as "root" with the mapped range: cove's own code is the root code, and
what only the initial user namespace may do (mknod, trusted.* xattrs, host cgroups,
idmapped mounts of host file systems) is switched on :func:`rootless`.

One namespace for every command, not one per command: a detached container's namespaces
are children of it, so a later ``exec`` or ``stop`` (another process) can join them.

The state root is ``$XDG_DATA_HOME/cove`` (``~/.local/share/cove``), runtime files
(the pause pid, sockets) are in ``$XDG_RUNTIME_DIR/cove``, as Podman's.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

from cove.errors import RootlessUnavailable

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
ROOTLESS_ENV = "COVE_ROOTLESS_UID"  # the user's uid outside, set once a command has joined
ROOTLESS_GID_ENV = "COVE_ROOTLESS_GID"  # and its gid
_FULL_MAP = "0 0 4294967295"


@dataclass(frozen=True)
class SubIdRange:
    start: int
    count: int


@functools.cache
def rootless() -> bool:
    """Does this process run in a user namespace other than the initial one?

    True for a rootless command after :func:`enter` (and for everything it starts), and for
    cove run as root inside someone else's user namespace: in both, mknod, trusted.* xattrs
    and the host's cgroups are out of reach, which is what callers ask this for."""
    try:
        with open("/proc/self/uid_map") as f:
            lines = f.read().split("\n")
    except OSError:
        return False
    maps = [" ".join(line.split()) for line in lines if line.strip()]
    return maps != [_FULL_MAP]


def outer_uid() -> int:
    """The user's uid in the initial user namespace (ours when not rootless)."""
    return int(os.environ.get(ROOTLESS_ENV) or os.getuid())


def outer_gid() -> int:
    """The user's gid in the initial user namespace (ours when not rootless)."""
    return int(os.environ.get(ROOTLESS_GID_ENV) or os.getgid())


def data_dir(uid: int | None = None) -> str:
    """The rootless state root: ``$XDG_DATA_HOME/cove``, default ``~/.local/share/cove``."""
    import pwd

    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        home = os.environ.get("HOME") or pwd.getpwuid(os.getuid() if uid is None else uid).pw_dir
        base = os.path.join(home, ".local", "share")
    return os.path.join(base, "cove")


def runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/cove``; without one (no login session: su, runuser, cron) Podman's
    fallback, a private directory in /tmp named by uid."""
    uid = outer_uid()
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base) and _owned_dir(base):
        return os.path.join(base, "cove")
    if _owned_dir(f"/run/user/{uid}"):
        return f"/run/user/{uid}/cove"
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"cove-run-{uid}")


def _owned_dir(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    # inside our namespace the user is 0; outside it is its own uid
    return st.st_uid == os.getuid() and os.access(path, os.W_OK | os.X_OK)


def _private_dir(path: str) -> None:
    """Make ``path`` 0700; refuse one someone else owns (a planted /tmp/cove-run-UID)."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, 0o700)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
        raise RootlessUnavailable(f"runtime directory {path} is not the user's own")
    os.chmod(path, 0o700)


def subid_range(path: str, user: str, uid: int) -> SubIdRange | None:
    """The user's first range in ``path`` (``NAME:START:COUNT`` or ``UID:START:COUNT``)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count > 0:
            return SubIdRange(start, count)
    return None


def _missing_ranges(user: str, what: str) -> RootlessUnavailable:
    return RootlessUnavailable(
        f'no subordinate ids for {user} in {what}: add "{user}:100000:65536" to /etc/subuid '
        "and /etc/subgid (a range no other user has), or run cove as root"
    )


def _id_maps(uid: int, gid: int) -> tuple[list[str], list[str]]:
    import pwd
    import shutil

    user = pwd.getpwuid(uid).pw_name
    subuid = subid_range(SUBUID, user, uid)
    subgid = subid_range(SUBGID, user, uid)
    if subuid is None or subgid is None:
        raise _missing_ranges(user, SUBUID if subuid is None else SUBGID)
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            raise RootlessUnavailable(f"{tool} not found: install the uidmap package")
    uids = ["0", str(uid), "1", "1", str(subuid.start), str(subuid.count)]
    gids = ["0", str(gid), "1", "1", str(subgid.start), str(subgid.count)]
    return uids, gids


def _pause_alive(pidfile: str) -> int | None:
    from cove.sys.proc import alive

    try:
        with open(pidfile) as f:
            pid_s, start_s = f.read().split()
        pid, start = int(pid_s), int(start_s)
    except (OSError, ValueError):
        return None
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    return pid if owner == os.getuid() and alive(pid, start) else None


def _start_pause(uid: int, gid: int) -> int:
    """Fork the pause process: it unshares a user and a mount namespace, we write its maps
    with the setuid helpers (only they may map the subordinate range), then it execs
    ``sleep infinity`` in a session of its own with nothing of ours open."""
    import shutil
    import subprocess

    from cove.sys import syscalls as sc

    uids, gids = _id_maps(uid, gid)
    sleep = shutil.which("sleep") or "/bin/sleep"
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        try:
            os.close(ready_r)
            os.close(go_w)
            sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
            os.write(ready_w, b"u")
            if os.read(go_r, 1) != b"g":
                os._exit(1)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 65536)
            os.execv(sleep, ["sleep", "infinity"])
        finally:
            os._exit(127)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise RootlessUnavailable("cannot create a user namespace (unshare failed)")
        for tool, args in (("newuidmap", uids), ("newgidmap", gids)):
            done = subprocess.run([tool, str(pid), *args], capture_output=True, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                raise RootlessUnavailable(f"{tool} failed: {why}")
        os.write(go_w, b"g")
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
    return pid


def enter() -> None:
    """Join (making it first if need be) the user's pause namespace; afterwards this process
    is uid/gid 0 with every capability in it. Must run before any thread starts (setns of a
    user namespace refuses a multithreaded process)."""
    from cove.sys import syscalls as sc
    from cove.sys.proc import proc_start_time

    uid, gid = os.getuid(), os.getgid()
    rundir = runtime_dir()
    _private_dir(rundir)
    pidfile = os.path.join(rundir, "pause.pid")
    with sc.flocked(os.path.join(rundir, "pause.lock")):
        pid = _pause_alive(pidfile)
        if pid is None:
            pid = _start_pause(uid, gid)
            start = proc_start_time(pid)
            tmp = pidfile + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{pid} {start}\n")
            os.replace(tmp, pidfile)
        userfd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        mntfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    try:
        sc.setns(userfd, sc.CLONE_NEWUSER)
        sc.setns(mntfd, sc.CLONE_NEWNS)  # resets cwd and root to the namespace's
    except OSError as e:
        raise RootlessUnavailable(
            f"cannot join the user namespace of pause process {pid}: {e.strerror}"
        ) from e
    finally:
        os.close(userfd)
        os.close(mntfd)
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    os.environ[ROOTLESS_ENV] = str(uid)
    os.environ[ROOTLESS_GID_ENV] = str(gid)
    # execve again: a process's memory keeps the user namespace it was exec'd in
    # (mm->user_ns), and the kernel checks ptrace-mode access to a non-dumpable process
    # (cove's children making containers: /proc/PID/ns/*, /proc/PID/root) against that
    # namespace, the initial one until we exec here. Podman re-execs itself the same way.
    import sys

    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def pause_pid() -> int | None:
    """The running pause process of this user, if any."""
    return _pause_alive(os.path.join(runtime_dir(), "pause.pid"))


@dataclass(frozen=True)
class KeepId:
    """``--userns=keep-id[:uid=N,gid=N]``: the user's ids outside appear as ``uid``/``gid``
    inside the container (Podman's mode), the rest of the namespace mapped around them."""

    uid: int
    gid: int


def parse_keep_id(mode: str, outer: tuple[int, int]) -> KeepId | None:
    """``keep-id``, ``keep-id:uid=N,gid=N`` (Podman's options), else None."""
    name, _, opts = mode.partition(":")
    if name != "keep-id":
        return None
    uid, gid = outer
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key not in ("uid", "gid") or not value.isdigit():
            raise ValueError(f"invalid --userns option {opt!r}: want uid=N or gid=N")
        if key == "uid":
            uid = int(value)
        else:
            gid = int(value)
    return KeepId(uid, gid)


def ns_size(map_path: str = "/proc/self/uid_map") -> int:
    """How many consecutive ids from 0 our namespace maps (rootless: 1 + the subordinate
    range), the ids a child namespace may be given."""
    with open(map_path) as f:
        rows = sorted(tuple(int(x) for x in line.split()) for line in f if line.strip())
    size = 0
    for inner, _outer, count in rows:
        if inner != size:
            break
        size += count
    return size


def keep_id_map(inner: int, size: int) -> list[tuple[int, int, int]]:
    """(container id, parent id, count) rows mapping parent id 0 (the user, in rootless
    cove's namespace) to ``inner`` and parent ids 1..size-1 around it, as Podman's keep-id:
    container 0..inner-1 are parent 1..inner, container inner+1.. are parent inner+1.."""
    if size < 2:
        raise ValueError("the user namespace maps no subordinate ids")
    rows = [(0, 1, min(inner, size - 1))] if inner > 0 else []
    rows.append((inner, 0, 1))
    if inner + 1 < size:
        rows.append((inner + 1, inner + 1, size - inner - 1))
    return [r for r in rows if r[2] > 0]


def map_id(rows: list[tuple[int, int, int]], container_id: int) -> int | None:
    """The parent id a container id maps to through ``rows``, or None."""
    for inner, outer, count in rows:
        if inner <= container_id < inner + count:
            return outer + container_id - inner
    return None
