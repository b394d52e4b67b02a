"""runc's pause/resume/ps/stats (cove.runtime.control) on the real kernel: a busy process in
a cgroup of its own, frozen and thawed through cgroup v2's ``cgroup.freeze`` (in the
unified tree of this hybrid host, or the root of a pure v2 host) and through the v1
freezer where one is mounted."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.runtime import control
from cove.runtime.cgroups import Layout, read_layout


def _proc_state(pid: int) -> str:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def _layouts() -> list[str]:
    host = read_layout()
    out = []
    if host.unified:
        out.append("v2")
    if "freezer" in host.v1:
        out.append("v1")
    return out


@pytest.fixture(params=_layouts())
def busy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Layout]]:
    """A busy-looping process in a fresh cgroup, and a runtime state dir naming it."""
    host = read_layout()
    if request.param == "v2":
        assert host.unified
        layout = Layout(unified=host.unified)
    else:
        layout = Layout(v1={"freezer": host.v1["freezer"]})
    cid = "ctl-" + secrets.token_hex(4)
    rel = f"cove-test/{cid}"
    dirs = [os.path.join(m, rel) for m in (*layout.v1.values(), layout.unified) if m]
    proc = None
    try:
        for d in dirs:
            os.makedirs(d)
        if request.param == "v2":
            assert os.path.exists(os.path.join(dirs[0], "cgroup.freeze")), "kernel lacks it"
        proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for d in dirs:
            Path(d, "cgroup.procs").write_text(str(proc.pid))
        state_dir = tmp_path / "runtime"
        (state_dir / cid).mkdir(parents=True)
        start = Path(f"/proc/{proc.pid}/stat").read_bytes()
        start_time = int(start[start.rindex(b")") + 2 :].split()[19])
        doc = {"id": cid, "pid": proc.pid, "startTime": start_time, "cgroupsPath": rel}
        (state_dir / cid / "state.json").write_text(json.dumps(doc))
        yield str(state_dir), cid, layout
    finally:
        if proc is not None:
            for d in dirs:  # a frozen task cannot die: thaw first
                for name, value in (("cgroup.freeze", "0"), ("freezer.state", "THAWED")):
                    if os.path.exists(os.path.join(d, name)):
                        Path(d, name).write_text(value)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for d in dirs:
            if os.path.isdir(d):
                os.rmdir(d)
            with contextlib.suppress(OSError):  # expected: another run still uses it
                os.rmdir(os.path.dirname(d))


def test_pause_freezes_and_resume_thaws(busy: tuple[str, str, Layout]) -> None:
    state_dir, cid, layout = busy
    pid = json.loads(Path(state_dir, cid, "state.json").read_text())["pid"]
    assert control.ps(state_dir, cid, layout=layout) == [pid]
    assert not control.paused(state_dir, cid, layout=layout)
    control.pause(state_dir, cid, layout=layout)
    assert control.paused(state_dir, cid, layout=layout)
    # the kernel says frozen; the busy loop is off the run queue (S/D), not running (R)
    assert _proc_state(pid) in ("S", "D")
    control.resume(state_dir, cid, layout=layout)
    assert not control.paused(state_dir, cid, layout=layout)
    # positive control: thawed, the loop runs again (R at some poll; no time asserted)
    for _ in range(2000):
        if _proc_state(pid) == "R":
            break
        time.sleep(0.005)
    assert _proc_state(pid) == "R"
