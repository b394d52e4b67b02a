"""The runtime init's helpers that need no privilege (cove.runtime.init): mount option
parsing, which mounts must sit on symlink-free real directories, the idmapped lower
layer paths, and where mountpoints are made inside a rootfs. Expected values are the
kernel's (include/uapi/linux/mount.h, sched.h, resource.h), not cove's constants."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.runtime import init
from cove.runtime.init import (
    _RLIMITS,
    NS_FLAGS,
    InitError,
    _is_strict,
    _mount_flags,
    _real_dir,
    _target,
    idmapped_lower_dirs,
)
from cove.spec.runtime import Mount

# include/uapi/linux/mount.h
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_REMOUNT, MS_DIRSYNC, MS_NOSYMFOLLOW = 16, 32, 128, 256
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24


@pytest.mark.parametrize(
    ("options", "flags", "propagation", "data"),
    [
        ([], 0, 0, []),
        (["nosuid", "noexec", "nodev"], MS_NOSUID | MS_NOEXEC | MS_NODEV, 0, []),
        (["ro"], MS_RDONLY, 0, []),
        (["ro", "rw"], 0, 0, []),  # the later option wins, as in runc
        (["rw", "ro"], MS_RDONLY, 0, []),
        (["nosuid", "suid", "nodev", "dev", "noexec", "exec"], 0, 0, []),
        (["rbind", "rprivate"], MS_BIND | MS_REC, MS_PRIVATE | MS_REC, []),
        (["bind", "ro", "nosuid", "nodev"], MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, 0, []),
        (
            ["nosuid", "strictatime", "mode=755", "size=65536k"],
            MS_NOSUID | MS_STRICTATIME,
            0,
            ["mode=755", "size=65536k"],
        ),
        (
            ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            0,
            0,
            ["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        (["remount", "sync", "dirsync"], MS_REMOUNT | MS_SYNCHRONOUS | MS_DIRSYNC, 0, []),
        (
            ["noatime", "nodiratime", "relatime", "nosymfollow"],
            MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_NOSYMFOLLOW,
            0,
            [],
        ),
        (["slave"], 0, MS_SLAVE, []),
        (["rshared"], 0, MS_SHARED | MS_REC, []),
        (["unbindable", "runbindable"], 0, MS_UNBINDABLE | MS_REC, []),
    ],
)
def test_mount_flags(options: list[str], flags: int, propagation: int, data: list[str]) -> None:
    assert _mount_flags(options) == (flags, propagation, data)


def test_namespace_flags_are_the_kernels() -> None:
    # include/uapi/linux/sched.h
    assert NS_FLAGS == {
        "mount": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
        "user": 0x10000000, "pid": 0x20000000, "network": 0x40000000, "time": 0x00000080,
    }  # fmt: skip


def test_rlimit_numbers_are_the_kernels() -> None:
    # include/uapi/asm-generic/resource.h (x86-64)
    names = ["CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK",
             "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"]  # fmt: skip
    assert _RLIMITS == {f"RLIMIT_{n}": i for i, n in enumerate(names)}


@pytest.mark.parametrize(
    ("mount", "strict"),
    [
        (Mount("/proc", "proc", "proc"), True),
        (Mount("/elsewhere", "proc", "proc"), True),  # the type alone makes it strict
        (Mount("/sys/fs/cgroup", "cgroup", "cgroup"), True),
        (Mount("/x", "cgroup2", "cgroup2"), True),
        (Mount("/dev/pts", "devpts", "devpts"), True),
        (Mount("/dev/mqueue", "mqueue", "mqueue"), True),
        # under a runtime tree, whatever the type (an absolute destination once missed them:
        # normpath("/" + "/dev") is "//dev", POSIX keeps a leading "//")
        (Mount("/dev", "tmpfs", "tmpfs"), True),
        (Mount("/dev/shm", "tmpfs", "shm"), True),
        (Mount("/proc/sys/x", "bind", "/h"), True),
        (Mount("/a/../proc", "bind", "/h"), True),
        (Mount("sys/kernel", "bind", "/h"), True),  # a relative destination is rooted
        (Mount("/data", "bind", "/h"), False),
        (Mount("/procfs", "bind", "/h"), False),  # a prefix of the name is not the tree
        (Mount("/devices", "tmpfs", "tmpfs"), False),
        (Mount("/dev/../etc/x", "bind", "/h"), False),
        (Mount("/run", "tmpfs", "tmpfs"), False),
    ],
    ids=lambda v: v.destination if isinstance(v, Mount) else str(v),
)
def test_is_strict(mount: Mount, strict: bool) -> None:
    assert _is_strict(mount) is strict


def test_idmapped_lower_dirs_sit_beside_the_upper() -> None:
    overlay: dict[str, object] = {"upper": "/b/c1/upper", "work": "/b/c1/work",
                                  "lower": ["/l/3", "/l/2", "/l/1"]}  # fmt: skip
    assert idmapped_lower_dirs(overlay) == ["/b/c1/lower/0", "/b/c1/lower/1", "/b/c1/lower/2"]
    assert idmapped_lower_dirs({"upper": "/u/upper", "lower": []}) == []


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "rootfs"
    root.mkdir()
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


def fd_path(proc_path: str) -> str:
    """Where a /proc/self/fd/N points, closing N (the runtime keeps it until exec)."""
    fd = int(proc_path.rsplit("/", 1)[1])
    try:
        return os.readlink(proc_path)
    finally:
        os.close(fd)


def test_real_dir_makes_missing_directories(rootfs: tuple[Path, int]) -> None:
    root, rfd = rootfs
    fd = _real_dir(rfd, "/sys/fs/cgroup", "cgroup")
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == str(root / "sys/fs/cgroup")
    finally:
        os.close(fd)
    assert (root / "sys/fs/cgroup").is_dir()


@pytest.mark.parametrize("link", ["proc", "sys/fs"])
@pytest.mark.parametrize("target", ["/tmp", "../../..", "data"])
def test_real_dir_refuses_any_symlink_on_the_way(
    rootfs: tuple[Path, int], link: str, target: str
) -> None:
    """runc's rule for the runtime's own filesystems: a symlinked /proc (or /sys/fs) in
    the image is refused, wherever it points, never followed."""
    root, rfd = rootfs
    (root / "data").mkdir()
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, root / link)
    with pytest.raises(InitError, match="not a directory reached without symlinks"):
        os.close(_real_dir(rfd, "/sys/fs/cgroup" if link == "sys/fs" else "/proc", "proc"))
    # positive control: the same call on a real directory of the same rootfs works
    os.close(_real_dir(rfd, "/data/sub", "proc"))
    assert (root / "data/sub").is_dir()


def test_real_dir_refuses_a_file_in_the_way(rootfs: tuple[Path, int]) -> None:
    root, rfd = rootfs
    (root / "proc").write_text("not a dir")
    with pytest.raises(InitError, match="cannot mount proc on /proc"):
        _real_dir(rfd, "/proc", "proc")


def test_target_makes_files_and_directories_inside_the_root(rootfs: tuple[Path, int]) -> None:
    root, rfd = rootfs
    assert fd_path(_target(rfd, "/etc/hosts", is_dir=False)) == str(root / "etc/hosts")
    assert (root / "etc/hosts").is_file() and (root / "etc/hosts").read_text() == ""
    assert fd_path(_target(rfd, "/data/x", is_dir=True)) == str(root / "data/x")
    assert (root / "data/x").is_dir()
    assert fd_path(_target(rfd, "/", is_dir=True)) == str(root)


def test_target_resolves_a_symlinked_directory_inside_the_root(
    rootfs: tuple[Path, int], tmp_path: Path
) -> None:
    """A directory mountpoint that is an absolute symlink resolves as if the rootfs were /
    (to a directory inside it), never to the host's path of the same name."""
    root, rfd = rootfs
    host = tmp_path / "host-dir"
    host.mkdir()
    os.symlink(str(host), root / "mnt")  # absolute: means <root>/<tmp>/host-dir inside
    got = fd_path(_target(rfd, "/mnt", is_dir=True))
    assert got == str(root) + str(host)
    assert got.startswith(str(root) + "/") and not list(host.iterdir())


def test_target_refuses_a_symlink_for_a_file_mountpoint(rootfs: tuple[Path, int],
                                                        tmp_path: Path) -> None:  # fmt: skip
    root, rfd = rootfs
    secret = tmp_path / "secret"
    secret.write_text("host\n")
    (root / "etc").mkdir()
    os.symlink(str(secret), root / "etc/hosts")
    with pytest.raises(InitError, match="mount destination /etc/hosts is a symlink"):
        _target(rfd, "/etc/hosts", is_dir=False)
    assert secret.read_text() == "host\n"


def test_strict_target_is_real_dir(rootfs: tuple[Path, int]) -> None:
    root, rfd = rootfs
    os.symlink("/", root / "proc")
    with pytest.raises(InitError):
        _target(rfd, "/proc", is_dir=True, strict="proc")
    assert init._STRICT_TREES == ("/proc", "/sys", "/dev")
