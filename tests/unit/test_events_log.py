"""The events log (cove/sys/events.py): Docker's message shape, reads from an offset, and
the trim that keeps it short without losing the newest events."""

from __future__ import annotations

from pathlib import Path

import pytest

from cove.sys import events


def test_message_shape_and_offsets(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert events.read(root) == ([], 0)  # no log yet: nothing, not an error
    events.emit(root, "container", "start", "abc", {"name": "web", "image": "alpine"})
    first, offset = events.read(root)
    assert len(first) == 1
    ev = first[0]
    assert (ev["Type"], ev["Action"], ev["status"], ev["id"], ev["from"]) == (
        "container", "start", "start", "abc", "alpine")  # fmt: skip
    assert ev["Actor"] == {"ID": "abc", "Attributes": {"name": "web", "image": "alpine"}}
    assert ev["time"] == ev["timeNano"] // 1_000_000_000
    events.emit(root, "volume", "create", "data", {"driver": "local"})
    later, offset2 = events.read(root, offset)
    assert [e["Action"] for e in later] == ["create"]
    assert "status" not in later[0]  # only container and image events carry the old fields
    assert offset2 > offset
    assert events.read(root, offset2) == ([], offset2)
    assert (tmp_path / events.NAME).stat().st_mode & 0o777 == 0o600


def test_trim_keeps_the_newest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_BYTES", 4096)
    root = str(tmp_path)
    for i in range(200):
        events.emit(root, "network", "create", f"id{i}", {"name": f"n{i}"})
    size = (tmp_path / events.NAME).stat().st_size
    assert size <= 4096 + 300  # trimmed (one line past the limit at most)
    kept, _ = events.read(root)
    names = [e["Actor"]["Attributes"]["name"] for e in kept]
    assert names[-1] == "n199" and "n0" not in names  # the newest stay, whole lines only
    assert names == [f"n{i}" for i in range(200 - len(names), 200)]
