"""network connect and disconnect of a container (hot-plugged when it runs, remembered
for later starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cove.containers import lifecycle
from cove.containers.isolation import driver
from cove.containers.record import NetworkAttachment, config_of
from cove.errors import Conflict
from cove.state import Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def networks(ce: ContainerEngine) -> Any:
    from cove.network.manager import NetworkManager

    return NetworkManager(ce.root, ce.store.db)


def connect(
    ce: ContainerEngine, net_ref: str, ref: str, *, aliases: list[str], ip: str | None = None
) -> None:
    """Add a network: hot-plugged as the next ``ethN`` when running, and remembered, so
    every later start attaches it again (also for a stopped container)."""
    from cove import bundle as ctr
    from cove.network.manager import settings

    for alias in aliases:  # written into the network's hosts file, one line per name
        ctr.check_etc_value("--alias", alias)
    rec = ce.get(ref)
    driver(rec, "network connect")  # refused unless the driver supports it
    cfg = config_of(rec)
    mode = cfg.network_mode
    if mode in ("none", "host") or mode.startswith("container:"):
        raise Conflict(f"container {rec.name} uses network mode {mode}: cannot connect it")
    nm = ce.networks()
    n = nm.get(net_ref)
    extra = cfg.extra_networks
    if (n.name == mode and not cfg.primary_detached) or any(a.network == n.name for a in extra):
        raise Conflict(f"container {rec.name} is already connected to network {n.name}")
    if rec.status == Status.RUNNING:
        held = nm.store.leases(container=rec.id)
        used = {lease.iface for lease in held}
        iface = next(f"eth{i}" for i in range(64) if f"eth{i}" not in used)
        n, lease = nm.attach(rec.id, rec.name, rec.pid, n.id, iface=iface, aliases=aliases,
                             ip=ip, default_route=False)  # fmt: skip
        current = dict(cfg.network_settings)
        current.setdefault("Networks", {}).update(settings([(n, lease)], [])["Networks"])
        cfg.network_settings = current
    if n.name == mode:
        cfg.primary_detached = False
    else:
        cfg.extra_networks = [*extra, NetworkAttachment(n.name, list(aliases), ip)]
    lifecycle.set_config(ce.store, rec.id, cfg.to_docker())


def disconnect(ce: ContainerEngine, net_ref: str, ref: str) -> None:
    rec = ce.get(ref)
    driver(rec, "network disconnect")  # refused unless the driver supports it
    nm = ce.networks()
    n = nm.get(net_ref)
    cfg = config_of(rec)
    extra = cfg.extra_networks
    mode = cfg.network_mode
    leased = any(x.network == n.id for x in nm.store.leases(container=rec.id))
    remembered = any(a.network == n.name for a in extra)
    if not leased and not remembered and n.name != mode:
        raise Conflict(f"container {rec.id} is not connected to network {n.name}")
    nm.detach(rec.id, n.id, pid=rec.pid if rec.status == Status.RUNNING else 0)
    cfg.extra_networks = [a for a in extra if a.network != n.name]
    if n.name == mode:  # the run's own network: gone for later starts too (as Docker)
        cfg.primary_detached = True
    ns = dict(cfg.network_settings)
    gone = ns.get("Networks", {}).pop(n.name, None)
    if gone and ns.get("IPAddress") == gone.get("IPAddress"):
        for key in ("IPAddress", "Gateway", "MacAddress"):
            ns[key] = ""
        ns["IPPrefixLen"] = 0
    ns["Ports"] = {
        k: v for k, v in (ns.get("Ports") or {}).items()
        if any(p.container_port == int(k.split("/")[0]) for p in nm.store.ports(rec.id))
    }  # fmt: skip
    cfg.network_settings = ns
    lifecycle.set_config(ce.store, rec.id, cfg.to_docker())


def network_users(ce: ContainerEngine) -> dict[str, str]:
    return {r.id: r.name for r in ce.store.all()}
