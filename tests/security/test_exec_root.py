"""Issue 23: `exec` runs its command in the container's root, even when cove runs in a chroot.

The attack surface: build systems and CI runners run cove inside a chroot. A container made
there has a mount namespace whose root mount is not the container's root (pivot_root swaps
the chroot's mount, not the namespace's root), and setns(CLONE_NEWNS) puts a joining
process at the namespace's root mount: the host's tree. The exec'd process then joined the
container's pid and net namespaces but saw the host's /proc, /sys/class/net and files. exec
must enter the init's own root (through /proc/PID/root, opened before the joins) and verify
it, or refuse.

cove is run inside ``unshare -m`` (slave propagation: nothing we mount reaches the host,
the host's unmounts reach us) + a recursive bind of / + chroot into that bind, so the venv,
the test's state root, /proc and /sys are at the same paths there.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import CoveRunner, cove_argv, in_chroot_argv

# pid 1 of the container: a command no host process runs
MARK = "31536017"
COMMAND = ("sleep", MARK)
NAME = "inroot"


@pytest.fixture
def newroot(tmp_path: Path) -> Path:
    d = tmp_path / "chroot"
    d.mkdir()
    return d


def _cove(cove_root: Path, newroot: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """cove on the host (``newroot`` None) or inside a chroot of a bind of the host's /."""
    argv = cove_argv(cove_root, *args)
    if newroot is not None:
        argv = in_chroot_argv(newroot, argv)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"cove {' '.join(args)}: {proc.returncode} {proc.stderr!r}"
    return proc


@pytest.mark.parametrize(
    ("run_in", "exec_in"),
    [
        ("chroot", "chroot"),  # the case: cove lives in the chroot
        ("chroot", "host"),  # a container made in a chroot, exec'd from outside
        ("host", "chroot"),  # exec from a chroot into a host's container
        ("host", "host"),  # positive control: as before
    ],
)
def test_exec_sees_the_containers_root(
    cove: CoveRunner, alpine: str, cove_root: Path, newroot: Path, run_in: str, exec_in: str
) -> None:
    where = {"chroot": newroot, "host": None}
    _cove(cove_root, where[run_in], "run", "-d", "--name", NAME, "alpine:3.20", *COMMAND)
    try:
        cmdline = _cove(cove_root, where[exec_in], "exec", NAME, "cat", "/proc/1/cmdline").stdout
        assert cmdline.split("\0")[:2] == list(COMMAND), f"/proc/1 is not the init: {cmdline!r}"
        links = _cove(cove_root, where[exec_in], "exec", NAME, "ls", "/sys/class/net").stdout
        assert links.split() == ["eth0", "lo"], f"not the container's interfaces: {links!r}"
        release = _cove(cove_root, where[exec_in], "exec", NAME, "cat", "/etc/alpine-release")
        assert release.stdout.strip() == "3.20.3"
        # the working directory and the shell's view agree: the process is in the root
        script = "pwd; ls /proc/1/root/etc/alpine-release"
        pwd = _cove(cove_root, where[exec_in], "exec", "-w", "/etc", NAME, "sh", "-c", script)
        assert pwd.stdout.split() == ["/etc", "/proc/1/root/etc/alpine-release"]
    finally:
        cove("rm", "-f", NAME, check=False)


def test_exec_refused_when_the_root_cannot_be_verified(cove: CoveRunner, alpine: str) -> None:
    """Fail closed: a container whose /proc no longer shows its init (a privileged one
    unmounted it) gets no exec, rather than a command run on an unverified root."""
    cove("run", "-d", "--name", NAME, "--privileged", "alpine:3.20", *COMMAND)
    try:
        cove("exec", NAME, "umount", "-l", "/proc")
        refused = cove("exec", NAME, "touch", "/ran", check=False)
        assert refused.returncode == 126
        assert refused.stderr.strip().startswith("Error: exec: cannot check the container's root")
        assert len(refused.stderr.strip().splitlines()) == 1
        # nothing of the command ran: the file it would have made is not there
        exported = cove("export", NAME, text=False).stdout
        with tarfile.open(fileobj=io.BytesIO(exported)) as t:
            names = [m.name.removeprefix("./").strip("/") for m in t]
        assert "etc/alpine-release" in names and "ran" not in names
    finally:
        cove("rm", "-f", NAME, check=False)
