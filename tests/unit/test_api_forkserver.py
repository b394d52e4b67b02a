"""The fork helper's protocol (cove.api.forkserver) with a real helper: forked, its children
answering over the per-request channel, failures re-raised as the same cove error class,
and a killed helper re-created from a fresh interpreter. No container is started: the
requests name containers a fresh state root does not hold (the engine's own NotFound)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
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
    assert fs.proc is not None
    assert fs.proc.args[:4] == [sys.executable, "-P", "-m", "cove.api.forkserver"]


def _exec_doc(root: Path, env_bytes: int) -> dict[str, object]:
    """A ``docker exec`` request as the server sends it, with an env of ``env_bytes``."""
    env = [f"BIG{i}={'x' * 990}" for i in range(env_bytes // 1000)]
    options = {"command": ["true"], "env": env}
    return {"op": "exec", "root": str(root), "cid": "nosuch", "options": options}


def test_a_request_over_64k_is_answered_and_the_helper_keeps_serving(
    fs: forkserver.ForkServer, tmp_path: Path
) -> None:
    """A request is read whole, however long (was: cut at 64 KiB, unparsable, and the
    helper exited as if the server were gone). 200 KB fits one socket message; 1 MB does
    not fit the socket's buffer (it goes in a memfd); 17 MB is over the limit: refused
    with an error answer, by the same helper, which then still answers."""
    root = tmp_path / "root"
    helper = fs.pid
    with pytest.raises(errors.NotFound, match="nosuch"):  # positive control: a small one
        fs.call(_exec_doc(root, 1000))
    for size in (200_000, 1_000_000):
        with pytest.raises(errors.NotFound, match="nosuch"):
            fs.call(_exec_doc(root, size))
    with pytest.raises(errors.InvalidSpec, match=r"a request of \d+ bytes"):
        fs.call(_exec_doc(root, 17_000_000))
    with pytest.raises(errors.NotFound, match="nosuch"):
        _stat(fs, root, "nosuch")
    assert fs.pid == helper and fs.proc is None  # the first helper, never re-created


HOSTILE = """import os
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pwned"), "w").close()
"""


@pytest.fixture
def hostile_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory anyone could write (as /tmp) holding a ``json.py`` that leaves a marker
    when imported, made the current directory (that of root running ``cove serve``)."""
    d = tmp_path / "hostile"
    d.mkdir()
    (d / "json.py").write_text(HOSTILE)
    monkeypatch.chdir(d)
    return d


def test_a_fresh_interpreter_never_imports_from_the_current_directory(
    hostile_cwd: Path, tmp_path: Path
) -> None:
    """The launcher's argv (cove.api.launch, the fallback start) run from the hostile
    directory: the start fails on the container (not there), no module of the directory
    was imported."""
    from cove.api import launch

    with pytest.raises(errors.NotFound, match="nosuch"):
        launch.start(str(tmp_path / "root"), "nosuch")
    assert not (hostile_cwd / "pwned").exists()
    # positive control: the same start by plain ``python -m`` imports the directory's json
    plain = [sys.executable, "-m", "cove.api.launch", str(tmp_path / "root"), "nosuch", "-1"]
    subprocess.run(plain, capture_output=True, check=False)
    assert (hostile_cwd / "pwned").exists()


def test_a_recreated_helper_never_imports_from_the_current_directory(
    fs: forkserver.ForkServer, hostile_cwd: Path, tmp_path: Path
) -> None:
    """The helper re-created (from a fresh interpreter) after any client killed it, with
    the server's current directory the hostile one: it answers, and imported nothing from
    there (the positive control is the launcher's test above: plain ``-m`` does)."""
    root = tmp_path / "root"
    first = fs.pid
    os.kill(first, signal.SIGKILL)
    os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)
    with pytest.raises(errors.NotFound, match="nosuch"):
        _stat(fs, root, "nosuch")
    assert fs.pid != first and fs.proc is not None
    assert not (hostile_cwd / "pwned").exists()
