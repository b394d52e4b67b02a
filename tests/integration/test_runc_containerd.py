"""containerd 1.6 (Debian) running containers through cove-runc (issue 18): the runc v2 shim
calls ``cove-runc`` as it calls runc (``ctr run --runc-binary``). The test starts its own
containerd (own root, state, socket and config; the CRI plugin off) and stops it, with
every task, shim, mount and cgroup it made; the image is the shared Alpine rootfs as an
OCI archive given to ``ctr image import``."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ALPINE_TAR, COVE_RUNC, oci_layout, remove_cgroup_tree

IMAGE = "localhost/alpine:3.20"


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "c.sock"
        self.ns = f"covetest{os.getpid()}"  # also the top-level cgroup of its containers
        self.runc_root = base / "runc"
        self.proc: subprocess.Popen[bytes] | None = None
        # containerd 1.6 puts shim sockets in /run/containerd/s and ctr its fifos in
        # /run/containerd/fifo whatever its state dir: removed after, if the test made them
        self.host_dirs = [Path("/run/containerd/fifo"), Path("/run/containerd/s"),
                          Path("/run/containerd")]  # fmt: skip
        self.made = [d for d in self.host_dirs if not d.exists()]

    def start(self) -> None:
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base}/root"\n'
            f'state = "{self.base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
        )
        log = (self.base / "containerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (self.base / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not come up"
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.sock), "--namespace", self.ns, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {args}: rc {proc.returncode}: {proc.stderr}")
        return proc

    def shims(self) -> list[int]:
        """The shims serving this containerd (their command line names its socket)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                    if b"containerd-shim" in argv[0] and str(self.sock).encode() in argv:
                        out.append(int(d.name))
        return out

    def stop(self) -> list[str]:
        """Remove every task and container, stop containerd and its shims; returns what
        had to be forced (empty when the test cleaned up after itself)."""
        forced = []
        for task in self.ctr("task", "ls", "-q", check=False).stdout.split():
            forced.append(f"task {task}")
            self.ctr("task", "kill", "--signal", "SIGKILL", task, check=False)
            time.sleep(0.2)
            self.ctr("task", "delete", "--force", task, check=False)
        for c in self.ctr("container", "ls", "-q", check=False).stdout.split():
            forced.append(f"container {c}")
            self.ctr("container", "delete", c, check=False)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.shims():
            forced.append(f"shim {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mnt = line.split()[4]
            if mnt.startswith(str(self.base)):
                forced.append(f"mount {mnt}")
                subprocess.run(["umount", "-l", mnt], check=False)
        remove_cgroup_tree(self.ns)
        for d in self.made:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: anything else there is not ours
        return forced


def _alpine_archive(where: Path) -> Path:
    """The shared Alpine rootfs as a one-layer OCI image archive (index.json, blobs/)."""
    layout = where / "layout"
    oci_layout(layout, [gzip.decompress(ALPINE_TAR.read_bytes())], "3.20")
    archive = where / "alpine.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for item in sorted(layout.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is missing: scripts/test-deps.sh installs it")
    base = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))  # short: unix socket paths
    cd = Containerd(base)
    forced: list[str] = []
    try:
        cd.start()
        cd.ctr("image", "import", "--base-name", "localhost/alpine", str(_alpine_archive(base)))
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
