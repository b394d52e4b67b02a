"""Read-only binds are read-only all the way down (Docker 25's "rro").

A remount makes only the top mount of an ``rbind`` read-only; every submount of the source
keeps its own flags. Attack: write through a submount of a ``:ro`` volume, or of the host's
/sys that ``--network host`` binds in, from inside the container.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import CoveRunner, cove_argv, host_submount

EROFS = "Read-only file system"


@pytest.fixture
def sys_submount() -> Iterator[Path]:
    """A writable mount under the host's /sys that no container mount shadows.

    The host's own (cgroup hierarchies) are covered by the container's cgroup mount, so the
    test lends /sys one (a small tmpfs on an empty directory) and unmounts it afterwards.
    """
    for cand in ("/sys/fs/pstore", "/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf"):
        p = Path(cand)
        if p.is_dir() and not os.path.ismount(p) and not any(p.iterdir()):
            with host_submount(p) as mnt:
                yield mnt
            return
    pytest.skip("no empty, unmounted directory under /sys to lend a submount")


@pytest.mark.parametrize("where", ["submount", "cgroup"])
def test_host_network_sys_is_recursively_readonly(
    cove: CoveRunner, alpine: str, sys_submount: Path, where: str
) -> None:
    name = f"cove-test-{uuid.uuid4().hex[:8]}"
    target = sys_submount / name if where == "submount" else Path("/sys/fs/cgroup/pids") / name
    try:
        p = cove("run", "--rm", "--network", "host", "alpine:3.20", "sh", "-c",
                 f"mkdir {target}; echo rc=$?", check=False)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert not target.exists(), f"the container created {target} on the host"
        assert "rc=1" in p.stdout and EROFS in p.stderr, (p.stdout, p.stderr)
    finally:
        if target.is_dir():
            target.rmdir()
    # positive controls: reading the host's /sys works, and so does a private-network container
    p = cove("run", "--rm", "--network", "host", "alpine:3.20", "cat", "/sys/kernel/uevent_seqnum")
    assert p.stdout.strip().isdigit()
    p = cove("run", "--rm", "alpine:3.20", "sh", "-c", "ls /sys/kernel >/dev/null && echo ok")
    assert p.stdout.strip() == "ok"


@pytest.mark.parametrize("how", ["volume", "mount"])
def test_ro_bind_submount_is_readonly(
    cove: CoveRunner, alpine: str, tmp_path: Path, how: str
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    with host_submount(src / "sub") as sub:
        flags = (
            ["-v", f"{src}:/x:ro"]
            if how == "volume"
            else ["--mount", f"type=bind,src={src},dst=/x,readonly"]
        )
        script = "touch /x/sub/evil; echo sub=$?; touch /x/top; echo top=$?"
        p = cove("run", "--rm", *flags, "alpine:3.20", "sh", "-c", script, check=False)
        assert p.returncode == 0, p.stderr
        assert not (sub / "evil").exists(), "wrote through the submount of a read-only bind"
        assert "sub=1" in p.stdout and "top=1" in p.stdout, (p.stdout, p.stderr)
        assert p.stderr.count(EROFS) == 2, p.stderr
        assert not (src / "top").exists()
        # positive control: the same directory bound read-write is writable, submount too
        p = cove("run", "--rm", "-v", f"{src}:/x", "alpine:3.20", "sh", "-c",
                 "echo hi > /x/sub/ok && echo hi > /x/top")  # fmt: skip
        assert (sub / "ok").read_text() == "hi\n"
        assert (src / "top").read_text() == "hi\n"


@pytest.fixture
def vmrun(cove: CoveRunner, cove_root: Path, alpine: str) -> Iterator[CoveRunner]:
    """``cove`` with the guest kernel installed; afterwards no QEMU or virtiofsd is left."""
    vmguest.install_kernel(cove_root)
    yield cove
    ids = cove("ps", "-aq", "--no-trunc").stdout.split()
    subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True)
    assert vmguest.leftovers(ids, str(cove_root)) == []


def test_vm_ro_volume_submount_is_readonly(vmrun: CoveRunner, tmp_path: Path) -> None:
    """``run --vm -v DIR:/x:ro``: virtiofsd (root on the host) serves DIR; a root guest can
    remount its side read-write, so only the host side's read-only bind protects it."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    with host_submount(src / "sub") as sub:
        script = "mount -o remount,rw /x; echo x > /x/sub/evil; echo x > /x/top; true"
        vmrun("run", "--vm", "--rm", "-v", f"{src}:/x:ro", "alpine:3.20", "sh", "-c", script)
        assert not (sub / "evil").exists(), "the guest wrote through the submount of a :ro share"
        assert not (src / "top").exists()
        # positive control: read-write, the submount is writable through virtiofsd
        vmrun("run", "--vm", "--rm", "-v", f"{src}:/x", "alpine:3.20", "sh", "-c",
              "echo hi > /x/sub/ok")  # fmt: skip
        assert (sub / "ok").read_text() == "hi\n"
