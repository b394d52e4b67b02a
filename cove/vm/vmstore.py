"""The ``vms`` table of ``cove vm``: one row per VM, its record type and states, and the
VM's directories (``<root>/vms/<id>/`` for its disk and seed, ``RUN_DIR/<id prefix>/`` for
the sockets and pidfile of its running QEMU).

Only this module writes ``vms`` rows; every update names the row by id and never
resurrects one ``rm`` deleted meanwhile.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cove.errors import Conflict, NotFound
from cove.spec.vm import VMSpec
from cove.vm import qemu as qcmd

RUN_DIR = "/run/cove-vm"  # sockets and pidfiles of running VMs, by id prefix


def run_dir() -> str:
    """RUN_DIR as root; rootless, the user's own ``$XDG_RUNTIME_DIR/cove/vm`` (/run is
    root's, and two users' VMs must not share a directory)."""
    from cove.sys import userns

    return os.path.join(userns.runtime_dir(), "vm") if userns.rootless() else RUN_DIR


class VMStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def can_start(self) -> bool:
        return self in (VMStatus.CREATED, VMStatus.STOPPED)

    def can_stop(self) -> bool:
        return self in (VMStatus.RUNNING, VMStatus.PAUSED)

    def can_pause(self) -> bool:
        return self == VMStatus.RUNNING

    def can_resume(self) -> bool:
        return self == VMStatus.PAUSED


@dataclass
class VMRecord:
    id: str
    name: str
    spec: VMSpec
    status: VMStatus = VMStatus.CREATED
    pid: int = 0
    pid_start: int = 0
    created: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    accel: str = ""
    accel_reason: str = ""
    mac: str = ""
    tap: str = ""
    network_id: str = ""
    address: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    pid INTEGER, pid_start INTEGER, created REAL, started_at REAL, finished_at REAL,
    accel TEXT, accel_reason TEXT, mac TEXT, tap TEXT, network_id TEXT, address TEXT,
    error TEXT, extra TEXT
);
"""
_COLS = ("id", "name", "spec", "status", "pid", "pid_start", "created", "started_at",
         "finished_at", "accel", "accel_reason", "mac", "tap", "network_id", "address",
         "error", "extra")  # fmt: skip


class VMStore:
    """The rows and directories of the VMs under one state root."""

    def __init__(self, root: str) -> None:
        from cove.state import Store

        self.root = root
        self.dir = os.path.join(root, "vms")
        self.state = Store(root)
        self.db = self.state.db
        self.db.executescript(_SCHEMA)

    def _row(self, r: tuple[Any, ...]) -> VMRecord:
        d = dict(zip(_COLS, r, strict=True))
        return VMRecord(
            d["id"], d["name"], VMSpec.from_json(json.loads(d["spec"])), VMStatus(d["status"]),
            d["pid"] or 0, d["pid_start"] or 0, d["created"] or 0.0, d["started_at"] or 0.0,
            d["finished_at"] or 0.0, d["accel"] or "", d["accel_reason"] or "", d["mac"] or "",
            d["tap"] or "", d["network_id"] or "", d["address"] or "", d["error"] or "",
            json.loads(d["extra"] or "{}"),
        )  # fmt: skip

    def _values(self, rec: VMRecord) -> tuple[Any, ...]:
        return (rec.id, rec.name, json.dumps(rec.spec.to_json()), rec.status.value, rec.pid,
                rec.pid_start, rec.created, rec.started_at, rec.finished_at, rec.accel,
                rec.accel_reason, rec.mac, rec.tap, rec.network_id, rec.address, rec.error,
                json.dumps(rec.extra))  # fmt: skip

    def insert(self, rec: VMRecord) -> None:
        import sqlite3

        try:
            self.db.execute(
                f"INSERT INTO vms ({','.join(_COLS)}) VALUES ({','.join('?' * len(_COLS))})",
                self._values(rec),
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(f"the vm name {rec.name!r} is already in use") from e

    def save(self, rec: VMRecord) -> None:
        """Update the row (never resurrect one ``rm`` deleted meanwhile)."""
        self.db.execute(
            f"UPDATE vms SET {', '.join(f'{c} = ?' for c in _COLS[1:])} WHERE id = ?",
            (*self._values(rec)[1:], rec.id),
        )

    def stopped(self, rec: VMRecord, error: str) -> bool:
        """Record QEMU ``rec.pid`` gone; only if the row still names that QEMU (a parallel
        command may have started a new one). Whether this call recorded it."""
        cur = self.db.execute(
            "UPDATE vms SET status = ?, pid = 0, pid_start = 0, finished_at = ?, error = ? "
            "WHERE id = ? AND pid = ? AND pid_start = ?",
            (VMStatus.STOPPED.value, time.time(), error, rec.id, rec.pid, rec.pid_start),
        )
        return bool(cur.rowcount)

    def delete(self, rec: VMRecord) -> None:
        self.db.execute("DELETE FROM vms WHERE id = ?", (rec.id,))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock_path(rec.id))

    def get(self, ref: str) -> VMRecord:
        """The row of ``ref`` (name, id or unique id prefix), as stored."""
        rows = self.db.execute(
            f"SELECT {','.join(_COLS)} FROM vms WHERE name = ? OR id = ?", (ref, ref)
        ).fetchall()
        if not rows and len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                f"SELECT {','.join(_COLS)} FROM vms WHERE substr(id, 1, ?) = ?", (len(ref), ref)
            ).fetchall()
        if not rows:
            raise NotFound(f"no such vm: {ref}")
        if len(rows) > 1:
            raise Conflict(f"vm id prefix {ref!r} is ambiguous")
        return self._row(rows[0])

    def all(self) -> list[VMRecord]:
        rows = self.db.execute(f"SELECT {','.join(_COLS)} FROM vms ORDER BY created").fetchall()
        return [self._row(r) for r in rows]

    def _lock_path(self, vid: str) -> str:
        return os.path.join(self.dir, f".{vid[:20]}.lock")

    @contextlib.contextmanager
    def locked(self, vid: str) -> Iterator[None]:
        """The VM's lifecycle lock: two cove commands never start, stop or remove one VM
        at once."""
        from cove.sys.syscalls import flocked

        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with flocked(self._lock_path(vid)):
            yield

    def paths(self, rec: VMRecord) -> qcmd.Paths:
        return qcmd.Paths(os.path.join(self.dir, rec.id), os.path.join(run_dir(), rec.id[:20]))
