"""``cove serve``'s fork helper (cove.api.forkserver): the starts, execs and cps the API
serves run in children of a single-threaded helper forked at the server's start, not in
fresh interpreters and not forked from the threaded server; a killed helper is re-created.

What shows the path taken is the server's own log (``--verbose``): the helper announces
itself (``fork helper PID ready``) and names every request it forks a child for
(``fork helper PID: OP CID in child N``); the helper is the server's child.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CoveRunner, Served, monitors, start_serve, stop_serve, wait_for


@pytest.fixture
def served_v(cove: CoveRunner, cove_root: Path, alpine: str, tmp_path: Path) -> Iterator[Served]:
    s = start_serve(cove_root, tmp_path, verbose=True)
    try:
        yield s
    finally:
        stop_serve(s)


def helpers_seen(served: Served) -> list[int]:
    """Every fork helper the server announced, in order."""
    return [int(p) for p in re.findall(r"fork helper (\d+) ready", served.log.read_text())]


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def forked_by(served: Served, helper: int, op: str, cid: str) -> bool:
    pattern = rf"fork helper {helper}: {op} {cid} in child \d+"
    return re.search(pattern, served.log.read_text()) is not None


def cid_of(served: Served, name: str) -> str:
    return served.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()


def test_start_exec_and_cp_go_through_the_fork_helper(
    served_v: Served, cove: CoveRunner, tmp_path: Path
) -> None:
    s = served_v
    [helper] = helpers_seen(s)
    assert parent_of(helper) == s.proc.pid  # forked by the server itself
    # start: the container is the CLI's own (same root, seen by cove ps, its monitor)
    assert s.docker("run", "-d", "--name", "fh", "alpine:3.20", "sleep", "60").returncode == 0
    cid = cid_of(s, "fh")
    assert forked_by(s, helper, "start", cid)
    assert cove("ps", "--format", "{{.Names}} {{.State}}").stdout.split("\n")[0] == "fh running"
    assert len(monitors(s.root)) == 1
    # a container never started has no such line (the log names only what the helper ran)
    s.docker("create", "--name", "idle", "alpine:3.20", "true")
    assert not forked_by(s, helper, "start", cid_of(s, "idle"))
    # exec: output, exit codes (the status comes back from the helper's child)
    assert s.docker("exec", "fh", "echo", "there").stdout == "there\n"
    assert s.docker("exec", "fh", "sh", "-c", "exit 3", check=False).returncode == 3
    assert s.docker("exec", "fh", "nosuch", check=False).returncode == 127
    assert forked_by(s, helper, "exec", cid)
    # cp out of a stopped container (its rootfs mounted in the child) and into a running one
    s.docker("cp", "idle:/etc/alpine-release", str(tmp_path / "rel"))
    assert (tmp_path / "rel").read_text().startswith("3.20")
    assert forked_by(s, helper, "archive_get", "idle")  # the log names what the client did
    s.docker("cp", str(tmp_path / "rel"), "fh:/tmp/")
    assert s.docker("exec", "fh", "cat", "/tmp/rel").stdout == (tmp_path / "rel").read_text()
    assert forked_by(s, helper, "archive_put", "fh")
    s.docker("rm", "-f", "fh", "idle")
    assert monitors(s.root) == []


def test_server_recreates_a_killed_fork_helper(served_v: Served, cove: CoveRunner) -> None:
    s = served_v
    [first] = helpers_seen(s)
    # positive control: the first helper starts a container
    out = s.docker("run", "--rm", "--name", "before", "alpine:3.20", "echo", "one").stdout
    assert out == "one\n"
    assert re.search(rf"fork helper {first}: start \w+ in child", s.log.read_text())
    os.kill(first, signal.SIGKILL)
    wait_for("the killed helper to be gone", lambda: gone(first))
    # the next start still works, through a new helper that the server made (its child)
    assert s.docker("run", "--name", "after", "alpine:3.20", "echo", "two").stdout == "two\n"
    seen = helpers_seen(s)
    assert len(seen) == 2 and seen[1] != first, s.log.read_text()[-2000:]
    assert f"fork helper {first} is gone" in s.log.read_text()
    assert parent_of(seen[1]) == s.proc.pid
    assert forked_by(s, seen[1], "start", cid_of(s, "after"))
    listed = cove("ps", "-a", "--format", "{{.Names}} {{.State}}").stdout.split()
    assert listed == ["after", "exited"]
    s.docker("rm", "after")
    # the new helper goes when the server stops
    stop_serve(s)
    assert s.proc.returncode == 0
    wait_for("the re-created helper to exit", lambda: gone(seen[1]))


def test_exec_with_a_large_env_goes_through_the_same_helper(served_v: Served) -> None:
    """A ``docker exec`` whose request is over 64 KiB (one 100 KB variable), then over the
    socket's buffer (three: ~300 KB): each runs, through the first helper, which the long
    request did not kill (was: its request cut at 64 KiB, the helper exited)."""
    s = served_v
    [helper] = helpers_seen(s)
    assert s.docker("run", "-d", "--name", "big", "alpine:3.20", "sleep", "60").returncode == 0
    # positive control: a small exec
    assert s.docker("exec", "-e", "SMALL=x", "big", "sh", "-c", "echo $SMALL").stdout == "x\n"
    one = ["-e", "BIG0=" + "x" * 100_000]
    out = s.docker("exec", *one, "big", "sh", "-c", "echo ${#BIG0}").stdout
    assert out == "100000\n"
    three = [a for i in range(3) for a in ("-e", f"BIG{i}=" + "y" * 100_000)]
    out = s.docker("exec", *three, "big", "sh", "-c", 'echo "${#BIG0} ${#BIG1} ${#BIG2}"').stdout
    assert out == "100000 100000 100000\n"
    assert helpers_seen(s) == [helper] and not gone(helper)
    assert len(re.findall(rf"fork helper {helper}: exec \w+ in child", s.log.read_text())) == 3
    s.docker("rm", "-f", "big")
    assert monitors(s.root) == []
