"""Attach a created container to its networks and release them: the network half of the
namespaces driver, shared by the launcher (foreground runs) and the monitor's start helper.

``cove.network`` is imported only where a container has a network, so ``--network none``
and ``host`` runs (and the exit path of a container that never had one) stay lean.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cove.containers.record import NetworkAttachment, config_of
from cove.errors import best_effort

if TYPE_CHECKING:
    import sqlite3

    from cove.state import Record


def network_up(root: str, db: sqlite3.Connection, rec: Record, pid: int) -> dict[str, Any]:
    """Attach a created container (process ``pid``) to its networks: the run's own one as
    eth0 (default route, published ports), then those ``connect`` added, as eth1...;
    Docker's NetworkSettings."""
    cfg = config_of(rec)
    mode = cfg.network_mode
    if mode in ("none", "host") or mode.startswith("container:"):
        return {}
    from cove import bundle as ctr
    from cove.network.manager import NetworkManager, PortSpec, settings

    wanted: list[NetworkAttachment] = []
    if not cfg.primary_detached:
        wanted.append(NetworkAttachment(mode, cfg.aliases, cfg.ipv4_address))
    wanted += cfg.extra_networks
    if not wanted:
        return {}
    nm = NetworkManager(root, db)
    try:
        attached = []
        for i, w in enumerate(wanted):
            attached.append(nm.attach(rec.id, rec.name, pid, w.network, iface=f"eth{i}",
                                      aliases=list(w.aliases), ip=w.ipv4_address,
                                      default_route=i == 0))  # fmt: skip
        specs = []
        for key, binds in cfg.port_bindings.items():
            port, _, proto = key.partition("/")
            for b in binds:
                first, _, last = (b.host_port or "0").partition("-")
                specs.append(PortSpec(proto, b.host_ip, int(first or 0), int(port),
                                      int(last or 0)))  # fmt: skip
        if cfg.publish_all:
            for key in cfg.exposed_ports:
                if key not in cfg.port_bindings:
                    port, _, proto = key.partition("/")
                    specs.append(PortSpec(proto or "tcp", "", 0, int(port)))
        n, lease = attached[0]
        ports = nm.publish(rec.id, lease.address, specs)
        ctr.etc_files(
            os.path.join(root, "containers", rec.id),
            cfg.hostname or rec.id[:12],
            mode,
            add_hosts=cfg.extra_hosts,
            dns=cfg.dns,
            address=lease.address,
            nameserver=n.gateway,
        )
    except BaseException:
        nm.detach(rec.id)
        raise
    return settings(attached, ports)


def network_down(root: str, db: sqlite3.Connection, cid: str) -> None:
    """Release what the container holds on networks (leases, ports, host veths)."""
    row = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'leases'"
    ).fetchone()
    if row is None:
        return  # no network was ever used on this root
    if not db.execute(
        "SELECT 1 FROM leases WHERE container = ? UNION SELECT 1 FROM ports WHERE container = ?",
        (cid, cid),
    ).fetchone():
        return  # fmt: skip
    from cove.network.manager import NetworkManager

    with best_effort(f"detach container {cid} from its networks", __name__):
        NetworkManager(root, db).detach(cid)
