"""The one thin syscall layer: ctypes/os wrappers that raise ``OSError`` with errno and path.

Names mirror the kernel's (``openat2``, ``RESOLVE_IN_ROOT``). Nothing here
knows about images or containers.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

# include/uapi/linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}


class _OpenHow(ctypes.Structure):
    """struct open_how { __u64 flags; __u64 mode; __u64 resolve; };"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# read once: the container's setup opens ~80 paths through openat2, each asked uname(2) again
_OPENAT2_NR = _SYS_OPENAT2.get(os.uname().machine)


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2); raises OSError(errno, strerror, path).

    Invariant relied on by callers: with RESOLVE_IN_ROOT every path component,
    symlinks and ``..`` included, resolves as if ``dirfd`` were ``/``, so the
    result can never name a file outside ``dirfd`` (kernel >= 5.6).
    """
    nr = _OPENAT2_NR
    if nr is None:
        raise OSError(errno.ENOSYS, "openat2 syscall number unknown for this machine", path)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = _libc.syscall(
        ctypes.c_long(nr),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


@contextmanager
def flocked(path: str, *, shared: bool = False) -> Iterator[int]:
    """Hold flock(2) on ``path`` (created if missing) for the block.

    flock locks belong to the open file description, so they are released
    when the process dies, even by SIGKILL: a killed cove never wedges a root.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- namespaces, mounts, process attributes (the container runtime's needs) ------------

# include/uapi/linux/sched.h
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

# include/uapi/linux/mount.h
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 0x2

# include/uapi/linux/prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_SYSCALL_NR = {  # x86_64 and the generic table (aarch64, riscv64) differ for these
    "x86_64": {"pivot_root": 155, "setns": 308, "capset": 126},
    "aarch64": {"pivot_root": 41, "setns": 268, "capset": 91},
}


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:  # fmt: skip
    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    ret = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(ret, f"mount {fstype or ''} {source or ''} on", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYSCALL_NR.get(os.uname().machine, {}).get("pivot_root")
    if nr is None:
        raise OSError(errno.ENOSYS, "pivot_root syscall number unknown for this machine")
    ret = _libc.syscall(ctypes.c_long(nr), os.fsencode(new_root), os.fsencode(put_old))
    _check(ret, "pivot_root", new_root)


def die_with_parent() -> None:
    """In a child before exec (QEMU, virtiofsd): SIGKILL when its parent dies, so nothing
    outlives a killed cove."""
    prctl(PR_SET_PDEATHSIG, 9)


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)),
           "fallocate")  # fmt: skip


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ret = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                      ctypes.c_ulong(arg4), ctypes.c_ulong(arg5))  # fmt: skip
    return _check(ret, f"prctl({option})")


# include/uapi/linux/magic.h: what a pinned mount must be before masks go on it
PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572


def fstatfs_type(fd: int) -> int:
    """``f_type`` of fstatfs(2) (works on O_PATH fds): which filesystem ``fd`` lies on."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit; room to spare
    _check(_libc.fstatfs(ctypes.c_int(fd), buf), "fstatfs")
    return int(ctypes.c_long.from_buffer(buf).value)


def bounding_set(last_cap: int) -> int:
    """The calling thread's capability bounding set, read with prctl(PR_CAPBSET_READ), so
    no file (which a container image could supply) is ever trusted for it."""
    held = 0
    for cap in range(last_cap + 1):
        if prctl(PR_CAPBSET_READ, cap) == 1:
            held |= 1 << cap
    return held


class _CapHeader(ctypes.Structure):
    """struct __user_cap_header_struct { __u32 version; int pid; };"""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    """struct __user_cap_data_struct { __u32 effective, permitted, inheritable; } (x2 for v3)."""

    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for the calling thread; each argument is a 64-bit capability mask."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


class _SockFprog(ctypes.Structure):
    """struct sock_fprog { unsigned short len; struct sock_filter *filter; };"""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load_bpf(program: bytes) -> None:
    """Install a classic-BPF seccomp filter (8-byte ``struct sock_filter`` entries).

    Invariant: the caller holds CAP_SYS_ADMIN or has set no_new_privs, else EACCES.
    """
    if len(program) % 8:
        raise OSError(errno.EINVAL, "seccomp program is not a whole number of instructions")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    ret = _libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                      ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0))  # fmt: skip
    _check(ret, "seccomp")


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, ctypes.c_size_t(len(data))), "sethostname")


def setdomainname(name: str) -> None:
    data = name.encode()
    _check(_libc.setdomainname(data, ctypes.c_size_t(len(data))), "setdomainname")


def set_loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (SIOCSIFFLAGS, IFF_UP)."""
    import fcntl as _fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", _fcntl.ioctl(s.fileno(), siocgifflags, ifreq))[1]
        _fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


# include/uapi/linux/mount.h: detached mount trees and idmapped mounts (kernel >= 5.12)
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_IDMAP = 0x00100000
_NR_OPEN_TREE = 428  # the same number on every architecture (unified table)
_NR_MOUNT_SETATTR = 442


class _MountAttr(ctypes.Structure):
    """struct mount_attr { __u64 attr_set, attr_clr, propagation, userns_fd; };"""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached copy of the mount at ``path``, idmapped through ``userns_fd``.

    Invariant: the caller holds CAP_SYS_ADMIN in the user namespace that owns ``path``'s
    mount namespace (host root); the returned fd is close-on-exec.
    """
    fd = _libc.syscall(
        ctypes.c_long(_NR_OPEN_TREE),
        ctypes.c_int(-100),
        os.fsencode(path),
        ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC),
    )
    _check(fd, "open_tree", path)
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    ret = _libc.syscall(
        ctypes.c_long(_NR_MOUNT_SETATTR),
        ctypes.c_int(fd),
        b"",
        ctypes.c_uint(AT_EMPTY_PATH),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if ret < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount_setattr(MOUNT_ATTR_IDMAP): {os.strerror(err)}", path)
    return int(fd)


MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
_AT_FDCWD = -100


def mount_setattr(path: str, attr_set: int, attr_clr: int = 0, *, recursive: bool) -> None:
    """mount_setattr(2) on the mount at ``path`` (a ``/proc/self/fd/N`` path works: followed).

    With ``recursive`` (AT_RECURSIVE) the change covers every mount below ``path`` as well,
    which a remount (``MS_REMOUNT``, ``MS_REC`` is ignored there) never does. Kernel >= 5.12;
    older ones raise ENOSYS. Setting a flag is allowed on locked mounts; clearing is not.
    """
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    ret = _libc.syscall(
        ctypes.c_long(_NR_MOUNT_SETATTR),
        ctypes.c_int(_AT_FDCWD),
        os.fsencode(path),
        ctypes.c_uint(AT_RECURSIVE if recursive else 0),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr", path)


_NR_MOVE_MOUNT = 429
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def move_mount_fd(fd: int, target: str) -> None:
    """Attach the detached mount ``fd`` at ``target`` in the caller's mount namespace."""
    ret = _libc.syscall(
        ctypes.c_long(_NR_MOVE_MOUNT),
        ctypes.c_int(fd),
        b"",
        ctypes.c_int(-100),
        os.fsencode(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
    )
    _check(ret, "move_mount", target)


# the new mount API, include/uapi/linux/mount.h (kernel >= 5.2; same numbers everywhere)
_NR_FSOPEN = 430
_NR_FSCONFIG = 431
_NR_FSMOUNT = 432
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6


def fsopen(fstype: str) -> int:
    """fsopen(2): a close-on-exec file system context fd for ``fstype``."""
    fd = _libc.syscall(
        ctypes.c_long(_NR_FSOPEN), os.fsencode(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)
    )
    return int(_check(fd, "fsopen", fstype))


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    """fsconfig(2) on a context from :func:`fsopen`. The kernel copies at most 255 bytes of
    a string ``value`` (strndup_user(value, 256)): longer ones fail with EINVAL."""
    ret = _libc.syscall(
        ctypes.c_long(_NR_FSCONFIG),
        ctypes.c_int(fd),
        ctypes.c_uint(cmd),
        None if key is None else os.fsencode(key),
        None if value is None else os.fsencode(value),
        ctypes.c_int(0),
    )
    _check(ret, f"fsconfig {key or 'create'}", value)


def fsmount(fd: int, attr_flags: int = 0) -> int:
    """fsmount(2): a close-on-exec detached mount of the created context ``fd``;
    ``attr_flags`` are MOUNT_ATTR_* (MOUNT_ATTR_RDONLY)."""
    ret = _libc.syscall(
        ctypes.c_long(_NR_FSMOUNT), ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
        ctypes.c_uint(attr_flags),
    )  # fmt: skip
    return int(_check(ret, "fsmount"))


# bpf(2) for cgroup device programs (include/uapi/linux/bpf.h)
CGROUP2_SUPER_MAGIC = 0x63677270
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}


class _BpfProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD part of union bpf_attr, up to expected_attach_type."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _BpfAttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _BpfQueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _NR_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, "bpf syscall number unknown for this machine")
    size = ctypes.c_uint(ctypes.sizeof(attr))
    return int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), size))


def bpf_prog_load(prog_type: int, insns: bytes, license: str, name: str = "cove") -> int:
    """bpf(BPF_PROG_LOAD): returns the program fd (close-on-exec, as every bpf fd).

    Invariant: needs CAP_SYS_ADMIN (or CAP_BPF) for this program type. On a refusal the
    load is retried with the verifier's log, whose last line goes into the error.
    """
    if len(insns) % 8:
        raise OSError(errno.EINVAL, "bpf program is not a whole number of instructions")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _BpfProgLoadAttr(prog_type, len(insns) // 8, ctypes.addressof(code),
                            ctypes.addressof(lic))  # fmt: skip
    attr.prog_name = name.encode()[:15]
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    log = ctypes.create_string_buffer(1 << 16)
    attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:  # loaded the second time: keep it
        return fd
    lines = log.value.decode(errors="replace").strip().splitlines()
    raise OSError(err, f"bpf prog load: {os.strerror(err)}" + (f": {lines[-1]}" if lines else ""))


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """bpf(BPF_PROG_ATTACH) of ``prog_fd`` to ``target_fd`` (a cgroup2 directory fd)."""
    attr = _BpfAttachAttr(target_fd, prog_fd, attach_type, flags, 0)
    _check(_bpf(BPF_PROG_ATTACH, attr), "bpf prog attach")


def bpf_prog_query(target_fd: int, attach_type: int) -> list[int]:
    """bpf(BPF_PROG_QUERY): ids of the programs attached to ``target_fd`` itself."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _BpfQueryAttr(target_fd, attach_type, 0, 0, ctypes.addressof(ids), len(ids), 0)
    _check(_bpf(BPF_PROG_QUERY, attr), "bpf prog query")
    return [int(ids[i]) for i in range(attr.prog_cnt)]
