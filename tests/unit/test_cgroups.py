"""cgroup files and values written, against fake cgroupfs trees (pure v2, v1 and hybrid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove.runtime.cgroups import Cgroups, Layout, read_layout, v2_weight
from cove.spec.runtime import CPU, Memory, Pids, Resources

RES = Resources(
    memory=Memory(limit=32 << 20, swap=64 << 20),
    cpu=CPU(shares=512, quota=50_000, period=100_000, cpus="0-1"),
    pids=Pids(16),
)


def fake_v2(tmp_path: Path) -> Path:
    base = tmp_path / "cg2"
    base.mkdir()
    (base / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (base / "cgroup.subtree_control").write_text("")
    return base


def test_pure_v2_files(tmp_path: Path) -> None:
    base = fake_v2(tmp_path)
    # a real cgroupfs makes these files itself when a directory is created
    (base / "cove").mkdir()
    (base / "cove" / "cgroup.subtree_control").write_text("")
    cg = Cgroups("cove/abc", Layout(unified=str(base)))
    assert cg.create(RES) == []
    d = base / "cove" / "abc"
    assert (d / "memory.max").read_text() == str(32 << 20)
    assert (d / "memory.swap.max").read_text() == str(32 << 20)  # v2 counts swap alone
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "cpu.weight").read_text() == str(v2_weight(512)) == "20"
    assert (d / "cpuset.cpus").read_text() == "0-1"
    assert (d / "pids.max").read_text() == "16"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"
    assert (
        base / "cove" / "cgroup.subtree_control"
    ).read_text() == "+cpu +cpuset +io +memory +pids"
    assert cg.procs_files() == [str(d / "cgroup.procs")]
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed()


def test_v1_and_hybrid_files(tmp_path: Path) -> None:
    mounts = {}
    for ctrl in ("memory", "cpu", "cpuset", "pids", "devices"):
        d = tmp_path / ctrl
        d.mkdir()
        mounts[ctrl] = str(d)
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    (tmp_path / "cpuset" / "cove").mkdir()
    (tmp_path / "cpuset" / "cove" / "cpuset.cpus").write_text("")
    (tmp_path / "cpuset" / "cove" / "cpuset.mems").write_text("")
    (tmp_path / "memory" / "cove" / "x").mkdir(parents=True)
    (tmp_path / "memory" / "cove" / "x" / "memory.memsw.limit_in_bytes").write_text("")
    unified = tmp_path / "unified"
    unified.mkdir()
    cg = Cgroups("cove/x", Layout(v1=mounts, unified=str(unified)))
    assert cg.create(RES) == []
    assert (tmp_path / "cpuset" / "cove" / "cpuset.mems").read_text() == "0"
    assert (tmp_path / "memory/cove/x/memory.limit_in_bytes").read_text() == str(32 << 20)
    assert (tmp_path / "memory/cove/x/memory.memsw.limit_in_bytes").read_text() == str(64 << 20)
    assert (tmp_path / "cpu/cove/x/cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "cpu/cove/x/cpu.shares").read_text() == "512"
    assert (tmp_path / "cpuset/cove/x/cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "pids/cove/x/pids.max").read_text() == "16"
    assert (tmp_path / "devices/cove/x/devices.allow").read_text() == "c 10:200 rwm"  # last rule
    assert (unified / "cove" / "x").is_dir()  # hybrid: tracked in the v2 tree too
    assert len(cg.procs_files()) == 6


def test_read_layout(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    layout = read_layout(str(info))
    assert layout.v1 == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
    }
    assert layout.unified == "/sys/fs/cgroup/unified" and not layout.pure_v2
    info.write_text("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n")
    assert read_layout(str(info)).pure_v2


def test_bad_path() -> None:
    with pytest.raises(Exception, match="invalid cgroups path"):
        Cgroups("../escape", Layout())
