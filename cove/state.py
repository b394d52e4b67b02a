"""Container and volume records in SQLite (WAL) under the state root, and lifecycle states.

Every multi-step operation (create, start, remove) marks its row with ``op`` and the pid
and start time of the process carrying it out. If that process dies (SIGKILL at any
point), the next cove command sees an ``op`` whose owner is gone and finishes or rolls it
back (``ContainerEngine.reconcile``): nothing half-made survives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from cove.errors import Conflict, CorruptState, NotFound, StateError


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

    def can_pause(self) -> bool:
        return self == Status.RUNNING

    def can_unpause(self) -> bool:
        return self == Status.PAUSED


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


# operations in flight (``Record.op``)
OP_CREATE = "create"  # the row and bundle are being made: roll back = delete everything
OP_START = "start"  # a monitor is bringing the process up: roll back = back to exited/created
OP_REMOVE = "remove"  # being removed: roll forward = finish the removal


@dataclass
class Record:
    id: str
    name: str
    image: str
    image_id: str
    created: float
    status: Status = Status.CREATED
    pid: int = 0
    start_time: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    op: str = ""
    op_pid: int = 0
    op_start: int = 0
    monitor_pid: int = 0
    monitor_start: int = 0
    restart_count: int = 0
    manual_stop: bool = False
    health: dict[str, Any] = field(default_factory=dict)
    error: str = ""


_FIELDS = [f.name for f in dataclasses.fields(Record)]
_JSON = {"config", "health"}
_BOOL = {"oom_killed", "manual_stop"}
_SQL_TYPES = {
    "id": "TEXT PRIMARY KEY",
    "name": "TEXT NOT NULL UNIQUE",
    "created": "REAL NOT NULL",
    "started_at": "REAL NOT NULL DEFAULT 0",
    "finished_at": "REAL NOT NULL DEFAULT 0",
}


def _sql_type(name: str) -> str:
    if name in _SQL_TYPES:
        return _SQL_TYPES[name]
    default = Record.__dataclass_fields__[name].default
    if isinstance(default, bool | int):
        return "INTEGER NOT NULL DEFAULT 0"
    if isinstance(default, float):
        return "REAL NOT NULL DEFAULT 0"
    return "TEXT NOT NULL DEFAULT ''"


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS containers ({", ".join(f"{n} {_sql_type(n)}" for n in _FIELDS)});
-- the exit of a removed container, kept a while: a wait issued before an auto-removal
-- (docker run --rm sends wait?condition=removed before start) still learns the code
CREATE TABLE IF NOT EXISTS exits (
    id TEXT PRIMARY KEY, exit_code INTEGER NOT NULL, finished_at REAL NOT NULL,
    removed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY, created REAL NOT NULL, anonymous INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL DEFAULT '{{}}', options TEXT NOT NULL DEFAULT '{{}}'
);
"""


@dataclass
class Volume:
    name: str
    created: float
    anonymous: bool
    labels: dict[str, str]
    options: dict[str, str]


# SQLite's primary result codes for a damaged file (extended codes keep them in the low byte)
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26

RECORD_FILE = "record.json"  # the row's mirror in the container's bundle
VOLUME_FILE = "volume.json"  # the volume row's mirror beside its _data


def is_corrupt(err: BaseException) -> bool:
    """``err`` says the database file is damaged (not busy, not a constraint)."""
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    return type(err) is sqlite3.DatabaseError


def corrupt_error(path: str, err: BaseException | str) -> CorruptState:
    # one line: sqlite's integrity reports span several (one per damaged page)
    detail = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return CorruptState(
        f"state database {path} is damaged ({detail}): run 'cove system check --repair'"
    )


def quick_check(db: sqlite3.Connection) -> str:
    """SQLite's quick_check: '' when the file is sound, else its first complaint."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as e:
        if is_corrupt(e):
            return str(e)
        raise
    return "" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])


def _write_private(path: str, data: bytes) -> None:
    """Replace ``path`` by a new 0600 file (temp file and rename: readers see old or new)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def record_from_json(doc: dict[str, Any]) -> Record:
    """A record from its mirror (``record.json``); unknown keys are ignored."""
    values = {k: doc[k] for k in _FIELDS if k in doc}
    values["status"] = Status(values.get("status", Status.CREATED))
    for k in _BOOL:
        values[k] = bool(values.get(k, False))
    return Record(**values)


class Store:
    def __init__(self, root: str, *, verify: bool = True) -> None:
        self.root = root
        self.path = os.path.join(root, "state.db")
        os.makedirs(root, mode=0o711, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            # invariant: nothing is written to a damaged file (the journal mode, the schema
            # and every later change come after this check); a quarter of a millisecond for
            # a root of tens of containers
            damage = quick_check(self.db) if verify else ""
            if damage:
                raise corrupt_error(self.path, damage)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            have = {r[1] for r in self.db.execute("PRAGMA table_info(containers)")}
            for name in _FIELDS:
                if name not in have:  # a state root made by an older cove
                    self.db.execute(f"ALTER TABLE containers ADD COLUMN {name} {_sql_type(name)}")
            self._mirror_rows()
        except sqlite3.DatabaseError as e:
            self.db.close()
            if is_corrupt(e):
                raise corrupt_error(self.path, e) from e
            raise
        except BaseException:
            self.db.close()
            raise

    def _mirror_rows(self) -> None:
        """Every change of a row, by any statement of this connection (the lifecycle's raw
        UPDATEs included), is copied to a file beside what it describes: ``record.json`` in
        the container's bundle, ``volume.json`` beside a volume's ``_data``. The copies are
        what ``cove system check --repair`` rebuilds a lost database from. TEMP triggers live
        only in this connection, so the database file itself never names the functions."""
        self.db.create_function("cove_mirror", len(_FIELDS), self._mirror)
        self.db.create_function("cove_unmirror", 1, self._unmirror)
        self.db.create_function("cove_mirror_volume", 5, self._mirror_volume)
        self.db.create_function("cove_unmirror_volume", 1, self._unmirror_volume)
        cols = ", ".join(f"NEW.{n}" for n in _FIELDS)
        vcols = "NEW.name, NEW.created, NEW.anonymous, NEW.labels, NEW.options"
        self.db.executescript(
            f"""
            CREATE TEMP TRIGGER IF NOT EXISTS cove_mirror_insert AFTER INSERT ON containers
                BEGIN SELECT cove_mirror({cols}); END;
            CREATE TEMP TRIGGER IF NOT EXISTS cove_mirror_update AFTER UPDATE ON containers
                BEGIN SELECT cove_mirror({cols}); END;
            CREATE TEMP TRIGGER IF NOT EXISTS cove_mirror_delete AFTER DELETE ON containers
                BEGIN SELECT cove_unmirror(OLD.id); END;
            CREATE TEMP TRIGGER IF NOT EXISTS cove_mirror_vinsert AFTER INSERT ON volumes
                BEGIN SELECT cove_mirror_volume({vcols}); END;
            CREATE TEMP TRIGGER IF NOT EXISTS cove_mirror_vdelete AFTER DELETE ON volumes
                BEGIN SELECT cove_unmirror_volume(OLD.name); END;
            """
        )

    def record_path(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid, RECORD_FILE)

    def _mirror(self, *row: Any) -> None:
        # never raises: a copy that cannot be written (no bundle yet, disk full) must not
        # undo the change it copies; the next change writes it again
        with contextlib.suppress(Exception):
            doc: dict[str, Any] = dict(zip(_FIELDS, row, strict=True))
            for k in _JSON:
                doc[k] = json.loads(doc[k] or "{}")
            cdir = os.path.dirname(self.record_path(doc["id"]))
            if os.path.isdir(cdir):
                _write_private(self.record_path(doc["id"]), json.dumps(doc).encode())

    def _unmirror(self, cid: str) -> None:
        with contextlib.suppress(Exception):
            os.unlink(self.record_path(cid))

    def _mirror_volume(
        self, name: str, created: float, anonymous: int, labels: str, options: str
    ) -> None:
        with contextlib.suppress(Exception):
            vdir = os.path.join(self.root, "volumes", name)
            if os.path.isdir(vdir):
                doc = {
                    "name": name,
                    "created": created,
                    "anonymous": bool(anonymous),
                    "labels": json.loads(labels),
                    "options": json.loads(options),
                }
                _write_private(os.path.join(vdir, VOLUME_FILE), json.dumps(doc).encode())

    def _unmirror_volume(self, name: str) -> None:
        with contextlib.suppress(Exception):
            os.unlink(os.path.join(self.root, "volumes", name, VOLUME_FILE))

    def close(self) -> None:
        self.db.close()

    def _row(self, row: tuple[Any, ...]) -> Record:
        values: dict[str, Any] = dict(zip(_FIELDS, row, strict=True))
        for k in _JSON:
            values[k] = json.loads(values[k] or "{}")
        for k in _BOOL:
            values[k] = bool(values[k])
        values["status"] = Status(values["status"])
        return Record(**values)

    @staticmethod
    def _value(name: str, value: Any) -> Any:
        if name in _JSON:
            return json.dumps(value)
        if name in _BOOL:
            return int(value)
        if name == "status":
            return Status(value).value
        return value

    def add(self, rec: Record) -> None:
        values = [self._value(n, getattr(rec, n)) for n in _FIELDS]
        try:
            self.db.execute(
                f"INSERT INTO containers ({', '.join(_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(_FIELDS))})",
                values,
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(
                f'the container name "/{rec.name}" is already in use by another container'
            ) from e

    def update(self, cid: str, *, expect: Status | None = None, **fields: Any) -> None:
        """Change fields; a status change is checked against the legal transitions.

        The read and the write are one transaction, so two processes racing to move
        the same container cannot both win.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if "status" in fields:
                row = self.db.execute("SELECT status FROM containers WHERE id = ?", (cid,))
                found = row.fetchone()
                if found is None:
                    raise NotFound(f"no such container: {cid}")
                old = Status(found[0])
                if expect is not None and old != expect:
                    raise StateError(f"container {cid[:12]} is {old}, not {expect}")
                check_transition(cid, old, Status(fields["status"]))
            if fields:
                sets = ", ".join(f"{k} = ?" for k in fields)
                values = [self._value(k, v) for k, v in fields.items()]
                self.db.execute(f"UPDATE containers SET {sets} WHERE id = ?", (*values, cid))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def remove(self, cid: str) -> None:
        """The row goes; its exit (if it ran) stays in ``exits`` for ten minutes."""
        removed = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO exits SELECT id, exit_code, finished_at, ? "
                "FROM containers WHERE id = ? AND finished_at > 0",
                (removed, cid),
            )
            self.db.execute("DELETE FROM exits WHERE removed < ?", (removed - 600,))
            self.db.execute("DELETE FROM containers WHERE id = ?", (cid,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def exit_of_removed(self, cid: str) -> tuple[int, float] | None:
        """(exit code, finished at) of a container removed in the last ten minutes."""
        row = self.db.execute(
            "SELECT exit_code, finished_at FROM exits WHERE id = ?", (cid,)
        ).fetchone()
        return (int(row[0]), float(row[1])) if row else None

    def all(self) -> list[Record]:
        rows = self.db.execute(f"SELECT {', '.join(_FIELDS)} FROM containers ORDER BY created DESC")
        return [self._row(r) for r in rows]

    def get(self, ref: str) -> Record:
        """By full id, name, or unique id prefix (Docker's lookup order)."""
        cols = ", ".join(_FIELDS)
        rows = self.db.execute(
            f"SELECT {cols} FROM containers WHERE id = ? OR name = ?", (ref, ref.lstrip("/"))
        ).fetchall()
        if not rows and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                f"SELECT {cols} FROM containers WHERE id LIKE ?", (ref + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise Conflict(f"multiple containers found with provided prefix: {ref}")
        if not rows:
            raise NotFound(f"no such container: {ref}")
        return self._row(rows[0])

    def image_users(self, image_id: str) -> list[Record]:
        return [r for r in self.all() if r.image_id == image_id]

    def image_ids(self) -> set[str]:
        """The image of every container record, whatever its status or operation in flight:
        the roots the image store's garbage collection must keep."""
        return {r[0] for r in self.db.execute("SELECT DISTINCT image_id FROM containers") if r[0]}

    # -- volumes ------------------------------------------------------------

    def add_volume(self, vol: Volume) -> bool:
        """Insert; False if a volume of that name already exists."""
        try:
            self.db.execute(
                "INSERT INTO volumes (name, created, anonymous, labels, options) "
                "VALUES (?,?,?,?,?)",
                (
                    vol.name,
                    vol.created,
                    int(vol.anonymous),
                    json.dumps(vol.labels),
                    json.dumps(vol.options),
                ),
            )
            return True
        except sqlite3.IntegrityError:
            return False

    def volumes(self) -> list[Volume]:
        rows = self.db.execute(
            "SELECT name, created, anonymous, labels, options FROM volumes ORDER BY name"
        )
        return [Volume(r[0], r[1], bool(r[2]), json.loads(r[3]), json.loads(r[4])) for r in rows]

    def get_volume(self, name: str) -> Volume:
        for v in self.volumes():
            if v.name == name:
                return v
        raise NotFound(f"no such volume: {name}")

    def remove_volume(self, name: str) -> None:
        self.db.execute("DELETE FROM volumes WHERE name = ?", (name,))


def now() -> float:
    return time.time()
