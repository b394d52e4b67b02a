"""Upgrade path: a container started by the code before the containers package (issue 16)
keeps its monitor across an upgrade in place, and that monitor still records the exit.

The monitor of a detached container is a long-lived process holding the old code in
memory; what it loads after the upgrade is what its forked helpers import by module path
(``cove.supervise``, and the command line's ``cove.monitor``). The test starts a container
with the old tree, replaces that tree by this checkout's ``cove`` (as an upgrade of an
installed package does), and has the new code stop it, or lets it exit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import REPO, CoveRunner, cove_argv, monitors

GO = "while [ ! -e /go ]; do sleep 0.1; done; exit 3"


def old_commit() -> str:
    """The commit before cove/containers.py became a package: the parent of the last
    commit that touched that path (the one that removed it)."""
    if not (REPO / ".git").exists():
        pytest.fail("not a git checkout: the upgrade test needs the old code from git history")
    last = subprocess.run(
        ["git", "-C", str(REPO), "rev-list", "-n1", "HEAD", "--", "cove/containers.py"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return f"{last}^"


def wait_for(what: str, cond: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("end", ["stop", "exits"])
def test_monitor_of_old_code_records_exit_after_upgrade(
    cove: CoveRunner, cove_root: Path, alpine: str, tmp_path: Path, end: str
) -> None:
    old = tmp_path / "installed"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", old_commit(), "cove"], capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    assert (old / "cove" / "containers.py").exists()  # really the old layout
    env = {**os.environ, "PYTHONPATH": str(old)}
    started = subprocess.run(
        cove_argv(cove_root, "run", "-d", "--name", "old", "alpine:3.20", "sh", "-c", GO),
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    (monitor,) = monitors(cove_root)
    cmdline = Path(f"/proc/{monitor}/cmdline").read_bytes()
    assert str(old).encode() in cmdline  # the monitor runs the old tree

    # the upgrade in place: the installed package's files are replaced by the new ones
    shutil.rmtree(old / "cove")
    shutil.copytree(REPO / "cove", old / "cove", ignore=shutil.ignore_patterns("__pycache__"))

    if end == "stop":
        cove("stop", "-t", "1", "old")
        want = 137  # sh as pid 1 ignores SIGTERM: killed after the timeout
    else:
        cove("exec", "old", "touch", "/go")
        want = 3
    wait_for("the old monitor to exit", lambda: not monitors(cove_root))
    state = json.loads(cove("inspect", "old").stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"], state["Error"]) == ("exited", want, "")
    assert f"Exited ({want})" in cove("ps", "-a").stdout

    cove("rm", "old")
    assert cove("ps", "-aq").stdout.strip() == ""
    assert not (cove_root / "containers").exists() or not list((cove_root / "containers").iterdir())
    assert not monitors(cove_root)


def test_new_code_runs_alongside(cove: CoveRunner, cove_root: Path, alpine: str) -> None:
    """The positive control: a container started by this checkout ends the same way."""
    cove("run", "-d", "--name", "new", "alpine:3.20", "sh", "-c", GO)
    cove("exec", "new", "touch", "/go")
    wait_for("exit", lambda: "Exited (3)" in cove("ps", "-a").stdout)
    cove("rm", "new")
    assert not monitors(cove_root)
