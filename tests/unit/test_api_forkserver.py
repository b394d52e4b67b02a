"""The fork helper's protocol (cove.api.forkserver) with a real helper: forked, its children
answering over the per-request channel, failures re-raised as the same cove error class,
and a killed helper re-created from a fresh interpreter. No container is started: the
requests name containers a fresh state root does not hold (the engine's own NotFound)."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for

from cove import errors
from cove.api import forkserver


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[forkserver.ForkServer]:
    if threading.active_count() != 1:
        pytest.fail("the test process has threads: the helper must be forked single-threaded")
    server = forkserver.ForkServer(verbose=False)
    server.fork()
    try:
        yield server
    finally:
        server.close()


def _stat(fs: forkserver.ForkServer, root: Path, cid: str) -> dict[str, object]:
    return fs.call({"op": "stat", "root": str(root), "cid": cid, "path": "/"})


def test_a_childs_failure_comes_back_as_the_same_class(
    fs: forkserver.ForkServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    with pytest.raises(errors.NotFound, match="nosuch"):
        _stat(fs, root, "nosuch")
    # an op the helper does not know: its child answers with a plain CoveError
    with pytest.raises(errors.CoveError, match="unknown request 'frobnicate'"):
        fs.call({"op": "frobnicate", "root": str(root)})
    # positive control: the same engine, in this process, raises the same error
    from cove.containers.engine import ContainerEngine
    from cove.engine import Engine

    with pytest.raises(errors.NotFound, match="nosuch"):
        ContainerEngine(Engine(str(root))).get("nosuch")


@pytest.fixture
def fs_logged(tmp_path: Path) -> Iterator[tuple[forkserver.ForkServer, Path]]:
    """A verbose helper whose stderr (its per-request lines) goes to a file."""
    if threading.active_count() != 1:
        pytest.fail("the test process has threads: the helper must be forked single-threaded")
    log = tmp_path / "helper.log"
    server = forkserver.ForkServer(verbose=True)
    saved = os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 2)  # the helper inherits it at the fork
        server.fork()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    try:
        yield server, log
    finally:
        server.close()


def test_each_request_is_answered_by_a_fresh_child(
    fs_logged: tuple[forkserver.ForkServer, Path], tmp_path: Path
) -> None:
    """The helper forks a child per request (three requests, three distinct children,
    none the helper itself): a child that died does not take the helper along, and fds
    passed with a request reach the child (the reply channel is one)."""
    fs, log = fs_logged
    root = tmp_path / "root"
    for _ in range(3):
        with pytest.raises(errors.NotFound):
            _stat(fs, root, "nosuch")
    # the helper logs each request after its fork, maybe after the child has answered
    pattern = rf"fork helper {fs.pid}: stat nosuch in child (\d+)"
    children = wait_for(
        "the helper's line for each of three requests",
        lambda: (found := re.findall(pattern, log.read_text())) and len(found) >= 3 and found,
    )
    assert len(set(children)) == 3 and str(fs.pid) not in children, children
    assert fs.pid and os.path.exists(f"/proc/{fs.pid}")
    status = Path(f"/proc/{fs.pid}/status").read_text()
    assert "\nThreads:\t1\n" in status  # single-threaded: what makes its forks safe


def test_a_killed_helper_is_recreated(fs: forkserver.ForkServer, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(errors.NotFound):  # positive control: the first helper answers
        _stat(fs, root, "nosuch")
    first = fs.pid
    os.kill(first, signal.SIGKILL)
    os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)  # dead (not reaped: the server's)
    with pytest.raises(errors.NotFound):
        _stat(fs, root, "nosuch")
    assert fs.pid != first
    assert fs.proc is not None and fs.proc.args[:3] == [sys.executable, "-m", "cove.api.forkserver"]
