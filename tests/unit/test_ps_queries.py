"""``cove ps`` reads the container records in one SQL statement, whatever their number
(issue 20): no per-container lookup, and the orphan sweep after it reuses the ids read.
The records are real rows of a real store; their process and monitor are this test's own
process, so reconciliation finds them alive and has nothing to repair. No root needed."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from cove.cli import build_parser
from cove.engine import Engine
from cove.state import Record, Status, Store
from cove.sys.proc import proc_start_time


def _add_running(root: Path, n: int) -> list[str]:
    me, me_start = os.getpid(), proc_start_time(os.getpid()) or 0
    store = Store(str(root))
    ids = []
    try:
        for i in range(n):
            cid = secrets.token_hex(32)
            store.add(
                Record(
                    id=cid,
                    name=f"c{i}",
                    image="alpine:3.20",
                    image_id="sha256:" + "0" * 64,
                    created=time.time(),
                    status=Status.RUNNING,
                    pid=me,
                    start_time=me_start,
                    started_at=time.time(),
                    config={"Path": "sleep", "Args": ["60"]},
                    monitor_pid=me,
                    monitor_start=me_start,
                )
            )
            ids.append(cid)
    finally:
        store.close()
    return ids


def _ps(root: Path, monkeypatch: pytest.MonkeyPatch, *argv: str) -> list[str]:
    """Run the ``ps`` verb's handler on ``root``; every SQL statement the store's
    connection runs is recorded (sqlite's own trace callback on the real connection)."""
    statements: list[str] = []
    real = sqlite3.connect

    def traced(path: str, **kw: Any) -> sqlite3.Connection:
        db: sqlite3.Connection = real(path, **kw)
        db.set_trace_callback(statements.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", traced)
    args = build_parser("ps").parse_args(["ps", *argv])
    try:
        assert args.func(Engine(str(root)), args) == 0
    finally:
        monkeypatch.setattr(sqlite3, "connect", real)
    return statements


def _reads_of_containers(statements: list[str]) -> list[str]:
    return [s for s in statements if "from containers" in " ".join(s.lower().split())]


@pytest.mark.parametrize("n", [1, 3])
def test_ps_reads_every_record_in_one_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], n: int
) -> None:
    ids = _add_running(tmp_path, n)
    capsys.readouterr()
    statements = _ps(tmp_path, monkeypatch, "-a", "--no-trunc")
    out = capsys.readouterr().out
    # positive control: every container is listed, as running, from the rows read
    for cid in ids:
        assert cid in out
    assert out.count("Up ") == n
    reads = _reads_of_containers(statements)
    assert len(reads) == 1, reads


def test_ps_quiet_lists_ids_from_the_same_one_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _add_running(tmp_path, 3)
    capsys.readouterr()
    statements = _ps(tmp_path, monkeypatch, "-q")
    assert sorted(capsys.readouterr().out.split()) == sorted(c[:12] for c in ids)
    assert len(_reads_of_containers(statements)) == 1
