"""cove's packet filter rules: outbound NAT, published ports, isolation between networks.

Why iptables (through ``iptables-restore``) and not nftables directly: the ``iptables``
command works on both backends (nf_tables here, legacy elsewhere), and Docker and Podman
hosts already use it, so cove's rules sit in the same tables the operator already reads.

All rules live in cove's own chains, rebuilt as a whole from the state database on every
change (``sync``): one ``iptables-restore --noflush`` per table replaces the chains'
contents atomically, so a crash can never leave half a rule set, and the next sync removes
whatever a dead container or network left behind. Only the jumps from the built-in
chains are added one by one (once).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from cove.errors import HostToolFailed

NAT_CHAINS = ("COVE-POSTROUTING", "COVE-DNAT")
FILTER_CHAINS = ("COVE-FORWARD", "COVE-ISOLATION-1", "COVE-ISOLATION-2")
RAW_CHAINS = ("COVE-PREROUTING",)
LOOPBACK = "127.0.0.0/8"


def _jumps(tag: str) -> list[tuple[str, str, list[str]]]:
    return [
        ("raw", "PREROUTING", ["-j", f"COVE-PREROUTING{tag}"]),
        ("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", f"COVE-DNAT{tag}"]),
        ("nat", "OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL", "-j", f"COVE-DNAT{tag}"]),
        ("nat", "POSTROUTING", ["-j", f"COVE-POSTROUTING{tag}"]),
        ("filter", "FORWARD", ["-j", f"COVE-FORWARD{tag}"]),
    ]


@dataclass
class NetRule:
    bridge: str
    subnet: str
    internal: bool


@dataclass
class PortRule:
    proto: str
    host_ip: str
    host_port: int
    address: str
    container_port: int


def render(nets: list[NetRule], ports: list[PortRule], tag: str = "") -> dict[str, str]:
    """The iptables-restore input per table (pure, unit-tested). ``tag`` suffixes cove's
    chain names: each state root other than the standard one owns a set of its own."""
    text = _render(nets, ports)
    if tag:
        for c in (*NAT_CHAINS, *FILTER_CHAINS, *RAW_CHAINS):
            text = {k: re.sub(rf"\b{c}\b", c + tag, v) for k, v in text.items()}
    return text


def _render(nets: list[NetRule], ports: list[PortRule]) -> dict[str, str]:
    nat = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS)]
    flt = ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS)]
    raw = ["*raw", *(f":{c} - [0:0]" for c in RAW_CHAINS)]
    flt.append("-A COVE-FORWARD -j COVE-ISOLATION-1")
    for n in nets:
        b, s = n.bridge, n.subnet
        # route_localnet=1 on the bridge (for published 127.0.0.1 ports) makes the kernel
        # route a frame a container addresses to 127.0.0.1 to the host's loopback services
        # (CVE-2020-8558 class). Legitimate traffic never carries a 127/8 address on the
        # bridge before conntrack: replies to the host's published-port connections are
        # addressed to the gateway (MASQUERADE below) and become 127.0.0.1 only in nat
        # PREROUTING, after this raw PREROUTING hook. So drop both directions here, before a
        # conntrack entry is even made.
        raw.append(f"-A COVE-PREROUTING -i {b} -d {LOOPBACK} -j DROP")
        raw.append(f"-A COVE-PREROUTING -i {b} -s {LOOPBACK} -j DROP")
        if not n.internal:
            nat.append(f"-A COVE-POSTROUTING -s {s} ! -o {b} -j MASQUERADE")
        # the host (127.0.0.1 or its own addresses) reaching a published port; and a container
        # reaching a published port of its own network through a host address (hairpin)
        nat.append(f"-A COVE-POSTROUTING -o {b} -m addrtype --src-type LOCAL -j MASQUERADE")
        nat.append(f"-A COVE-POSTROUTING -o {b} -s {s} -m conntrack --ctstate DNAT -j MASQUERADE")
        flt.append(f"-A COVE-ISOLATION-1 -i {b} ! -o {b} -j COVE-ISOLATION-2")
        flt.append(f"-A COVE-ISOLATION-2 -o {b} -j DROP")
        flt.append(f"-A COVE-FORWARD -o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        flt.append(f"-A COVE-FORWARD -o {b} -m conntrack --ctstate DNAT -j ACCEPT")
        flt.append(f"-A COVE-FORWARD -i {b} -o {b} -j ACCEPT")
        if n.internal:
            flt.append(f"-A COVE-FORWARD -i {b} ! -o {b} -j DROP")
            flt.append(f"-A COVE-FORWARD -o {b} ! -i {b} -j DROP")
        else:
            flt.append(f"-A COVE-FORWARD -i {b} ! -o {b} -j ACCEPT")
            # Docker's rule: with ip_forward on, the host routes for its neighbours, and
            # FORWARD's policy may be ACCEPT; nothing from outside reaches a container
            # except a reply or a published port (accepted above as ctstate DNAT)
            flt.append(f"-A COVE-FORWARD -o {b} -j DROP")
    for p in ports:
        dest = f"-d {p.host_ip} " if p.host_ip and p.host_ip != "0.0.0.0" else ""
        nat.append(
            f"-A COVE-DNAT {dest}-p {p.proto} -m {p.proto} --dport {p.host_port} "
            f"-j DNAT --to-destination {p.address}:{p.container_port}"
        )
    nat.append("COMMIT")
    flt.append("COMMIT")
    raw.append("COMMIT")
    return {"nat": "\n".join(nat) + "\n", "filter": "\n".join(flt) + "\n",
            "raw": "\n".join(raw) + "\n"}  # fmt: skip


def _ipt(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def sync(nets: list[NetRule], ports: list[PortRule], tag: str = "") -> None:
    """Make cove's chains say exactly what ``nets`` and ``ports`` say."""
    for table, text in render(nets, ports, tag).items():
        proc = subprocess.run(
            ["iptables-restore", "-w", "--noflush"], input=text, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise HostToolFailed(
                f"iptables-restore ({table}) failed: {proc.stderr.strip()}",
                "iptables-restore",
                proc.returncode,
            )
    for table, chain, rule in _jumps(tag):
        if _ipt(["-t", table, "-C", chain, *rule]).returncode != 0:
            res = _ipt(["-t", table, "-I", chain, "1", *rule])
            if res.returncode != 0:
                raise HostToolFailed(
                    f"iptables -t {table} -I {chain} failed: {res.stderr.strip()}",
                    "iptables",
                    res.returncode,
                )


def remove_all(tag: str = "") -> None:
    """Drop the jumps and cove's chains (no network left)."""
    for table, chain, rule in _jumps(tag):
        while _ipt(["-t", table, "-D", chain, *rule]).returncode == 0:
            pass
    for table, chains in (("nat", NAT_CHAINS), ("filter", FILTER_CHAINS), ("raw", RAW_CHAINS)):
        for c in chains:
            _ipt(["-t", table, "-F", c + tag])
        for c in chains:
            _ipt(["-t", table, "-X", c + tag])
