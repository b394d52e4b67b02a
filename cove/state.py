"""Container records in SQLite (WAL) under the state root, and their lifecycle states."""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from cove.errors import Conflict, NotFound, StateError


class Status(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    DEAD = "dead"
    REMOVING = "removing"

    def can_start(self) -> bool:
        return self in (Status.CREATED, Status.EXITED)

    def can_kill(self) -> bool:
        return self in (Status.RUNNING, Status.PAUSED, Status.RESTARTING)


_TRANSITIONS = {
    Status.CREATED: {Status.RUNNING, Status.EXITED, Status.REMOVING, Status.DEAD},
    Status.RUNNING: {Status.EXITED, Status.PAUSED, Status.RESTARTING, Status.DEAD, Status.REMOVING},
    Status.PAUSED: {Status.RUNNING, Status.EXITED, Status.DEAD, Status.REMOVING},
    Status.RESTARTING: {Status.RUNNING, Status.EXITED, Status.DEAD, Status.REMOVING},
    Status.EXITED: {Status.RUNNING, Status.REMOVING, Status.DEAD, Status.RESTARTING},
    Status.DEAD: {Status.REMOVING},
    Status.REMOVING: set(),
}


def check_transition(cid: str, old: Status, new: Status) -> None:
    if new != old and new not in _TRANSITIONS[old]:
        raise StateError(f"container {cid[:12]}: cannot go from {old} to {new}")


@dataclass
class Record:
    id: str
    name: str
    image: str
    image_id: str
    created: float
    status: Status
    pid: int
    start_time: int
    exit_code: int
    oom_killed: bool
    started_at: float
    finished_at: float
    config: dict[str, Any]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image TEXT NOT NULL, image_id TEXT NOT NULL,
    created REAL NOT NULL, status TEXT NOT NULL, pid INTEGER NOT NULL DEFAULT 0,
    start_time INTEGER NOT NULL DEFAULT 0, exit_code INTEGER NOT NULL DEFAULT 0,
    oom_killed INTEGER NOT NULL DEFAULT 0, started_at REAL NOT NULL DEFAULT 0,
    finished_at REAL NOT NULL DEFAULT 0, config TEXT NOT NULL
);
"""
_COLUMNS = (
    "id, name, image, image_id, created, status, pid, start_time, exit_code, oom_killed, "
    "started_at, finished_at, config"
)


class Store:
    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "state.db")
        os.makedirs(root, mode=0o711, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _row(self, row: tuple[Any, ...]) -> Record:
        return Record(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            Status(row[5]),
            row[6],
            row[7],
            row[8],
            bool(row[9]),
            row[10],
            row[11],
            json.loads(row[12]),
        )

    def add(self, rec: Record) -> None:
        try:
            self.db.execute(
                f"INSERT INTO containers ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.name,
                    rec.image,
                    rec.image_id,
                    rec.created,
                    rec.status.value,
                    rec.pid,
                    rec.start_time,
                    rec.exit_code,
                    int(rec.oom_killed),
                    rec.started_at,
                    rec.finished_at,
                    json.dumps(rec.config),
                ),
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(
                f'the container name "/{rec.name}" is already in use by another container'
            ) from e

    def update(self, cid: str, **fields: Any) -> None:
        if "status" in fields:
            old = self.get(cid).status
            check_transition(cid, old, Status(fields["status"]))
            fields["status"] = Status(fields["status"]).value
        if "oom_killed" in fields:
            fields["oom_killed"] = int(fields["oom_killed"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE containers SET {sets} WHERE id = ?", (*fields.values(), cid))

    def remove(self, cid: str) -> None:
        self.db.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def all(self) -> list[Record]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM containers ORDER BY created DESC")
        return [self._row(r) for r in rows]

    def get(self, ref: str) -> Record:
        """By full id, name, or unique id prefix (Docker's lookup order)."""
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM containers WHERE id = ? OR name = ?", (ref, ref.lstrip("/"))
        ).fetchall()
        if not rows and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM containers WHERE id LIKE ?", (ref + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise Conflict(f"multiple containers found with provided prefix: {ref}")
        if not rows:
            raise NotFound(f"no such container: {ref}")
        return self._row(rows[0])

    def image_users(self, image_id: str) -> list[Record]:
        return [r for r in self.all() if r.image_id == image_id]


def now() -> float:
    return time.time()
