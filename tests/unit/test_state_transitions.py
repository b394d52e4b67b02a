"""The container state machine (cove.state): which status changes are legal, and that the
store refuses the rest without changing the row. Docker's states; no root needed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.errors import Conflict, NotFound, StateError
from cove.state import Record, Status, Store, check_transition

S = Status
# Written out from Docker's lifecycle, independently of cove's table: a container is
# created, runs, may pause or restart, exits, may run again; any state may die or be
# removed, except that "dead" can only be removed and "removing" is the end.
LEGAL = {
    (S.CREATED, S.RUNNING), (S.CREATED, S.EXITED), (S.CREATED, S.DEAD),
    (S.CREATED, S.REMOVING),
    (S.RUNNING, S.PAUSED), (S.RUNNING, S.RESTARTING), (S.RUNNING, S.EXITED),
    (S.RUNNING, S.DEAD), (S.RUNNING, S.REMOVING),
    (S.PAUSED, S.RUNNING), (S.PAUSED, S.EXITED), (S.PAUSED, S.DEAD), (S.PAUSED, S.REMOVING),
    (S.RESTARTING, S.RUNNING), (S.RESTARTING, S.EXITED), (S.RESTARTING, S.DEAD),
    (S.RESTARTING, S.REMOVING),
    (S.EXITED, S.RUNNING), (S.EXITED, S.RESTARTING), (S.EXITED, S.DEAD),
    (S.EXITED, S.REMOVING),
    (S.DEAD, S.REMOVING),
}  # fmt: skip
PAIRS = [(a, b) for a, b in itertools.product(Status, Status) if a != b]


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL), ids=lambda s: str(s))
def test_legal_transition(old: Status, new: Status) -> None:
    check_transition("c" * 64, old, new)


@pytest.mark.parametrize(("old", "new"), sorted(set(PAIRS) - LEGAL), ids=lambda s: str(s))
def test_illegal_transition_names_the_container_and_both_states(old: Status, new: Status) -> None:
    with pytest.raises(StateError) as err:
        check_transition("0123456789abcdef" * 4, old, new)
    msg = str(err.value)
    assert msg == f"container 0123456789ab: cannot go from {old} to {new}"


def test_the_table_covers_every_pair() -> None:
    """Both lists above together are every ordered pair of distinct states, so a state
    added to Status without a decision here fails the illegal test, not silently."""
    assert len(PAIRS) == len(Status) * (len(Status) - 1)
    assert LEGAL <= set(PAIRS)


@pytest.mark.parametrize("state", list(Status), ids=str)
def test_staying_in_a_state_is_allowed(state: Status) -> None:
    check_transition("c" * 64, state, state)  # an idempotent update (e.g. fields only)


def test_verb_predicates_agree_with_docker() -> None:
    assert {s for s in Status if s.can_start()} == {S.CREATED, S.EXITED}
    assert {s for s in Status if s.can_kill()} == {S.RUNNING, S.PAUSED, S.RESTARTING}
    assert {s for s in Status if s.can_pause()} == {S.RUNNING}
    assert {s for s in Status if s.can_unpause()} == {S.PAUSED}
    # whatever a verb may act on, the move it makes is legal
    assert all((s, S.RUNNING) in LEGAL for s in Status if s.can_start())
    assert all((s, S.EXITED) in LEGAL for s in Status if s.can_kill())
    assert all((s, S.PAUSED) in LEGAL for s in Status if s.can_pause())
    assert all((s, S.RUNNING) in LEGAL for s in Status if s.can_unpause())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(str(tmp_path / "root"))
    yield st
    st.close()


def rec(cid: str, name: str, status: Status = S.CREATED) -> Record:
    return Record(id=cid, name=name, image="alpine:3.20", image_id="sha256:" + "a" * 64,
                  created=1.0, status=status)  # fmt: skip


CID = "ab" * 32


def test_store_applies_a_legal_change_with_its_fields(store: Store) -> None:
    store.add(rec(CID, "c1"))
    store.update(CID, status=S.RUNNING, pid=42, started_at=5.0)
    got = store.get("c1")
    assert (got.status, got.pid, got.started_at) == (S.RUNNING, 42, 5.0)
    store.update(CID, expect=S.RUNNING, status=S.EXITED, exit_code=3)
    got = store.get(CID[:6])
    assert (got.status, got.exit_code) == (S.EXITED, 3)


@pytest.mark.parametrize(
    ("start", "path"),
    [
        (S.CREATED, [S.PAUSED]),
        (S.EXITED, [S.PAUSED]),
        (S.CREATED, [S.REMOVING, S.RUNNING]),
        (S.CREATED, [S.DEAD, S.RUNNING]),
    ],
)
def test_store_refuses_an_illegal_change_and_keeps_the_row(
    store: Store, start: Status, path: list[Status]
) -> None:
    store.add(rec(CID, "c1", start))
    *legal, bad = path
    for s in legal:
        store.update(CID, status=s)
    before = store.get(CID)
    with pytest.raises(StateError, match="cannot go from"):
        store.update(CID, status=bad, pid=99, exit_code=7)
    after = store.get(CID)
    assert after == before  # the other fields of the refused update were not written either
    assert after.pid != 99


def test_store_expect_guards_against_a_racing_change(store: Store) -> None:
    store.add(rec(CID, "c1", S.RUNNING))
    store.update(CID, status=S.PAUSED)  # someone else paused it meanwhile
    with pytest.raises(StateError, match=f"container {CID[:12]} is paused, not running"):
        store.update(CID, expect=S.RUNNING, status=S.EXITED)
    assert store.get(CID).status == S.PAUSED


def test_store_unknown_container_and_taken_name(store: Store) -> None:
    with pytest.raises(NotFound, match="no such container: " + "f" * 64):
        store.update("f" * 64, status=S.RUNNING)
    store.add(rec(CID, "c1"))
    with pytest.raises(Conflict, match='"/c1" is already in use'):
        store.add(rec("cd" * 32, "c1"))
    assert [r.id for r in store.all()] == [CID]


def test_store_prefix_lookup_is_unique_or_refused(store: Store) -> None:
    store.add(rec("ab" * 32, "c1"))
    store.add(rec("ac" * 32, "c2"))
    assert store.get("ab").name == "c1"
    with pytest.raises(Conflict, match=r"multiple containers found with provided prefix: a$"):
        store.get("a")
    with pytest.raises(NotFound):
        store.get("ff")
