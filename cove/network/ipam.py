"""Address management: subnets that do not collide with the host, leases per network.

Pure subnet arithmetic here; the leases live in the state database (``NetworkStore``), where a
UNIQUE(network, address) constraint inside an immediate transaction makes allocation safe
under any number of parallel ``cove run``.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable

from cove.errors import Conflict, InvalidSpec

# the default bridge's candidates, then the pool user networks are cut from (as Docker's
# 172.17/16 and its 172.18-31 + 192.168 pools, but away from the commonest home/office ranges)
DEFAULT_CANDIDATES = ("172.29.0.0/16", "172.30.0.0/16", "10.29.0.0/16", "10.30.0.0/16")
POOL = ("10.89.0.0/16", "10.90.0.0/16", "172.31.0.0/16")
POOL_PREFIX = 24


def host_routes() -> list[ipaddress.IPv4Network]:
    """The host's IPv4 routes (``ip -4 route``): a subnet overlapping one would shadow it."""
    try:
        out = subprocess.run(
            ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
        ).stdout
    except OSError:
        return []
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "prohibit", "blackhole"):
            continue
        try:
            nets.append(ipaddress.IPv4Network(first, strict=False))
        except ValueError:
            continue
    return nets


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as e:
        raise InvalidSpec(f"invalid subnet {text!r}: {e}") from e
    if net.prefixlen > 30:
        raise InvalidSpec(f"invalid subnet {text!r}: too small (at most /30)")
    return net


def gateway_for(net: ipaddress.IPv4Network, text: str | None) -> ipaddress.IPv4Address:
    if not text:
        return net.network_address + 1
    try:
        gw = ipaddress.IPv4Address(text)
    except ValueError as e:
        raise InvalidSpec(f"invalid gateway {text!r}") from e
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise InvalidSpec(f"gateway {gw} is not a host address of {net}")
    return gw


def free_subnet(
    candidates: Iterable[str], taken: Iterable[ipaddress.IPv4Network], prefix: int | None = None
) -> ipaddress.IPv4Network:
    """The first subnet (of ``prefix`` length, cut from the candidates) overlapping nothing."""
    taken = list(taken)
    for cand in candidates:
        base = ipaddress.IPv4Network(cand)
        for net in base.subnets(new_prefix=prefix) if prefix else [base]:
            if not any(net.overlaps(t) for t in taken):
                return net
    raise Conflict("no free subnet left in cove's address pools: give one with --subnet")


def pick_address(
    net: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address, used: set[str]
) -> ipaddress.IPv4Address:
    for host in net.hosts():
        if host != gateway and str(host) not in used:
            return host
    raise Conflict(f"no free address left in {net}")
