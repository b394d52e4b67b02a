"""podman 4.3 (Debian, with conmon) running containers through ``--runtime cove-runc``
(issue 18): run --rm, -d, exec, stop, rm. podman gets its own temporary --root, --runroot
and --tmpdir, cgroupfs cgroups (cove-runc refuses --systemd-cgroup) and no network (no
bridge or iptables rules to leave behind); the image is the shared Alpine rootfs imported
with ``podman import``, never pulled."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ALPINE_TAR, COVE_RUNC, remove_cgroup_tree

IMAGE = "localhost/alpine:3.20"


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        # podman 4.3 calls `state ID` without the runtime flags: cove-runc's default --root
        self.runc_root = Path("/run/cove-runc")
        self.ids: set[str] = set()  # every container this test made, for cleanup
        self.argv = [
            "podman", "--root", str(base / "root"), "--runroot", str(base / "runroot"),
            "--tmpdir", str(base / "tmp"), "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", "--runtime", str(COVE_RUNC),
        ]  # fmt: skip

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("run",) and not _can_raise_rlimits():
            # podman asks for RLIMIT_NOFILE 1048576 as root; without CAP_SYS_RESOURCE (a
            # sandbox's bounding set) no runtime may raise a hard limit, runc included
            # (podman's own default for nproc, 32768, when a --ulimit is given is 1048576)
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
            limits = ("--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}")
            args = ("run", *limits, *args[1:])
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {args}: rc {proc.returncode}: {proc.stderr}")
        return proc

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(COVE_RUNC), "--root", str(self.runc_root), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _can_raise_rlimits() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE
    return False


@pytest.fixture
def podman() -> Iterator[Podman]:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: scripts/test-deps.sh installs it")
    # short: podman refuses a --runroot longer than 50 characters (pytest's tmp_path is)
    base = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
    pm = Podman(base)
    try:
        pm("import", str(ALPINE_TAR), IMAGE)
        yield pm
    finally:
        pm.ids.update(pm("ps", "-aq", "--no-trunc", check=False).stdout.split())
        pm("rm", "--all", "--force", "--time", "0", check=False)
        pm("system", "reset", "--force", check=False)
        listed = [c for c in pm.runc("list", "-q").stdout.split() if c in pm.ids]
        for cid in listed:
            pm.runc("delete", "--force", cid)
        remove_cgroup_tree("libpod_parent")
        mounts = Path("/proc/self/mountinfo").read_text()
        if str(base) not in mounts:
            shutil.rmtree(base, ignore_errors=True)
        assert str(base) not in mounts, "podman left mounts behind"
        assert not listed, f"cove-runc containers left behind by podman: {listed}"


def test_podman_run_rm_prints(podman: Podman) -> None:
    proc = podman("run", "--rm", "--network", "none", IMAGE, "cat", "/etc/alpine-release")
    assert proc.stdout == "3.20.3\n"
    failing = podman("run", "--rm", "--network", "none", IMAGE, "sh", "-c", "exit 5", check=False)
    assert failing.returncode == 5  # the container's status, through conmon's exit file
    assert podman("ps", "-aq").stdout.split() == []
    # cove-runc ran and deleted them: none of podman's containers is left in its state
    assert not set(podman.runc("list", "-q").stdout.split()) & podman.ids


def test_podman_detach_exec_stop_rm(podman: Podman) -> None:
    cid = podman("run", "-d", "--network", "none", "--name", "web", IMAGE,
                 "sh", "-c", "echo up; exec sleep 1000").stdout.strip()  # fmt: skip
    podman.ids.add(cid)
    inspect = json.loads(podman("inspect", "web").stdout)[0]
    assert inspect["State"]["Status"] == "running" and inspect["OCIRuntime"] == str(COVE_RUNC)
    # the container is cove-runc's: its state names podman's bundle and the same init
    state = json.loads(podman.runc("state", cid).stdout)
    assert state["status"] == "running" and state["pid"] == inspect["State"]["Pid"]

    out = podman("exec", "web", "sh", "-c", "cat /etc/alpine-release; exit 0").stdout
    assert out == "3.20.3\n"
    assert podman("exec", "web", "sh", "-c", "exit 9", check=False).returncode == 9
    assert podman("logs", "web").stdout == "up\n"

    podman("stop", "--time", "2", "web")
    stopped = json.loads(podman("inspect", "web").stdout)[0]["State"]
    assert stopped["Status"] == "exited"
    podman("rm", "web")
    assert podman("ps", "-aq").stdout.split() == []
    assert cid not in podman.runc("list", "-q").stdout.split()
