"""``docker ps``: which containers a filter keeps and the Status column, shared by the
CLI's table and the Engine API's ``/containers/json``."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from cove.errors import CoveError, InvalidSpec
from cove.spec.units import human_duration
from cove.state import Record, Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine

FILTERS = ("status", "name", "label", "ancestor", "id", "exited", "health")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def check_filters(filters: dict[str, list[str]]) -> None:
    """Docker refuses an unknown filter key or status value before listing anything."""
    for key, values in filters.items():
        if key not in FILTERS:
            raise InvalidSpec(f"invalid filter '{key}'")
        if key == "status":
            for value in values:
                if value not in STATUSES:
                    raise InvalidSpec(f"invalid filter 'status={value}'")


def matches(ce: ContainerEngine, rec: Record, filters: dict[str, list[str]]) -> bool:
    """Docker's rule: values of one key are ORed, different keys ANDed."""
    return all(any(_match_one(ce, rec, k, v) for v in values) for k, values in filters.items())


def _match_one(ce: ContainerEngine, rec: Record, key: str, value: str) -> bool:
    if key == "status" and rec.status.value != value:
        return False
    if key == "name" and value.lstrip("/") not in rec.name:
        return False
    if key == "id" and not rec.id.startswith(value):
        return False
    if key == "label":
        labels = rec.config.get("Config", {}).get("Labels") or {}
        k, eq, v = value.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    if key == "ancestor":
        try:
            img = ce.engine.image(value)
        except CoveError:
            if rec.image != value:
                return False
        else:
            if img.id != rec.image_id:
                return False
    if key == "exited" and (rec.status.value != "exited" or str(rec.exit_code) != value):
        return False
    return not (key == "health" and (rec.health or {}).get("Status", "none") != value)


def _ago(t: float) -> str:
    return human_duration(time.time() - t) + " ago"


def status_text(rec: Record, now: float) -> str:
    """``docker ps``'s STATUS: "Up 2 seconds (healthy)", "Exited (0) 3 minutes ago"..."""
    if rec.status == Status.RUNNING or rec.status == Status.PAUSED:
        text = "Up " + human_duration(now - rec.started_at)
        if rec.status == Status.PAUSED:
            text += " (Paused)"
        health = (rec.health or {}).get("Status")
        if health == "starting":
            text += " (health: starting)"
        elif health:
            text += f" ({health})"
        return text
    if rec.status == Status.RESTARTING:
        return f"Restarting ({rec.exit_code}) {_ago(rec.finished_at)}"
    if rec.status == Status.EXITED and rec.started_at:
        return f"Exited ({rec.exit_code}) {_ago(rec.finished_at)}"
    if rec.status == Status.REMOVING:
        return "Removal In Progress"
    if rec.status == Status.DEAD:
        return "Dead"
    return "Created"


def upper_size(ce: ContainerEngine, cid: str) -> int:
    """Bytes the container wrote (its upper directory), as ``ps --size``'s SizeRw."""
    total = 0
    for dirpath, _dirs, files in os.walk(os.path.join(ce.cdir(cid), "upper")):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def top(ce: ContainerEngine, ref: str, ps_args: list[str]) -> tuple[list[str], list[list[str]]]:
    """``docker top``: the host's ``ps`` output (titles, rows) kept to the container's
    processes, as Docker does."""
    import subprocess

    from cove.errors import Conflict, HostToolFailed

    rec = ce.get(ref)
    pids = set(ce.processes(rec))
    if rec.status.value not in ("running", "paused"):
        raise Conflict(f"container {rec.id} is not running")
    res = subprocess.run(["ps", *ps_args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise HostToolFailed(f"ps {' '.join(ps_args)}: {res.stderr.strip()}", "ps", res.returncode)
    lines = res.stdout.splitlines()
    if not lines:
        return [], []
    titles = lines[0].split()
    if "PID" not in titles:
        raise InvalidSpec("couldn't find PID field in ps output")
    col = titles.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in pids:
            rows.append(fields)
    return titles, rows
