"""Pure parts of the network layer: -p parsing, subnet choice, rule rendering, DNS messages."""

from __future__ import annotations

import ipaddress

import pytest

from cove.errors import InvalidSpec
from cove.network import dns, firewall, ipam
from cove.network.manager import PortSpec, parse_publish


def test_parse_publish() -> None:
    assert parse_publish("8080") == [PortSpec("tcp", "", 0, 8080)]
    assert parse_publish("18080:80") == [PortSpec("tcp", "", 18080, 80)]
    assert parse_publish("127.0.0.1:18080:80/udp") == [PortSpec("udp", "127.0.0.1", 18080, 80)]
    assert parse_publish("127.0.0.1::80") == [PortSpec("tcp", "127.0.0.1", 0, 80)]
    assert parse_publish("9000-9001:80-81") == [
        PortSpec("tcp", "", 9000, 80),
        PortSpec("tcp", "", 9001, 81),
    ]
    for bad in ("80/sctp", "x:80", "70000", "1-2:3-5", "300.1.1.1:80:80"):
        with pytest.raises(InvalidSpec):
            parse_publish(bad)


def test_free_subnet_avoids_routes_and_networks() -> None:
    taken = [ipaddress.IPv4Network("172.29.0.0/16"), ipaddress.IPv4Network("10.89.0.0/24")]
    assert str(ipam.free_subnet(ipam.DEFAULT_CANDIDATES, taken)) == "172.30.0.0/16"
    assert str(ipam.free_subnet(ipam.POOL, taken, 24)) == "10.89.1.0/24"
    net = ipaddress.IPv4Network("10.0.0.0/30")
    gw = ipam.gateway_for(net, None)
    assert str(ipam.pick_address(net, gw, set())) == "10.0.0.2"
    with pytest.raises(Exception, match="no free address"):
        ipam.pick_address(net, gw, {"10.0.0.2"})


def test_render_rules() -> None:
    out = firewall.render(
        [firewall.NetRule("cove0", "172.29.0.0/16", False),
         firewall.NetRule("cove-x", "10.89.0.0/24", True)],
        [firewall.PortRule("udp", "127.0.0.1", 19999, "172.29.0.2", 9999)],
        "-abc123",
    )  # fmt: skip
    nat, flt = out["nat"], out["filter"]
    assert ":COVE-DNAT-abc123 - [0:0]" in nat
    assert "-A COVE-POSTROUTING-abc123 -s 172.29.0.0/16 ! -o cove0 -j MASQUERADE" in nat
    assert "-s 10.89.0.0/24 ! -o cove-x -j MASQUERADE" not in nat  # internal: no NAT
    assert (
        "-A COVE-DNAT-abc123 -d 127.0.0.1 -p udp -m udp --dport 19999 "
        "-j DNAT --to-destination 172.29.0.2:9999" in nat
    )
    assert "-A COVE-ISOLATION-2-abc123 -o cove-x -j DROP" in flt
    assert "-A COVE-FORWARD-abc123 -i cove-x ! -o cove-x -j DROP" in flt
    # nothing from outside reaches a container but replies and published ports, and a
    # container's frames to or from 127.0.0.0/8 die in raw PREROUTING (route_localnet is on)
    fwd = flt.splitlines()
    assert fwd.index("-A COVE-FORWARD-abc123 -o cove0 -j DROP") > fwd.index(
        "-A COVE-FORWARD-abc123 -o cove0 -m conntrack --ctstate DNAT -j ACCEPT"
    )
    raw = out["raw"]
    assert "-A COVE-PREROUTING-abc123 -i cove0 -d 127.0.0.0/8 -j DROP" in raw
    assert "-A COVE-PREROUTING-abc123 -i cove-x -s 127.0.0.0/8 -j DROP" in raw
    assert nat.endswith("COMMIT\n") and flt.endswith("COMMIT\n") and raw.endswith("COMMIT\n")


def _query(name: str, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + q + qtype.to_bytes(2, "big") + b"\0\1"
    )


def test_dns_answer() -> None:
    msg = _query("Web")
    qid, name, qtype, end, _ = dns.question(msg)
    assert (qid, name, qtype, end) == (0x1234, "web", 1, len(msg))
    resp = dns.answer(msg, end, ["10.89.0.2"], qtype)
    assert resp[:2] == b"\x12\x34" and resp[2] & 0x80 and resp[6:8] == b"\0\1"
    assert resp.endswith(bytes([10, 89, 0, 2]))
    aaaa = dns.answer(_query("web", 28), end, ["10.89.0.2"], 28)
    assert aaaa[6:8] == b"\0\0" and aaaa[3] & 0x0F == 0  # NOERROR, no records
