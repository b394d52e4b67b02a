"""What runs in the forked children that become a container. Never returns: execs or _exits.

Process tree (the caller P is a child subreaper, so G is reparented to it)::

    P (cove) ── C: joins cgroups, unshares namespaces, [waits for P to write id maps], forks G
                └─ G: pid 1 of the new pid namespace: mounts, pivot_root, waits on the exec
                      fifo (OCI "created"), seccomp, credentials, execve.

C and G talk to P over one SOCK_SEQPACKET socket: JSON messages, the pty master as an
SCM_RIGHTS fd. The socket is close-on-exec, so P reading EOF after "start" means execve
succeeded; an error message means it did not.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import socket
import stat
from typing import NoReturn

from cove.runtime import caps as capmod
from cove.runtime import execstub
from cove.spec.runtime import DEFAULT_DEVICES, Hook, Mount, Spec
from cove.sys import safepath
from cove.sys import syscalls as sc
from cove.sys.overlay import Layers
from cove.sys.overlay import mount as overlay_mount
from cove.sys.private import CONTAINER_UMASK
from cove.sys.userns import rootless

NS_FLAGS = {
    "pid": sc.CLONE_NEWPID,
    "network": sc.CLONE_NEWNET,
    "mount": sc.CLONE_NEWNS,
    "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS,
    "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP,
    "time": sc.CLONE_NEWTIME,
}

_MOUNT_FLAGS = {
    "ro": (sc.MS_RDONLY, True),
    "rw": (sc.MS_RDONLY, False),
    "nosuid": (sc.MS_NOSUID, True),
    "suid": (sc.MS_NOSUID, False),
    "nodev": (sc.MS_NODEV, True),
    "dev": (sc.MS_NODEV, False),
    "noexec": (sc.MS_NOEXEC, True),
    "exec": (sc.MS_NOEXEC, False),
    "sync": (sc.MS_SYNCHRONOUS, True),
    "dirsync": (sc.MS_DIRSYNC, True),
    "remount": (sc.MS_REMOUNT, True),
    "bind": (sc.MS_BIND, True),
    "rbind": (sc.MS_BIND | sc.MS_REC, True),
    "noatime": (sc.MS_NOATIME, True),
    "nodiratime": (sc.MS_NODIRATIME, True),
    "relatime": (sc.MS_RELATIME, True),
    "strictatime": (sc.MS_STRICTATIME, True),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, True),
}
_PROPAGATION = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
_RLIMITS = {
    "RLIMIT_CPU": resource.RLIMIT_CPU,
    "RLIMIT_FSIZE": resource.RLIMIT_FSIZE,
    "RLIMIT_DATA": resource.RLIMIT_DATA,
    "RLIMIT_STACK": resource.RLIMIT_STACK,
    "RLIMIT_CORE": resource.RLIMIT_CORE,
    "RLIMIT_RSS": resource.RLIMIT_RSS,
    "RLIMIT_NPROC": resource.RLIMIT_NPROC,
    "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
    "RLIMIT_MEMLOCK": resource.RLIMIT_MEMLOCK,
    "RLIMIT_AS": resource.RLIMIT_AS,
    "RLIMIT_LOCKS": 10,  # not exported by the resource module
    "RLIMIT_SIGPENDING": resource.RLIMIT_SIGPENDING,
    "RLIMIT_MSGQUEUE": resource.RLIMIT_MSGQUEUE,
    "RLIMIT_NICE": resource.RLIMIT_NICE,
    "RLIMIT_RTPRIO": resource.RLIMIT_RTPRIO,
    "RLIMIT_RTTIME": resource.RLIMIT_RTTIME,
}
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
ANNOTATION_OVERLAY = "io.cove.image.diff.overlay"


def idmapped_lower_dirs(overlay: dict[str, object]) -> list[str]:
    """Where P attaches the idmapped lower layers in a user-namespaced container."""
    upper = str(overlay["upper"])
    lower = overlay["lower"]
    assert isinstance(lower, list)
    return [os.path.join(os.path.dirname(upper), "lower", str(i)) for i in range(len(lower))]


class InitError(Exception):
    """A setup step failed; ``code`` is the exit status the caller reports."""

    def __init__(self, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.code = code


class InitContext:
    """What C and G get from P (a plain class: a dataclass costs ~0.5 ms to create at
    import, on every start)."""

    __slots__ = (
        "bundle",
        "cgroup_procs",
        "cid",
        "fifo",
        "host_pid",
        "host_unified",
        "host_v1_cgroups",
        "last_cap",
        "preserve_fds",
        "pure_v2",
        "seccomp_bpf",
        "sock",
        "spec",
        "stdio",
    )  # fmt: skip

    def __init__(
        self,
        *,
        spec: Spec,
        bundle: str,
        sock: socket.socket,
        fifo: str,
        cgroup_procs: list[str],
        stdio: tuple[int, int, int] | None,
        seccomp_bpf: bytes | None,
        host_v1_cgroups: dict[str, str],
        host_unified: str | None,
        pure_v2: bool,
        last_cap: int = -1,
        cid: str = "",
        preserve_fds: int = 0,
        host_pid: int = 0,
    ) -> None:
        self.spec = spec
        self.bundle = bundle
        self.sock = sock
        self.fifo = fifo
        self.cgroup_procs = cgroup_procs
        self.stdio = stdio
        self.seccomp_bpf = seccomp_bpf
        self.host_v1_cgroups = host_v1_cgroups
        self.host_unified = host_unified
        self.pure_v2 = pure_v2
        # read by P on the host before any namespace exists: a file inside the container
        # (which the image may supply) is never trusted for it
        self.last_cap = last_cap
        # cove-runc: the id hooks see, and runc's --preserve-fds (fds 3..3+N-1 reach the
        # process)
        self.cid = cid
        self.preserve_fds = preserve_fds
        self.host_pid = host_pid  # G's pid on the host, read before pivot_root (hooks' state)


def send(sock: socket.socket, msg: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def join_cgroups(procs_files: list[str]) -> None:
    """Move this process into each cgroup (one write of "0" to its cgroup.procs): a bare
    open and write, not a text file object (no buffering, no ioctl or seeks)."""
    for path in procs_files:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, path) from e


def child(ctx: InitContext) -> NoReturn:
    """Runs in C. Joins cgroups, makes namespaces, forks G, reports G's pid, exits."""
    try:
        # as exec_child: a pid namespace joined by path (--pid container:X) has processes
        # that would see G, a fork of cove, before its execve
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        join_cgroups(ctx.cgroup_procs)
        spec = ctx.spec
        flags = 0
        for ns in spec.linux.namespaces:
            if ns.type not in NS_FLAGS:
                raise InitError(f"unknown namespace type {ns.type!r}")
            if ns.path:
                fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    sc.setns(fd, NS_FLAGS[ns.type])
                finally:
                    os.close(fd)
            else:
                flags |= NS_FLAGS[ns.type]
        if flags:
            sc.unshare(flags)
        if flags & sc.CLONE_NEWUSER:
            send(ctx.sock, {"type": "userns"})
            if ctx.sock.recv(4096) != b"ok":
                raise InitError("id maps were not written")
        pid = os.fork()
        if pid == 0:
            init(ctx)
        send(ctx.sock, {"type": "pid", "pid": pid})
        os._exit(0)
    except BaseException as e:  # report, never unwind into the caller's code
        _fail(ctx.sock, e)


def exec_child(
    ctx: InitContext, ns_fds: list[tuple[int, int]], root: int, init_pid: int
) -> NoReturn:
    """Runs in X for ``exec``: joins the container's cgroups and namespaces, enters the
    init's root, forks the process.

    The user namespace comes first (joining the others needs its capabilities) and the
    mount namespace last. setns(CLONE_NEWNS) moves our root to the namespace's root mount,
    which is the container's root only when the container was not made inside a chroot;
    so we then enter ``root`` (the init's /proc/PID/root, opened by P before any join) and
    verify it (``_enter_root``; ``init_pid`` is the init's pid in its own pid namespace).
    The pid namespace applies to children only, hence the fork.
    """
    try:
        # invariant: non-dumpable before joining anything of the container (CVE-2016-9962
        # class): from setns(CLONE_NEWPID) on, container processes see our child, a fork of
        # cove; not dumpable, its /proc/PID (mem, environ, exe, fds) and ptrace stay closed
        # to them, and the flag passes to the child with the mm
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        join_cgroups(ctx.cgroup_procs)
        for fd, flag in ns_fds:
            sc.setns(fd, flag)
            os.close(fd)
        _enter_root(root, init_pid)
        pid = os.fork()
        if pid == 0:
            _process(ctx)
        send(ctx.sock, {"type": "pid", "pid": pid})
        os._exit(0)
    except BaseException as e:
        _fail(ctx.sock, e)


def _enter_root(root: int, init_pid: int) -> None:
    """Make ``root`` (an O_PATH fd of the init's root) our root and cwd, and prove it, or
    refuse (exit 126); never a fallback to the root setns gave us.

    Checks, before anything of the command runs: "/" is now the very directory of the fd
    (st_dev and st_ino); and the container's /proc, seen from there, shows the init at
    ``init_pid`` with that same root, so /proc (and the sysfs and files beside it) are the
    container's, not a host tree's. Invariant: we hold the capabilities of the container's
    user namespace (or the host's), so chroot and reading /proc/N/root of the init are
    allowed whatever the init's dumpable flag.
    """
    want = os.fstat(root)
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    refused = "exec: the process would run outside the container's root (refused)"
    here = os.stat("/")
    if (here.st_dev, here.st_ino) != (want.st_dev, want.st_ino):
        raise InitError(refused, 126)
    try:
        seen = os.stat(f"/proc/{init_pid}/root")
    except OSError as e:
        why = e.strerror or "failed"
        raise InitError(
            f"exec: cannot check the container's root through /proc/{init_pid}/root: {why}", 126
        ) from e
    if (seen.st_dev, seen.st_ino) != (want.st_dev, want.st_ino):
        raise InitError(refused, 126)


def _fail(sock: socket.socket, e: BaseException) -> NoReturn:
    code = e.code if isinstance(e, InitError) else 125
    msg = str(e) if isinstance(e, InitError | OSError) else f"{type(e).__name__}: {e}"
    try:
        send(sock, {"type": "error", "message": msg, "code": code})
    finally:
        os._exit(code)


def init(ctx: InitContext) -> NoReturn:
    """Runs in G, the container's first process."""
    try:
        # cove runs with umask 077 (its state root is private); what G makes in the
        # container (mountpoints, /dev, the working directory) gets Docker's modes
        os.umask(CONTAINER_UMASK)
        spec = ctx.spec
        if spec.hooks is not None:
            # the host's procfs is still our /proc: its "self" is our pid on the host
            ctx.host_pid = int(os.readlink("/proc/self"))
        userns = spec.namespace("user")
        if userns is not None and not userns.path:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        new_mount_ns = spec.namespace("mount") is not None
        if not new_mount_ns:
            raise InitError("cove needs a mount namespace for the rootfs")
        rootfs = os.path.join(ctx.bundle, spec.root.path)
        _setup_rootfs(ctx, rootfs)
        ns_uts = spec.namespace("uts")
        if ns_uts and not ns_uts.path:
            if spec.hostname:
                sc.sethostname(spec.hostname)
            if spec.domainname:
                sc.setdomainname(spec.domainname)
        ns_net = spec.namespace("network")
        if ns_net and not ns_net.path:
            sc.set_loopback_up()
        _process(ctx)
    except BaseException as e:
        _fail(ctx.sock, e)


def _mount_flags(options: list[str]) -> tuple[int, int, list[str]]:
    flags, propagation, data = 0, 0, []
    for opt in options:
        if opt in _MOUNT_FLAGS:
            bit, on = _MOUNT_FLAGS[opt]
            flags = flags | bit if on else flags & ~bit
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, data


# Filesystems the runtime mounts for itself: runc's rule, they go on a real directory
# reached without a single symlink, or not at all. A symlinked /proc that pointed into a
# directory a later mount hides would leave a procfs nobody masks.
_STRICT_TYPES = {"proc", "sysfs", "mqueue", "devpts", "cgroup", "cgroup2"}
_STRICT_TREES = ("/proc", "/sys", "/dev")


def _abs(path: str) -> str:
    """``path`` made absolute and normal: "/" + "/dev" would keep POSIX's leading "//"."""
    return "/" + os.path.normpath("/" + path).lstrip("/")


def _is_strict(m: Mount) -> bool:
    dest = _abs(m.destination)
    return m.type in _STRICT_TYPES or any(
        dest == t or dest.startswith(t + "/") for t in _STRICT_TREES
    )


def _real_dir(rootfd: int, dest: str, what: str) -> int:
    """An O_PATH fd of directory ``dest`` in the rootfs, every component a real directory
    (made if missing), none a symlink: ELOOP or ENOTDIR anywhere refuses the mount."""
    fd = os.dup(rootfd)
    try:
        for comp in os.path.normpath("/" + dest).split("/"):
            if comp in ("", "."):
                continue
            with contextlib.suppress(FileExistsError):
                os.mkdir(comp, 0o755, dir_fd=fd)
            try:
                nfd = sc.openat2(
                    fd,
                    comp,
                    os.O_PATH | os.O_DIRECTORY,
                    sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS,
                )
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                    raise InitError(
                        f"cannot mount {what} on {dest}: not a directory reached without "
                        "symlinks in the image (refused)"
                    ) from e
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _target(rootfd: int, dest: str, *, is_dir: bool, strict: str = "") -> str:
    """Create the mountpoint inside the rootfs; return a /proc/self/fd path pinned to it.

    Mounting on the pinned fd, not on a path, means a symlink swapped in by the
    container's own content can never redirect the mount to the host. ``strict`` (the
    filesystem's name) refuses any symlink on the way, for the runtime's own mounts.
    """
    if strict:
        return f"/proc/self/fd/{_real_dir(rootfd, dest, strict)}"
    rel = os.path.normpath("/" + dest).lstrip("/")
    parent, base = os.path.split(rel)
    pfd = safepath.open_dir(rootfd, parent, create=True)
    try:
        if base:
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target_fd = safepath.open_dir(rootfd, rel, create=True) if is_dir else None
                    if target_fd is None:
                        raise InitError(f"mount destination {dest} is a symlink")
                    return f"/proc/self/fd/{target_fd}"
            except FileNotFoundError:
                if is_dir:
                    os.mkdir(base, 0o755, dir_fd=pfd)
                else:
                    os.close(
                        os.open(
                            base,
                            os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o644,
                            dir_fd=pfd,
                        )
                    )
            fd = sc.openat2(pfd, base, os.O_PATH, safepath.IN_ROOT | sc.RESOLVE_NO_SYMLINKS)
        else:
            fd = os.dup(pfd)
        return f"/proc/self/fd/{fd}"  # the fd stays open until exec closes it
    finally:
        os.close(pfd)


def _mount_entry(ctx: InitContext, rootfd: int, m: Mount) -> None:
    flags, propagation, data = _mount_flags(m.options)
    if m.type == "cgroup":
        _mount_cgroups(ctx, rootfd, m.destination, flags)
        return
    is_bind = bool(flags & sc.MS_BIND) or m.type == "bind"
    is_dir = not is_bind or os.path.isdir(m.source)
    strict = (m.type if not is_bind else f"{m.source} (bind)") if _is_strict(m) else ""
    if strict and not is_dir:  # a file bound under /dev: its parents must still be real
        os.close(_real_dir(rootfd, os.path.dirname(m.destination), strict))
    target = _target(rootfd, m.destination, is_dir=is_dir, strict=strict if is_dir else "")
    if is_bind:
        sc.mount(m.source, target, None, sc.MS_BIND | (flags & sc.MS_REC))
    else:
        sc.mount(m.source or m.type, target, m.type, flags, ",".join(data) or None)
    extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT) if is_bind else 0
    if extra or propagation:
        # the pinned fd names what lies under the new mount: pin the mount itself now
        top = _pin(rootfd, m.destination)
        if extra:
            sc.mount(None, top, None, sc.MS_BIND | sc.MS_REMOUNT | extra | _locked_flags(top))
            if flags & sc.MS_REC:
                _recursive_attrs(top, extra)
        if propagation:
            sc.mount(None, top, None, propagation)


_MOUNT_ATTRS = (
    (sc.MS_RDONLY, sc.MOUNT_ATTR_RDONLY),
    (sc.MS_NOSUID, sc.MOUNT_ATTR_NOSUID),
    (sc.MS_NODEV, sc.MOUNT_ATTR_NODEV),
    (sc.MS_NOEXEC, sc.MOUNT_ATTR_NOEXEC),
)


def _recursive_attrs(path: str, flags: int) -> None:
    """An rbind's ro/nosuid/nodev/noexec on every mount under it too (Docker's "rro").

    The remount before changed the top mount only, so submounts of the source (the host's
    /sys/fs/cgroup/*, debugfs, bpf under a --network host /sys; a tmpfs under a ``-v ...:ro``
    directory) would stay writable from the container. Invariant: mount_setattr with
    AT_RECURSIVE changes the whole tree at once or nothing.
    """
    attrs = sum(attr for bit, attr in _MOUNT_ATTRS if flags & bit)
    if not attrs:
        return
    try:
        sc.mount_setattr(path, attrs, recursive=True)
    except OSError as e:
        if e.errno != errno.ENOSYS:  # kernel < 5.12: the top mount only, as Docker falls back
            raise


def _pin(rootfd: int, dest: str) -> str:
    rel = os.path.normpath("/" + dest).lstrip("/") or "."
    fd = sc.openat2(rootfd, rel, os.O_PATH, safepath.IN_ROOT)
    return f"/proc/self/fd/{fd}"


def _locked_flags(path: str) -> int:
    """nosuid/nodev/noexec of the mount below: a bind remount must keep them."""
    f = os.statvfs(path).f_flag
    return f & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME | sc.MS_NODIRATIME)


def _mount_cgroups(ctx: InitContext, rootfd: int, dest: str, flags: int) -> None:
    """Mount the container's view of cgroups (its own cgroup namespace shows only itself)."""
    if ctx.pure_v2:
        sc.mount("cgroup2", _target(rootfd, dest, is_dir=True, strict="cgroup2"), "cgroup2", flags)
        return
    # cgroup v1 cannot be mounted inside a user namespace: bind our own directories instead
    in_userns = ctx.spec.namespace("user") is not None or rootless()
    sc.mount(
        "tmpfs",
        _target(rootfd, dest, is_dir=True, strict="tmpfs"),
        "tmpfs",
        sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
        "mode=755",
    )
    done: dict[str, str] = {}
    for ctrl, mnt in ctx.host_v1_cgroups.items():
        name = os.path.basename(mnt)
        if name in done:
            continue
        done[name] = ctrl
        target = _target(rootfd, f"{dest}/{name}", is_dir=True, strict="cgroup")
        if in_userns:
            own = os.path.join(mnt, ctx.spec.linux.cgroups_path)
            sc.mount(own if os.path.isdir(own) else mnt, target, None, sc.MS_BIND | sc.MS_REC)
            continue
        opts = ",".join(sorted(c for c, m in ctx.host_v1_cgroups.items() if m == mnt))
        sc.mount("cgroup", target, "cgroup", flags, opts)
    if ctx.host_unified:
        target = _target(
            rootfd, f"{dest}/{os.path.basename(ctx.host_unified)}", is_dir=True, strict="cgroup2"
        )
        sc.mount("cgroup2", target, "cgroup2", flags)
    if flags & sc.MS_RDONLY:
        top = _pin(rootfd, dest)
        sc.mount(None, top, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags(top))


def _setup_rootfs(ctx: InitContext, rootfs: str) -> None:
    spec = ctx.spec
    prop = _PROPAGATION.get(spec.linux.rootfs_propagation or "rslave", sc.MS_SLAVE | sc.MS_REC)
    # invariant: from here on no mount made below propagates back to the host
    sc.mount(None, "/", None, prop)
    overlay = spec.annotations.get(ANNOTATION_OVERLAY)
    if overlay:
        cfg = json.loads(overlay)
        userns = spec.namespace("user") is not None
        if userns and not cfg.get("shifted"):  # idmapped layers P attached; user xattrs
            lowers = idmapped_lower_dirs(cfg)
        else:
            lowers = [os.path.join(cfg["layers_dir"], rel) for rel in cfg["lower"]]
        # one fsconfig("lowerdir+") per layer: no page limit, so all 127 layers fit; in
        # any user namespace but the initial one (rootless too) overlay reads user.overlay.*
        xattrs = userns or rootless()
        overlay_mount(Layers(lowers, cfg["upper"], cfg["work"], userxattr=xattrs), rootfs)
    else:
        sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for m in spec.mounts:
        _mount_entry(ctx, rootfd, m)
    _make_devices(ctx, rootfd)
    # invariant: from here on /proc and /sys are only ever reached through these fds,
    # pinned from the mounts just made and checked to be procfs/sysfs, never by path
    pinned = _pin_kernel_mounts(rootfd)
    try:
        if spec.linux.sysctl:
            _sysctls(pinned.get("/proc"), spec.linux.sysctl)
        for path in spec.linux.masked_paths:
            _mask(rootfd, pinned, path)
        for path in spec.linux.readonly_paths:
            _readonly(rootfd, pinned, path)
    finally:
        for fd in pinned.values():
            os.close(fd)
    fifo_fd = os.open(ctx.fifo, os.O_PATH | os.O_CLOEXEC)
    ctx.fifo = f"/proc/self/fd/{fifo_fd}"
    if spec.hooks is not None:
        if spec.hooks.prestart or spec.hooks.create_runtime:
            # the runtime runs these in its own namespaces now, before createContainer
            send(ctx.sock, {"type": "hooks", "pid": ctx.host_pid})
            if ctx.sock.recv(4096) != b"ok":
                raise InitError("createRuntime hooks failed")
        if spec.hooks.create_container:
            _run_hooks(ctx, "createContainer", spec.hooks.create_container, "creating")
    os.chdir(rootfs)
    # pivot_root(".", ".") stacks the old root on top of the new one; detach it from there
    sc.pivot_root(".", ".")
    sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    if spec.root.readonly:
        sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _locked_flags("/"))


def _make_devices(ctx: InitContext, rootfd: int) -> None:
    """Device nodes in the container's /dev tmpfs, and the standard symlinks."""
    in_userns = ctx.spec.namespace("user") is not None or rootless()
    devfd = safepath.open_dir(rootfd, "dev", create=True)
    try:
        devices = [(p, t, ma, mi, 0o666, 0, 0) for p, (t, ma, mi) in DEFAULT_DEVICES.items()]
        devices += [
            (d.path, d.type, d.major, d.minor, d.file_mode, d.uid, d.gid)
            for d in ctx.spec.linux.devices
        ]
        for path, kind, major, minor, mode, uid, gid in devices:
            name = os.path.normpath(path).removeprefix("/dev/")
            if "/" in name:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=devfd)
            if in_userns:  # mknod is not allowed in a user namespace: bind the host's node
                os.close(
                    os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644, dir_fd=devfd)
                )
                target = f"/proc/self/fd/{devfd}/{name}"
                sc.mount(path, target, None, sc.MS_BIND)
                continue
            kind_bits = stat.S_IFCHR if kind in ("c", "u") else stat.S_IFBLK
            os.mknod(name, kind_bits | mode, os.makedev(major, minor), dir_fd=devfd)
            os.chmod(name, mode, dir_fd=devfd)
            os.chown(name, uid, gid, dir_fd=devfd, follow_symlinks=False)
        links = {
            "fd": "/proc/self/fd",
            "stdin": "/proc/self/fd/0",
            "stdout": "/proc/self/fd/1",
            "stderr": "/proc/self/fd/2",
            "ptmx": "pts/ptmx",
            "core": "/proc/kcore",
        }
        for name, target in links.items():
            with contextlib.suppress(FileExistsError):
                os.symlink(target, name, dir_fd=devfd)
        if ctx.spec.process.terminal:  # /dev/console becomes the pty, bound after it exists
            os.close(
                os.open("console", os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600, dir_fd=devfd)
            )
    finally:
        os.close(devfd)


_KERNEL_FS = {"/proc": sc.PROC_SUPER_MAGIC, "/sys": sc.SYSFS_MAGIC}
_BENEATH = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS


def _pin_kernel_mounts(rootfd: int) -> dict[str, int]:
    """O_PATH fds of the procfs and sysfs this container got, by destination.

    The mounts went on real directories (``_real_dir``), so resolving them again without
    symlinks reaches the mount just made; its filesystem type is checked all the same,
    and a destination holding anything else (a spec that mounts none) is not pinned.
    """
    pinned: dict[str, int] = {}
    try:
        for dest, magic in _KERNEL_FS.items():
            try:
                fd = sc.openat2(rootfd, dest.lstrip("/"), os.O_PATH | os.O_DIRECTORY, _BENEATH)
            except FileNotFoundError:
                continue
            if sc.fstatfs_type(fd) == magic:
                pinned[dest] = fd
            else:
                os.close(fd)
    except BaseException:
        for fd in pinned.values():
            os.close(fd)
        raise
    return pinned


def _open_kernel_path(rootfd: int, pinned: dict[str, int], path: str) -> int | None:
    """An O_PATH fd of ``path`` (a masked or read-only path), or None if it may be skipped.

    Under /proc or /sys the path is opened from the pinned mount, beneath it and without
    symlinks; it must exist there unless the host's kernel has no such file either (the
    check reads the host's own tree, still our root at this point, never the image).
    Elsewhere it resolves inside the rootfs, and a missing path is skipped, as runc does.
    """
    norm = _abs(path)
    for dest, fd in pinned.items():
        if norm == dest or norm.startswith(dest + "/"):
            rel = norm[len(dest) :].lstrip("/") or "."
            try:
                return sc.openat2(fd, rel, os.O_PATH, _BENEATH)
            except FileNotFoundError:
                if not os.path.lexists(norm):  # the host's kernel has none either
                    return None
                raise InitError(f"cannot mask {norm}: missing on the container's {dest}") from None
            except OSError as e:
                raise InitError(f"cannot mask {norm}: {e.strerror}") from e
    if any(norm == t or norm.startswith(t + "/") for t in _KERNEL_FS):
        return None  # no procfs/sysfs of ours there (e.g. the spec mounts none): nothing to hide
    try:
        return sc.openat2(rootfd, norm.lstrip("/"), os.O_PATH, safepath.IN_ROOT)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _sysctls(procfd: int | None, values: dict[str, str]) -> None:
    """Write the spec's sysctls through the pinned procfs (before /proc/sys goes read-only)."""
    if procfd is None:
        raise InitError("sysctls need the container's /proc")
    for key, value in values.items():
        rel = "sys/" + key.replace(".", "/")
        fd = sc.openat2(procfd, rel, os.O_WRONLY, _BENEATH)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)


def _mask(rootfd: int, pinned: dict[str, int], path: str) -> None:
    fd = _open_kernel_path(rootfd, pinned, path)
    if fd is None:
        return
    try:
        where = f"/proc/self/fd/{fd}"
        if stat.S_ISDIR(os.stat(where).st_mode):
            sc.mount("tmpfs", where, "tmpfs", sc.MS_RDONLY)
        else:
            sc.mount("/dev/null", where, None, sc.MS_BIND)
    finally:
        os.close(fd)


def _readonly(rootfd: int, pinned: dict[str, int], path: str) -> None:
    fd = _open_kernel_path(rootfd, pinned, path)
    if fd is None:
        return
    try:
        where = f"/proc/self/fd/{fd}"
        sc.mount(where, where, None, sc.MS_BIND | sc.MS_REC)
    finally:
        os.close(fd)
    # the fd named what lies under the bind just made: open the bind itself to remount it
    top = _open_kernel_path(rootfd, pinned, path)
    if top is None:
        raise InitError(f"cannot make {path} read-only: it vanished")
    try:
        where = f"/proc/self/fd/{top}"
        sc.mount(
            None,
            where,
            None,
            sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC | _locked_flags(where),
        )
    finally:
        os.close(top)


def _terminal(ctx: InitContext) -> None:
    """Open a pty in the container's devpts, make it our controlling tty, send P the master."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    import fcntl
    import struct

    fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK: unlock
    ptn = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0\0\0\0"))[0]  # TIOCGPTN
    slave_path = f"/dev/pts/{ptn}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    box = ctx.spec.process.console_size
    if box and box.height and box.width:
        fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", box.height, box.width, 0, 0))
    with contextlib.suppress(OSError):
        sc.mount(slave_path, "/dev/console", None, sc.MS_BIND)
    send(ctx.sock, {"type": "pty"}, [master])
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def _process(ctx: InitContext) -> NoReturn:
    spec = ctx.spec
    proc = spec.process
    if not ctx.fifo and os.environ.get("COVE_STOP_AT") == "exec-joined":
        # tests only: hold an exec'd process, already in the container's namespaces, where
        # a container process could reach it (the test proves it cannot read or trace it)
        os.kill(os.getpid(), 19)  # SIGSTOP (the signal module stays off the start path)
    os.umask(CONTAINER_UMASK)  # exec's process too: never cove's private umask
    for rl in proc.rlimits:
        if rl.type not in _RLIMITS:
            raise InitError(f"unknown rlimit {rl.type}")
        try:
            resource.setrlimit(_RLIMITS[rl.type], (rl.soft, rl.hard))
        except (ValueError, OSError) as err:  # EPERM: above the hard limit, no CAP_SYS_RESOURCE
            raise InitError(f"cannot set {rl.type} to {rl.soft}:{rl.hard}: {err}") from err
    if proc.oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(proc.oom_score_adj))
        except OSError as err:  # EACCES: lowering it needs CAP_SYS_RESOURCE
            why = err.strerror
            raise InitError(f"cannot set oom_score_adj to {proc.oom_score_adj}: {why}") from err
    if proc.terminal:
        _terminal(ctx)
    else:
        # a session of our own and no controlling terminal, as Docker's: open("/dev/tty")
        # gives ENXIO, so no TIOCSTI reaches the terminal cove runs in. Invariant: we were
        # forked (by C or X), so we lead no process group and setsid cannot fail with EPERM.
        os.setsid()
        for target, fd in enumerate(ctx.stdio or ()):
            if fd != target:
                os.dup2(fd, target)
    cwd = proc.cwd or "/"
    if not os.path.isdir(cwd):
        if ctx.fifo:
            _make_cwd(cwd)  # Docker creates a missing working directory
        else:
            raise InitError(f'chdir to cwd ("{cwd}") set in config.json failed: no such file', 126)
    send(ctx.sock, {"type": "created"})
    if ctx.fifo:
        # OCI "created": block until start opens the fifo's other end
        fifo = os.open(ctx.fifo, os.O_WRONLY | os.O_CLOEXEC)
        os.write(fifo, b"0")
        os.close(fifo)
        if spec.hooks is not None and spec.hooks.start_container:
            _run_hooks(ctx, "startContainer", spec.hooks.start_container, "created")
    # invariant: no other process of this container exists yet; keep /proc/1 unreadable
    # to it until execve replaces this interpreter (the CVE-2019-5736 class)
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    if proc.no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if ctx.seccomp_bpf:
        sc.seccomp_load_bpf(ctx.seccomp_bpf)
    _credentials(spec, ctx.last_cap)
    env = {}
    for e in proc.env:
        key, _, value = e.partition("=")
        env[key] = value
    # fds beyond stdio never reach the container, and none is left to chdir through
    # (the CVE-2024-21626 class): close them before the working directory is entered
    keep = ctx.sock.fileno()
    first = 3 + ctx.preserve_fds  # runc's --preserve-fds: the caller's fds 3.. pass through
    for fd in range(3, first):
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, True)
    if keep > first:  # closerange(a, a) would close everything from a on, our socket too
        os.closerange(first, keep)
    os.closerange(max(keep + 1, first), _max_fd())
    _enter_cwd(cwd)
    reset_signals()
    try:
        path = execstub.resolve(proc.args[0], env)
        # the socket stays open through the stub, which reports a failed execve on it
        # and marks it close-on-exec first, so P still learns from EOF that execve worked
        execstub.exec_via_stub(path, proc.args, env, keep)
    except execstub.ExecError as e:
        raise InitError(str(e), e.code) from e
    except OSError as e:
        raise InitError(f'exec: "{proc.args[0]}": cannot start the exec stub: {e.strerror}') from e


def _run_hooks(ctx: InitContext, kind: str, hooks: list[Hook], status: str) -> None:
    from cove.runtime import hooks as hookmod

    spec = ctx.spec
    state = hookmod.state_doc(
        ctx.cid, status, ctx.host_pid, ctx.bundle, spec.annotations, spec.oci_version
    )
    try:
        hookmod.run(kind, hooks, state)
    except hookmod.HookError as e:
        raise InitError(str(e)) from e


def _make_cwd(cwd: str) -> None:
    """Create a missing working directory inside our root only: magic links (a
    /proc/self/fd/N of a leaked fd) and symlinks of the image resolve as in the root."""
    rootfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(safepath.open_dir(rootfd, os.path.normpath("/" + cwd).lstrip("/"), create=True))
    except OSError as e:
        raise InitError(f'mkdir cwd ("{cwd}") set in config.json failed: {e.strerror}', 126) from e
    finally:
        os.close(rootfd)


def _enter_cwd(cwd: str) -> None:
    """chdir to ``cwd`` and prove the result lies inside our root, or refuse; never a
    fallback. Invariant: only stdio and the setup socket are open, so no magic link of a
    leaked host fd can be the cwd; a cwd outside the root has no name from it (getcwd
    fails with ENOENT, "(unreachable)" on old libcs), and the name it has must resolve,
    RESOLVE_IN_ROOT from our root, to the very directory we are in."""
    try:
        os.chdir(cwd)
    except OSError as e:
        why = e.strerror or "failed"
        raise InitError(f'chdir to cwd ("{cwd}") set in config.json failed: {why}', 126) from e
    outside = InitError(f'cwd "{cwd}" lies outside the container root (refused)', 126)
    try:
        here = os.getcwd()
    except OSError as e:
        raise outside from e
    if not here.startswith("/"):
        raise outside
    rootfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = sc.openat2(
            rootfd, here.lstrip("/") or ".", os.O_PATH | os.O_DIRECTORY, safepath.IN_ROOT
        )
    except OSError as e:
        raise outside from e
    finally:
        os.close(rootfd)
    try:
        named, actual = os.fstat(fd), os.stat(".")
    finally:
        os.close(fd)
    if (named.st_dev, named.st_ino) != (actual.st_dev, actual.st_ino):
        raise outside


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve: a container's
    ``yes | head`` must end as it does everywhere else."""
    import signal

    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _max_fd() -> int:
    try:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ValueError, OSError):
        return 65536


def _credentials(spec: Spec, last: int) -> None:
    proc = spec.process
    user = proc.user
    c = proc.capabilities
    if last < 0:
        raise InitError("the host's last capability was not read before setup")
    if c is not None:
        keep_bounding = capmod.mask(c.bounding)
        for cap in range(last + 1):
            if not keep_bounding & (1 << cap):
                try:
                    sc.prctl(sc.PR_CAPBSET_DROP, cap)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
    os.setgroups(user.additional_gids)
    os.setresgid(user.gid, user.gid, user.gid)
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    os.setresuid(user.uid, user.uid, user.uid)
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    os.umask(CONTAINER_UMASK if user.umask is None else user.umask)  # Docker's default 0022
    if c is not None:
        held = sc.bounding_set(last)
        sc.capset(
            capmod.mask(c.effective) & held,
            capmod.mask(c.permitted) & held,
            capmod.mask(c.inheritable) & held,
        )
        sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
        for name in c.ambient:
            sc.prctl(
                sc.PR_CAP_AMBIENT,
                sc.PR_CAP_AMBIENT_RAISE,
                capmod.CAP_NUMBER[capmod.normalize(name)],
            )
