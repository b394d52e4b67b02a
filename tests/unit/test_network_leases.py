"""NetworkStore.lease: a second lease of one container on one network, and an address
already taken, are Conflicts told apart by the store's own query (not sqlite's message)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from cove.errors import Conflict
from cove.network.store import Network, NetworkStore

NET = Network("n1", "front", "br-n1", "10.9.0.0/24", "10.9.0.1", False, 0.0)


@pytest.fixture
def store(tmp_path: Path) -> NetworkStore:
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    s = NetworkStore(db)
    s.add(NET)
    return s


def _lease(store: NetworkStore, cid: str, address: str) -> str:
    lease = store.lease(NET, cid, cid, [], lambda used: address, "eth0", f"v{cid}", "02:00")
    return lease.address


def test_one_lease_per_container_and_network(store: NetworkStore) -> None:
    assert _lease(store, "c1", "10.9.0.2") == "10.9.0.2"  # positive control
    with pytest.raises(Conflict, match="container c1 is already on network front"):
        _lease(store, "c1", "10.9.0.3")
    assert [x.address for x in store.leases(container="c1")] == ["10.9.0.2"]


def test_an_address_taken_is_a_conflict_naming_it(store: NetworkStore) -> None:
    assert _lease(store, "c1", "10.9.0.2") == "10.9.0.2"
    with pytest.raises(
        Conflict, match=re.escape("address 10.9.0.2 is already in use on network front")
    ):
        _lease(store, "c2", "10.9.0.2")
    assert _lease(store, "c2", "10.9.0.4") == "10.9.0.4"  # positive control
