"""The json-file writer (cove.jsonlog.Log, the monitor's) and its reader (cove.logs): entries per
line, splitting at 16 KiB as Docker does, rotation at max-size over max-file files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.containers.jsonlog import _MAX_LINE, Log
from cove.containers.logs import _files, read_logs
from cove.state import Record, Status

KIB16 = 16 * 1024


def entries(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    lg = Log(str(tmp_path / "c-json.log"), 0, 1)
    yield lg
    os.close(lg.fd)


def test_one_entry_per_line_and_streams_kept_apart(log: Log) -> None:
    log.feed(0, b"one\ntw")
    log.feed(1, b"err\n")
    log.feed(0, b"o\nthree")  # the partial "tw" of stdout joins its rest
    log.flush(0)
    got = [(e["stream"], e["log"]) for e in entries(Path(log.path))]
    assert got == [("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n"),
                   ("stdout", "three")]  # fmt: skip
    for e in entries(Path(log.path)):
        assert e["time"].endswith("Z") and len(e["time"]) == len("2024-01-01T00:00:00.") + 10


def test_flush_of_an_empty_stream_writes_nothing(log: Log) -> None:
    log.flush(0)
    log.flush(1)
    assert Path(log.path).read_bytes() == b""


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a" * 20000 + b"\n"],  # the newline arrives with the long line
        [b"a" * 20000, b"\n"],  # the newline comes in a later read
        [b"a" * 100 for _ in range(200)] + [b"\n"],  # the line comes in small reads
    ],
    ids=["one-read", "newline-later", "small-reads"],
)
def test_long_line_splits_at_16k(log: Log, chunks: list[bytes]) -> None:
    """Docker: a line longer than 16 KiB becomes partial entries of 16 KiB (without a
    newline) and a last one that ends with it, however the bytes were read."""
    for c in chunks:
        log.feed(0, c)
    total = sum(len(c) for c in chunks) - 1
    got = [e["log"] for e in entries(Path(log.path))]
    assert _MAX_LINE == KIB16
    assert [len(x) for x in got] == [KIB16, total - KIB16 + 1], [len(x) for x in got]
    assert got[0] == "a" * KIB16 and got[1] == "a" * (total - KIB16) + "\n"
    assert "".join(got) == "a" * total + "\n"


def test_exactly_16k_and_short_lines_after_a_long_one(log: Log) -> None:
    log.feed(1, b"b" * KIB16 + b"\nshort\n")
    got = [e["log"] for e in entries(Path(log.path))]
    assert got == ["b" * KIB16, "\n", "short\n"]


def test_invalid_utf8_is_replaced_not_dropped(log: Log) -> None:
    log.feed(0, b"ok \xff\xfe end\n")
    assert [e["log"] for e in entries(Path(log.path))] == ["ok \ufffd\ufffd end\n"]


def line_size(text: str) -> int:
    """Bytes of one entry of ``text`` (the timestamp has a fixed width)."""
    return len(json.dumps({"log": text, "stream": "stdout", "time": "x" * 30},
                          separators=(",", ":")).encode()) + 1  # fmt: skip


def test_rotation_keeps_max_file_files_newest_last(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    one = line_size("line 00\n")
    lg = Log(str(path), 2 * one, 3)  # two entries fit in a file
    try:
        for i in range(9):
            lg.feed(0, f"line {i:02d}\n".encode())
    finally:
        os.close(lg.fd)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["c-json.log", "c-json.log.1", "c-json.log.2"]  # never a .3
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2 * one
        assert p.stat().st_mode & 0o777 == 0o600
    # the reader walks oldest first: .2, .1, then the live file
    assert _files(str(path)) == [f"{path}.2", f"{path}.1", str(path)]
    texts = [e["log"] for f in _files(str(path)) for e in entries(Path(f))]
    # 9 entries, 2 to a full file, the live one has 1: the 5 newest kept, in order
    assert texts == [f"line {i:02d}\n" for i in range(4, 9)]


def test_rotation_with_one_file_truncates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    one = line_size("line 0\n")
    lg = Log(str(path), 2 * one, 1)
    try:
        for i in range(5):
            lg.feed(0, f"line {i}\n".encode())
    finally:
        os.close(lg.fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-json.log"]
    assert [e["log"] for e in entries(path)] == ["line 4\n"]


def test_an_entry_larger_than_max_size_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    lg = Log(str(path), 10, 2)
    try:
        lg.feed(0, b"longer than ten bytes\n")
        lg.feed(0, b"next\n")
    finally:
        os.close(lg.fd)
    assert [e["log"] for e in entries(Path(f"{path}.1"))] == ["longer than ten bytes\n"]
    assert [e["log"] for e in entries(path)] == ["next\n"]


def test_a_reopened_log_continues_its_size(tmp_path: Path) -> None:
    """A restarted monitor appends and counts what is already there toward max-size."""
    path = tmp_path / "c-json.log"
    one = line_size("line 0\n")
    for i in range(2):
        lg = Log(str(path), 2 * one, 2)
        lg.feed(0, f"line {i}\n".encode())
        os.close(lg.fd)
    assert not Path(f"{path}.1").exists()
    lg = Log(str(path), 2 * one, 2)
    lg.feed(0, b"line 2\n")
    os.close(lg.fd)
    assert [e["log"] for e in entries(Path(f"{path}.1"))] == ["line 0\n", "line 1\n"]


class _Engine:
    """The two things read_logs asks of the engine: where the log is, and the record."""

    def __init__(self, path: Path, rec: Record) -> None:
        self.path = path
        self.rec = rec

    def log_path(self, cid: str) -> str:
        return str(self.path)

    def get(self, cid: str) -> Record:
        return self.rec


def test_reader_tail_across_rotated_files_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    lg = Log(str(path), 2 * line_size("line 0\n"), 3)
    try:
        for i in range(5):
            lg.feed(i % 2, f"line {i}\n".encode())
    finally:
        os.close(lg.fd)
    with open(path, "ab") as f:
        f.write(b'{"log":"torn')  # a crash mid-write: no newline, never shown
    rec = Record(id="c" * 64, name="c", image="i", image_id="sha256:x", created=0.0,
                 status=Status.EXITED)  # fmt: skip
    ce = _Engine(path, rec)
    every = list(read_logs(ce, rec))
    assert [(s, t) for s, _, t in every] == [
        ("stdout", b"line 0\n"), ("stderr", b"line 1\n"), ("stdout", b"line 2\n"),
        ("stderr", b"line 3\n"), ("stdout", b"line 4\n"),
    ]  # fmt: skip
    assert [t for _, _, t in read_logs(ce, rec, tail="2")] == [b"line 3\n", b"line 4\n"]
    assert list(read_logs(ce, rec, tail="0")) == []
    with pytest.raises(Exception, match="invalid value for --tail"):
        list(read_logs(ce, rec, tail="x"))
