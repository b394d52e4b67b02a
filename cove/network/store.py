"""Networks, leases and published ports in the state database (tables next to containers)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from cove.errors import Conflict, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, bridge TEXT NOT NULL UNIQUE,
    subnet TEXT NOT NULL, gateway TEXT NOT NULL, internal INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS leases (
    network TEXT NOT NULL, address TEXT NOT NULL, container TEXT NOT NULL,
    iface TEXT NOT NULL, host_iface TEXT NOT NULL, mac TEXT NOT NULL,
    aliases TEXT NOT NULL DEFAULT '[]', name TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (network, address), UNIQUE (network, container)
);
CREATE TABLE IF NOT EXISTS ports (
    proto TEXT NOT NULL, host_ip TEXT NOT NULL, host_port INTEGER NOT NULL,
    container TEXT NOT NULL, address TEXT NOT NULL, container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
"""


@dataclass
class Network:
    id: str
    name: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool
    created: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Lease:
    network: str
    address: str
    container: str
    iface: str
    host_iface: str
    mac: str
    aliases: list[str]
    name: str


@dataclass
class Port:
    proto: str
    host_ip: str
    host_port: int
    container: str
    address: str
    container_port: int


class NetworkStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)

    def _tx(self) -> Any:
        store = self

        class _T:
            def __enter__(self) -> sqlite3.Connection:
                store.db.execute("BEGIN IMMEDIATE")
                return store.db

            def __exit__(self, exc: object, *_: object) -> None:
                store.db.execute("ROLLBACK" if exc else "COMMIT")

        return _T()

    # -- networks -------------------------------------------------------------

    def add(self, net: Network) -> None:
        try:
            self.db.execute(
                "INSERT INTO networks VALUES (?,?,?,?,?,?,?,?)",
                (
                    net.id,
                    net.name,
                    net.bridge,
                    net.subnet,
                    net.gateway,
                    int(net.internal),
                    net.created,
                    json.dumps(net.labels),
                ),
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(f"network with name {net.name} already exists") from e

    def networks(self) -> list[Network]:
        rows = self.db.execute("SELECT * FROM networks ORDER BY created")
        return [Network(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], json.loads(r[7]))
                for r in rows]  # fmt: skip

    def get(self, ref: str) -> Network:
        nets = self.networks()
        for n in nets:
            if ref in (n.name, n.id):
                return n
        hits = [n for n in nets if ref and n.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise Conflict(f"network {ref} is ambiguous ({len(hits)} matches found)")
        raise NotFound(f"network {ref} not found")

    def remove(self, net_id: str) -> None:
        self.db.execute("DELETE FROM networks WHERE id = ?", (net_id,))

    # -- leases ---------------------------------------------------------------

    def lease(
        self,
        net: Network,
        container: str,
        name: str,
        aliases: list[str],
        pick: Any,
        iface: str,
        host_iface: str,
        mac: str,
    ) -> Lease:
        """Allocate an address: ``pick(used)`` chooses one, inside one write transaction."""
        with self._tx() as db:
            used = {r[0] for r in db.execute(
                "SELECT address FROM leases WHERE network = ?", (net.id,))}  # fmt: skip
            # asked, not read from sqlite's message: the transaction holds the write lock,
            # so the answer stands until the insert
            if db.execute("SELECT 1 FROM leases WHERE network = ? AND container = ?",
                          (net.id, container)).fetchone():  # fmt: skip
                raise Conflict(f"container {container[:12]} is already on network {net.name}")
            address = str(pick(used))
            try:
                db.execute(
                    "INSERT INTO leases VALUES (?,?,?,?,?,?,?,?)",
                    (net.id, address, container, iface, host_iface, mac, json.dumps(aliases), name),
                )
            except sqlite3.IntegrityError as e:  # the other key: (network, address)
                raise Conflict(f"address {address} is already in use on network {net.name}") from e
        return Lease(net.id, address, container, iface, host_iface, mac, aliases, name)

    def leases(self, *, network: str | None = None, container: str | None = None) -> list[Lease]:
        q, args = "SELECT * FROM leases", []
        if network:
            q, args = q + " WHERE network = ?", [network]
        elif container:
            q, args = q + " WHERE container = ?", [container]
        return [Lease(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7])
                for r in self.db.execute(q, args)]  # fmt: skip

    def release(self, container: str, network: str | None = None) -> None:
        if network:
            self.db.execute(
                "DELETE FROM leases WHERE container = ? AND network = ?", (container, network)
            )
        else:
            self.db.execute("DELETE FROM leases WHERE container = ?", (container,))

    # -- ports ----------------------------------------------------------------

    def add_ports(self, ports: list[Port]) -> None:
        with self._tx() as db:
            for p in ports:
                try:
                    db.execute("INSERT INTO ports VALUES (?,?,?,?,?,?)",
                               (p.proto, p.host_ip, p.host_port, p.container, p.address,
                                p.container_port))  # fmt: skip
                except sqlite3.IntegrityError as e:
                    raise Conflict(
                        f"bind for {p.host_ip or '0.0.0.0'}:{p.host_port}/{p.proto} failed: "
                        f"port is already allocated"
                    ) from e

    def ports(self, container: str | None = None) -> list[Port]:
        q, args = "SELECT * FROM ports", []
        if container:
            q, args = q + " WHERE container = ?", [container]
        return [Port(r[0], r[1], r[2], r[3], r[4], r[5]) for r in self.db.execute(q, args)]

    def release_ports(self, container: str) -> None:
        self.db.execute("DELETE FROM ports WHERE container = ?", (container,))
