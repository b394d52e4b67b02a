"""containerd 1.6 (Debian) running containers through cove-runc (issue 18): the runc v2 shim
calls ``cove-runc`` as it calls runc (``ctr run --runc-binary``). The test starts its own
containerd (own root, state, socket and config; the CRI plugin off) and stops it, with
every task, shim, mount and cgroup it made; the image is the shared Alpine rootfs as an
OCI archive given to ``ctr image import``."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import COVE_RUNC, Containerd, alpine_oci_archive

IMAGE = "localhost/alpine:3.20"


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is missing: scripts/test-deps.sh installs it")
    base = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))  # short: unix socket paths
    cd = Containerd(base)
    forced: list[str] = []
    try:
        cd.start()
        cd.ctr("image", "import", "--base-name", "localhost/alpine", str(alpine_oci_archive(base)))
        yield cd
    finally:
        forced = cd.stop()
        left = [x for x in forced if not x.startswith("mount ")]
        if not any(x.startswith("mount ") for x in forced):
            shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the test left these behind: {left}"


def test_ctr_run_with_runc_binary(containerd: Containerd) -> None:
    assert IMAGE in containerd.ctr("image", "ls", "-q").stdout.split()
    run = ["run", "--rm", "--runc-binary", str(COVE_RUNC), "--runc-root", str(containerd.runc_root)]
    proc = containerd.ctr(*run, IMAGE, "t1", "cat", "/etc/alpine-release")
    assert proc.stdout.replace("\r", "") == "3.20.3\n"
    failing = containerd.ctr(*run, IMAGE, "t2", "sh", "-c", "exit 4", check=False)
    assert failing.returncode == 4  # the status the shim read from its reaped init
    assert containerd.ctr("task", "ls", "-q").stdout.split() == []
    # the shim ran cove-runc: its state lived under the root the shim passed, and is gone
    assert (containerd.runc_root / containerd.ns).is_dir()
    assert list((containerd.runc_root / containerd.ns).iterdir()) == []


def test_ctr_detached_task_exec_kill(containerd: Containerd) -> None:
    run = ["run", "-d", "--runc-binary", str(COVE_RUNC), "--runc-root", str(containerd.runc_root)]
    containerd.ctr(*run, IMAGE, "d1", "sleep", "1000")
    tasks = containerd.ctr("task", "ls").stdout
    assert "d1" in tasks and "RUNNING" in tasks
    state = subprocess.run(
        [str(COVE_RUNC), "--root", str(containerd.runc_root / containerd.ns), "state", "d1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = json.loads(state.stdout)["pid"]
    # the cgroup ctr asked for (linux.cgroupsPath /<namespace>/<id>) holds the init
    procs = Path("/sys/fs/cgroup/pids") / containerd.ns / "d1" / "cgroup.procs"
    if not procs.exists():
        procs = Path("/sys/fs/cgroup") / containerd.ns / "d1" / "cgroup.procs"
    assert str(pid) in procs.read_text().split()
    out = containerd.ctr("task", "exec", "--exec-id", "e1", "d1", "cat", "/etc/alpine-release")
    assert out.stdout == "3.20.3\n"
    pids = containerd.ctr("task", "ps", "d1").stdout
    assert str(pid) in pids
    containerd.ctr("task", "pause", "d1")
    assert "PAUSED" in containerd.ctr("task", "ls").stdout
    containerd.ctr("task", "resume", "d1")
    assert "RUNNING" in containerd.ctr("task", "ls").stdout
    containerd.ctr("task", "kill", "--signal", "SIGKILL", "d1")
    deadline = time.monotonic() + 20
    while "STOPPED" not in containerd.ctr("task", "ls").stdout:
        assert time.monotonic() < deadline, "the task did not stop"
        time.sleep(0.1)
    containerd.ctr("task", "delete", "d1")
    containerd.ctr("container", "delete", "d1")
    assert not (Path("/sys/fs/cgroup/pids") / containerd.ns / "d1").exists()
