"""A simulated reboot (issue 22): every monitor and container of the root SIGKILLed, then
``cove start --all --filter restart-policy=...`` (what cove-restart.service runs) brings
back the always and unless-stopped containers, no others, with their logs continuing."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from helpers import CoveRunner, monitors

UP = "echo up; exec sleep 600"


def state(cove: CoveRunner, name: str) -> dict:  # type: ignore[type-arg]
    doc: dict = json.loads(cove("inspect", "--type", "container", name).stdout)[0]["State"]  # type: ignore[type-arg]
    return doc


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_start_all_after_power_loss(cove: CoveRunner, alpine: str, cove_root: Path) -> None:
    for name, policy in (("always", "always"), ("unless", "unless-stopped"),
                         ("unless-halted", "unless-stopped"), ("plain", "no"),
                         ("failing", "on-failure")):  # fmt: skip
        cove("run", "-d", "--name", name, "--restart", policy, "alpine:3.20", "sh", "-c", UP)
    cove("stop", "-t", "1", "unless-halted")
    for name in ("always", "unless", "plain", "failing"):
        deadline = time.monotonic() + 30
        while cove("logs", name).stdout != "up\n":
            assert time.monotonic() < deadline, name
            time.sleep(0.1)

    # the power loss: monitors and containers die at once, nothing of theirs is recorded
    pids = [state(cove, n)["Pid"] for n in ("always", "unless", "plain", "failing")]
    victims = [*monitors(cove_root), *pids]
    assert len(victims) == 8
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not all(gone(p) for p in victims):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(cove_root) not in mounts  # containers' mounts lived in their namespaces only

    proc = cove("start", "--all", "--filter", "restart-policy=always",
                "--filter", "restart-policy=unless-stopped")  # fmt: skip
    assert sorted(proc.stdout.split()) == ["always", "unless"]
    for name in ("always", "unless"):
        assert state(cove, name)["Running"], name
        deadline = time.monotonic() + 30
        while cove("logs", name).stdout != "up\nup\n":  # the old line kept, the new appended
            assert time.monotonic() < deadline, cove("logs", name).stdout
            time.sleep(0.1)
    for name in ("unless-halted", "plain", "failing"):
        assert state(cove, name)["Status"] == "exited", name
    # once more: nothing else to start, the running ones stay as they are
    assert cove("start", "--all", "--filter", "restart-policy=always").stdout == ""
