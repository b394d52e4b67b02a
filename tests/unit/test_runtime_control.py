"""runc's pause/resume/ps/stats/events (cove.runtime.control) against fake cgroupfs trees
(pure v2 and v1), and its pure parsers. The real kernel's v2 freezer is exercised by
tests/integration/test_runtime_freezer.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cove.errors import NotFound
from cove.runtime import control
from cove.runtime.cgroups import Layout


def _state(tmp_path: Path, cid: str, cgroups_path: str | None) -> str:
    sdir = tmp_path / "runtime"
    (sdir / cid).mkdir(parents=True)
    doc: dict[str, object] = {"id": cid, "pid": 0, "startTime": 0}
    if cgroups_path is not None:
        doc["cgroupsPath"] = cgroups_path
    (sdir / cid / "state.json").write_text(json.dumps(doc))
    return str(sdir)


def _v2(tmp_path: Path, rel: str) -> tuple[Layout, Path]:
    base = tmp_path / "cg2"
    d = base / rel
    d.mkdir(parents=True)
    return Layout(unified=str(base)), d


def test_v2_pause_resume_writes_cgroup_freeze(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "c1", "cove/c1")
    layout, d = _v2(tmp_path, "cove/c1")
    # a real kernel reports the outcome in cgroup.events; the fake says so up front
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    control.pause(state_dir, "c1", layout=layout)
    assert (d / "cgroup.freeze").read_text() == "1"
    assert control.paused(state_dir, "c1", layout=layout)
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    control.resume(state_dir, "c1", layout=layout)
    assert (d / "cgroup.freeze").read_text() == "0"
    assert not control.paused(state_dir, "c1", layout=layout)


def test_v1_pause_resume_writes_freezer_state(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "c2", "cove/c2")
    freezer = tmp_path / "freezer"
    (freezer / "cove" / "c2").mkdir(parents=True)
    layout = Layout(v1={"freezer": str(freezer)}, unified=str(tmp_path / "cg2"))
    control.pause(state_dir, "c2", layout=layout)
    assert (freezer / "cove" / "c2" / "freezer.state").read_text() == "FROZEN"
    assert control.paused(state_dir, "c2", layout=layout)
    control.resume(state_dir, "c2", layout=layout)
    assert (freezer / "cove" / "c2" / "freezer.state").read_text() == "THAWED"
    assert not control.paused(state_dir, "c2", layout=layout)


def test_cgroup_path_from_state_json_and_older_records(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "c3", "elsewhere/c3")
    layout, d = _v2(tmp_path, "elsewhere/c3")
    (d / "cgroup.procs").write_text("42\n7\n")
    assert control.ps(state_dir, "c3", layout=layout) == [7, 42]
    # a state.json from before cgroupsPath was recorded: runc's default for cove
    state_old = _state(tmp_path / "old", "c4", None)
    layout_old, d_old = _v2(tmp_path / "old", "cove/c4")
    (d_old / "cgroup.procs").write_text("9\n")
    assert control.ps(state_old, "c4", layout=layout_old) == [9]


def test_missing_container_is_not_found(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "here", "cove/here")
    for cid in ("absent", "../here", ""):
        with pytest.raises(NotFound):
            control.ps(state_dir, cid, layout=Layout(unified=str(tmp_path)))
    # positive control: the one that exists answers
    _v2(tmp_path, "cove/here")
    assert control.ps(state_dir, "here", layout=Layout(unified=str(tmp_path / "cg2"))) == []


def test_v2_stats_document(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "c5", "cove/c5")
    layout, d = _v2(tmp_path, "cove/c5")
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (d / "memory.current").write_text("10000\n")
    (d / "memory.stat").write_text("anon 4000\ninactive_file 3000\n")
    (d / "memory.max").write_text("65536\n")
    (d / "io.stat").write_text("8:0 rbytes=100 wbytes=20 rios=1 wios=1\n8:16 rbytes=1 wbytes=2\n")
    (d / "pids.current").write_text("3\n")
    (d / "pids.max").write_text("16\n")
    doc = control.stats(state_dir, "c5", layout=layout)
    assert doc == {
        "cpu": {"usage": {"total": 1_500_000}},
        "memory": {"usage": {"usage": 7000, "limit": 65536}},
        "pids": {"current": 3, "limit": 16},
        "blkio": {
            "ioServiceBytesRecursive": [
                {"op": "Read", "value": 101},
                {"op": "Write", "value": 22},
            ]
        },
    }
    (d / "pids.max").write_text("max\n")  # no limit: runc reports 0
    assert control.stats(state_dir, "c5", layout=layout)["pids"]["limit"] == 0


def test_events_stats_then_oom(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "c6", "cove/c6")
    layout, d = _v2(tmp_path, "cove/c6")
    (d / "pids.current").write_text("1\n")
    (d / "memory.events").write_text("oom 0\noom_kill 0\n")
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:
            (d / "memory.events").write_text("oom 1\noom_kill 1\n")
        else:
            import shutil

            shutil.rmtree(Path(state_dir) / "c6")  # the container is deleted

    got = list(control.events(state_dir, "c6", interval=2.5, layout=layout, sleep=nap))
    assert [e["type"] for e in got] == ["stats", "stats", "oom"]
    assert all(e["id"] == "c6" for e in got)
    assert got[0]["data"]["pids"]["current"] == 1
    assert naps == [2.5, 2.5]


def test_flat_keyed_and_freezer_words() -> None:
    assert control.flat_keyed("populated 1\nfrozen 0\nbad x\n\n") == {"populated": 1, "frozen": 0}
    assert control.parse_freezer_state("FROZEN\n") == "FROZEN"
    assert control.parse_freezer_state("FREEZING\n") == "THAWED"
    assert control.parse_freezer_state("THAWED\n") == "THAWED"


def test_oom_and_destroy(tmp_path: Path) -> None:
    state_dir = _state(tmp_path, "c7", "cove/c7")
    layout, d = _v2(tmp_path, "cove/c7")
    (d / "memory.events").write_text("oom 0\noom_kill 0\n")
    assert not control.oom_killed(state_dir, "c7", layout=layout)
    (d / "memory.events").write_text("oom 1\noom_kill 2\n")
    assert control.oom_killed(state_dir, "c7", layout=layout)
    # a real cgroupfs removes its files with the directory: the fake has none left
    (d / "memory.events").unlink()
    control.destroy_cgroups(state_dir, "c7", layout=layout)
    assert not d.exists()
    # no state.json (a create killed before writing it): the default path cove/<id>
    orphan = tmp_path / "cg2" / "cove" / "c8"
    orphan.mkdir()
    control.destroy_cgroups(state_dir, "c8", layout=layout)
    assert not orphan.exists() and (tmp_path / "cg2" / "cove").is_dir()
