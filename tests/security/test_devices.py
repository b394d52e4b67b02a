"""Device access control: a container can mknod any node (Docker's default "c/b *:* m") but
open only the standard ones, on cgroup v1 (devices.allow) and on cgroup v2 (an eBPF
BPF_PROG_TYPE_CGROUP_DEVICE program on its cgroup2 directory).

Attack: make a node for the host's disk (or a loop device, /dev/kmsg) inside the container and
read it. On a pure v2 host without the eBPF program nothing refuses that open.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from helpers import CoveRunner

from cove.runtime import devices_bpf
from cove.runtime.cgroups import read_layout

EPERM_TEXT = "Operation not permitted"


def host_disk() -> tuple[int, int]:
    """(major, minor) of a real block device of the host: the root filesystem's, else the
    first disk in /sys/block."""
    dev = os.stat("/").st_dev
    if os.path.exists(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"):
        return os.major(dev), os.minor(dev)
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith(("loop", "ram", "zram")):
            major, minor = Path(f"/sys/block/{name}/dev").read_text().split(":")
            return int(major), int(minor)
    pytest.skip("no block device on this host")


def node_of(name: str) -> str:
    if name == "disk":  # the host's disk
        major, minor = host_disk()
        return f"b {major} {minor}"
    # the kernel log; a loop block device (root opens it on hosts that refuse the disk)
    return {"kmsg": "c 1 11", "loop": "b 7 0"}[name]


@pytest.mark.parametrize("how", ["run", "exec"])
@pytest.mark.parametrize("name", ["disk", "loop", "kmsg"])
def test_mknod_then_open_is_refused(cove: CoveRunner, alpine: str, name: str, how: str) -> None:
    node = node_of(name)
    # mknod itself is allowed (as Docker); the open is what must be refused
    script = f"mknod /tmp/{name} {node} && echo made && head -c1 /tmp/{name} | od -An -c"
    if how == "run":
        p = cove("run", "--rm", "alpine:3.20", "sh", "-c", script, check=False)
    else:
        cid = cove("run", "-d", "alpine:3.20", "sleep", "300").stdout.strip()
        p = cove("exec", cid, "sh", "-c", script, check=False)
        cove("rm", "-f", cid)
    assert "made" in p.stdout, (p.stdout, p.stderr)
    assert EPERM_TEXT in p.stderr, (p.stdout, p.stderr)
    assert p.stdout.strip() == "made", "a byte of the device was read"
    # positive control: the default nodes work in the same kind of container
    ok = (
        "head -c1 /dev/zero | od -An -tx1 && echo x > /dev/null && "
        "head -c4 /dev/urandom | wc -c && exec 3<>/dev/ptmx && echo ptmx-ok"
    )
    p = cove("run", "--rm", "alpine:3.20", "sh", "-c", ok)
    assert p.stdout.split() == ["00", "4", "ptmx-ok"], (p.stdout, p.stderr)


def test_device_flag_allows_that_node(cove: CoveRunner, alpine: str) -> None:
    if not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
        pytest.skip("no /dev/fuse on this host")
    # without --device: the same node made in the container cannot be opened
    p = cove("run", "--rm", "alpine:3.20", "sh", "-c",
             "mknod /tmp/fuse c 10 229 && exec 3<>/tmp/fuse", check=False)  # fmt: skip
    assert p.returncode != 0 and EPERM_TEXT in p.stderr, (p.stdout, p.stderr)
    p = cove("run", "--rm", "--device", "/dev/fuse", "alpine:3.20", "sh", "-c",
             "exec 3<>/dev/fuse && echo fuse-ok")  # fmt: skip
    assert p.stdout.strip() == "fuse-ok", (p.stdout, p.stderr)
    # PERMS: read only, under another name; a read-write open needs the w bit too
    p = cove("run", "--rm", "--device", "/dev/fuse:/dev/myfuse:r", "alpine:3.20", "sh", "-c",
             "exec 3</dev/myfuse && echo r-ok; exec 4<>/dev/myfuse && echo rw-ok",
             check=False)  # fmt: skip
    assert p.stdout.split() == ["r-ok"], (p.stdout, p.stderr)
    assert EPERM_TEXT in p.stderr


def _open_in(cgroup_dir: str | None, path: str, flags: int) -> int:
    """In a forked child (it stays in the test's v1 cgroups): join ``cgroup_dir`` of the
    cgroup2 tree if given, open ``path``; returns 0 or the errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 0
        try:
            if cgroup_dir:
                with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                    f.write("0")
            os.close(os.open(path, flags))
        except OSError as e:
            code = e.errno or 255
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    try:
        got = os.read(r, 1)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert got, "the child died before reporting"
    return got[0]


@pytest.mark.parametrize("name", ["loop", "kmsg"])
def test_ebpf_program_itself_denies(
    cove: CoveRunner, alpine: str, tmp_path: Path, name: str
) -> None:
    unified = read_layout().unified
    if unified is None:
        pytest.skip("no cgroup2 hierarchy on this host")
    # nodes that open normally for root outside any restricting cgroup (a disk may not: on
    # some VMs root cannot open the boot disk at all)
    kind, major, minor = node_of(name).split()
    node = tmp_path / name
    mode = stat.S_IFBLK if kind == "b" else stat.S_IFCHR
    os.mknod(node, mode | 0o600, os.makedev(int(major), int(minor)))
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    cid = cove("run", "-d", "alpine:3.20", "sleep", "300").stdout.strip()
    cg = os.path.join(unified, "cove", cid)
    try:
        assert os.path.isdir(cg)
        assert devices_bpf.attached(cg), f"no BPF_CGROUP_DEVICE program on {cg}"
        # positive control: the same open works for the same kind of process outside
        assert _open_in(None, str(node), os.O_RDONLY) == 0
        # inside the container's cgroup2 directory only (v1 devices cgroup: the root one,
        # which allows everything), so only the eBPF program can refuse
        assert _open_in(cg, str(node), os.O_RDONLY) == errno.EPERM
        assert _open_in(cg, str(null), os.O_RDWR) == 0  # an allowed node still opens there
    finally:
        cove("rm", "-f", cid)
    assert not os.path.exists(cg), "the cgroup (and with it the program) outlived the container"


def test_privileged_gets_no_filter(cove: CoveRunner, alpine: str) -> None:
    # --privileged allows every device (as Docker): the host's kmsg node opens
    p = cove("run", "--rm", "--privileged", "alpine:3.20", "sh", "-c",
             "mknod /tmp/kmsg c 1 11 && exec 3</tmp/kmsg && echo open-ok")  # fmt: skip
    assert p.stdout.strip() == "open-ok", (p.stdout, p.stderr)
