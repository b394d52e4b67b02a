"""The guest's user switch program (cove/vm/setids.py), run for real on this x86-64 host."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

from cove.vm.setids import program

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86-64 program")


def _write(tmp_path: Path, uid: int, gid: int, groups: list[int]) -> Path:
    path = tmp_path / "setids"
    path.write_bytes(program(uid, gid, groups))
    path.chmod(0o755)
    return path


def test_exec_with_args_and_env(tmp_path: Path) -> None:
    me = os.getuid(), os.getgid()
    prog = _write(tmp_path, *me, list(os.getgroups()) or [me[1]])
    out = subprocess.run([str(prog), "/bin/sh", "-c", 'echo "$0 $1 $X"', "a", "b"],
                         capture_output=True, text=True, env={"X": "y"})  # fmt: skip
    assert out.returncode == 0 and out.stdout == "a b y\n"


def test_failure_is_126(tmp_path: Path) -> None:
    prog = _write(tmp_path, os.getuid(), os.getgid(), [])
    assert subprocess.run([str(prog), "/no/such/program"]).returncode == 126


@pytest.mark.skipif(os.geteuid() != 0, reason="switching ids needs root")
def test_switches_groups_gid_uid(tmp_path: Path) -> None:
    prog = _write(tmp_path, 65534, 65533, [65534, 100])
    out = subprocess.run([str(prog), "/bin/sh", "-c", "id -u; id -g; id -G"],
                         capture_output=True, text=True)  # fmt: skip
    uid, gid, groups = out.stdout.split("\n")[:3]
    assert (uid, gid) == ("65534", "65533")
    assert set(groups.split()) == {"65533", "65534", "100"}  # id -G lists the gid too


def test_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError):
        program(-1, 0, [])
    with pytest.raises(ValueError):
        program(0, 0, [1 << 32])
