"""The aarch64 user switch of run --vm guests (cove/vm/setids_arm64.py), run under Debian's
qemu-aarch64-static directly (no binfmt_misc, no root needed to read ids; as root, the ids
really change). Its execve of a host program runs that program natively."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cove.vm.setids_arm64 import program

QEMU = "qemu-aarch64-static"


def run(tmp_path: Path, prog: bytes, *argv: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(QEMU) is None:
        pytest.fail(f"{QEMU} missing: scripts/test-deps.sh installs qemu-user-static")
    exe = tmp_path / "setids"
    exe.write_bytes(prog)
    exe.chmod(0o755)
    return subprocess.run([QEMU, str(exe), *argv], capture_output=True, text=True, timeout=30)


def test_execs_its_arguments(tmp_path: Path) -> None:
    uid, gid = os.getuid(), os.getgid()
    proc = run(tmp_path, program(uid, gid, list(os.getgroups())), "/bin/sh", "-c", "echo $0 ok")
    assert (proc.returncode, proc.stdout) == (0, "/bin/sh ok\n")


def test_missing_program_exits_126(tmp_path: Path) -> None:
    proc = run(tmp_path, program(os.getuid(), os.getgid(), []), "/nonexistent")
    assert proc.returncode == 126


@pytest.mark.skipif(os.geteuid() != 0, reason="switching ids needs root")
def test_switches_ids(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    proc = run(tmp_path, program(1000, 1001, [1001, 44, 70000]), "/bin/sh", "-c",
               'echo "$(id -u) $(id -g) $(id -G)"')  # fmt: skip
    assert proc.stdout == "1000 1001 1001 44 70000\n"


def test_refuses_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="out of range"):
        program(1 << 32, 0, [])
