"""Load (issue 22): workers run, exec, connect, stop, remove, build and pull at once while a
killer SIGKILLs random cove processes of the root (commands, their helpers, monitors, DNS
responders). Afterwards, with no command running, the records must be true to the kernel,
and after ``rm -f`` of everything and ``system reset -f`` nothing of the root may be left.

``pytest -s`` prints the cycle and kill counts; a failure carries them in its message.
``bench/soak.py`` runs the same for longer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    CoveRunner,
    cove_argv,
    host_leaks,
    host_snapshot,
    records_against_kernel,
    root_chains,
    root_processes,
    soak,
    soak_setup,
)
from registries import Registry

SECONDS = float(os.environ.get("COVE_SOAK_SECONDS", "40"))  # at most 60 s of load in the suite
WORKERS = 4


def test_soak_under_random_sigkills(
    cove: CoveRunner, cove_root: Path, alpine_tar: Path, plain_registry: Registry,
    tmp_path: Path,
) -> None:  # fmt: skip
    before = host_snapshot()
    context = tmp_path / "ctx"
    soak_setup(lambda *a: cove_argv(cove_root, *a), cove_root, alpine_tar,
               plain_registry.host, context)  # fmt: skip
    res = soak(lambda *a: cove_argv(cove_root, *a), cove_root, seconds=min(SECONDS, 60),
               workers=WORKERS, registry=plain_registry.host, context=context)  # fmt: skip
    print(f"\n{res.summary()}")
    where = f"\n{res.summary()}"
    # positive control: the load did happen, and the killer did hit things
    assert res.complete > 0, f"no cycle completed{where}"
    assert res.kills > 0, f"nothing was killed{where}"
    assert not res.hung, f"commands hung{where}"

    # no command is running now: `ps -a` reconciles, then every record must be true
    cove("ps", "-a")
    bad = records_against_kernel(cove_root)
    assert not bad, "\n".join(["records not true to the kernel:", *bad]) + where

    ids = cove("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        rm = cove("rm", "-f", *ids, check=False)
        assert rm.returncode == 0, f"rm -f failed: {rm.stderr}{where}"
    assert cove("ps", "-aq").stdout.split() == [], where
    assert records_against_kernel(cove_root) == [], where
    # the networks stay (soaknet, the default one), with their bridges, rules and responders
    left = host_leaks(before, cove_root, networks_stay=True)
    assert not left, "\n".join(["left after rm -f of everything:", *left]) + where

    cove("system", "reset", "-f")
    left = host_leaks(before, cove_root) + [f"chain {c}" for c in root_chains(cove_root)]
    assert not left, "\n".join(["left after system reset -f:", *left]) + where


def test_leak_checks_find_what_is_left(cove: CoveRunner, cove_root: Path, alpine: str) -> None:
    """Positive control of the checks above: a container's process, monitor and cgroups, a
    marked operation and a stray process of the root are all reported."""
    before = host_snapshot()
    cid = cove("run", "-d", "alpine:3.20", "sleep", "600").stdout.strip()
    leaks = host_leaks(before, cove_root)
    assert any(x.startswith("cgroup ") and cid in x for x in leaks), leaks
    assert any(x.startswith("process ") and "root=" in x for x in leaks), leaks  # its monitor
    assert any(x.startswith("netns ") for x in leaks), leaks
    # a record that lies: marked as being started by a process that is not running
    import sqlite3

    db = sqlite3.connect(cove_root / "state.db")
    with db:
        db.execute("UPDATE containers SET op = 'start', pid = 1 WHERE id = ?", (cid,))
    db.close()
    bad = records_against_kernel(cove_root)
    assert any("operation start" in b for b in bad), bad
    assert any("its process 1 is gone" in b for b in bad), bad
    stray = subprocess.Popen(["sh", "-c", "sleep 600", f"{cove_root}/networks/x/hosts"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        assert any(str(stray.pid) in x for x in host_leaks(before, cove_root))
        assert stray.pid in [p for p, _ in root_processes(cove_root)]
    finally:
        os.killpg(stray.pid, signal.SIGKILL)
        stray.wait()
    db = sqlite3.connect(cove_root / "state.db")
    with db:
        db.execute("UPDATE containers SET op = '', pid = 0 WHERE id = ?", (cid,))
    db.close()
    for pid, argv in root_processes(cove_root):  # the monitor: then rm -f stops the rest
        if any(a.startswith("root=") for a in argv):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while root_processes(cove_root) and time.monotonic() < deadline:
        time.sleep(0.05)
    cove("rm", "-f", cid)
    assert not host_leaks(before, cove_root, networks_stay=True)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s"])
