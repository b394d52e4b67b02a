"""network connect and disconnect of a container (hot-plugged when it runs, remembered
for later starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cove.containers import lifecycle
from cove.containers.isolation import driver
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
    mode = rec.config.get("HostConfig", {}).get("NetworkMode") or "none"
    if mode in ("none", "host") or mode.startswith("container:"):
        raise Conflict(f"container {rec.name} uses network mode {mode}: cannot connect it")
    nm = ce.networks()
    n = nm.get(net_ref)
    ncfg = rec.config.setdefault("NetworkingConfig", {})
    extra = ncfg.setdefault("Extra", [])
    primary_off = bool(ncfg.get("PrimaryDetached"))
    if (n.name == mode and not primary_off) or any(e["Network"] == n.name for e in extra):
        raise Conflict(f"container {rec.name} is already connected to network {n.name}")
    cfg = rec.config
    if rec.status == Status.RUNNING:
        held = nm.store.leases(container=rec.id)
        used = {lease.iface for lease in held}
        iface = next(f"eth{i}" for i in range(64) if f"eth{i}" not in used)
        n, lease = nm.attach(rec.id, rec.name, rec.pid, n.id, iface=iface, aliases=aliases,
                             ip=ip, default_route=False)  # fmt: skip
        current = cfg.get("NetworkSettings") or {}
        current.setdefault("Networks", {}).update(settings([(n, lease)], [])["Networks"])
        cfg["NetworkSettings"] = current
    if n.name == mode:
        ncfg["PrimaryDetached"] = False
    else:
        extra.append({"Network": n.name, "Aliases": list(aliases), "IPv4Address": ip})
    lifecycle.set_config(ce.store, rec.id, cfg)


def disconnect(ce: ContainerEngine, net_ref: str, ref: str) -> None:
    rec = ce.get(ref)
    driver(rec, "network disconnect")  # refused unless the driver supports it
    nm = ce.networks()
    n = nm.get(net_ref)
    cfg = rec.config
    ncfg = cfg.setdefault("NetworkingConfig", {})
    extra = ncfg.get("Extra") or []
    mode = cfg.get("HostConfig", {}).get("NetworkMode") or "none"
    leased = any(x.network == n.id for x in nm.store.leases(container=rec.id))
    remembered = any(e["Network"] == n.name for e in extra)
    if not leased and not remembered and n.name != mode:
        raise Conflict(f"container {rec.id} is not connected to network {n.name}")
    nm.detach(rec.id, n.id, pid=rec.pid if rec.status == Status.RUNNING else 0)
    ncfg["Extra"] = [e for e in extra if e["Network"] != n.name]
    if n.name == mode:  # the run's own network: gone for later starts too (as Docker)
        ncfg["PrimaryDetached"] = True
    ns = cfg.get("NetworkSettings") or {}
    gone = ns.get("Networks", {}).pop(n.name, None)
    if gone and ns.get("IPAddress") == gone.get("IPAddress"):
        for key in ("IPAddress", "Gateway", "MacAddress"):
            ns[key] = ""
        ns["IPPrefixLen"] = 0
    ns["Ports"] = {
        k: v for k, v in (ns.get("Ports") or {}).items()
        if any(p.container_port == int(k.split("/")[0]) for p in nm.store.ports(rec.id))
    }  # fmt: skip
    cfg["NetworkSettings"] = ns
    lifecycle.set_config(ce.store, rec.id, cfg)


def network_users(ce: ContainerEngine) -> dict[str, str]:
    return {r.id: r.name for r in ce.store.all()}
