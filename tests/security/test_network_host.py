"""A container against the host's network: loopback services, forwarding, the DNS responder.

Traffic goes only to 127.0.0.0/8, the test's own containers and bridges, and a neighbour
network namespace the test makes (10.250.77.0/30 on a veth pair, removed afterwards). The
crafted frames are sent by a process of the test entered into the container's network
namespace (``nsenter --net``): exactly what code in the container can do with its default
CAP_NET_RAW.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import CoveRunner

BB = ["-v", "/bin/busybox:/opt/bb/busybox:ro"]
WEB = (
    "mkdir -p /www && echo hello > /www/index.html && "
    "/opt/bb/busybox httpd -p 8081 -h /www && exec /opt/bb/busybox httpd -f -p 8080 -h /www"
)

# sends one IPv4 UDP datagram from the container's eth0 to a MAC address
FRAME = r"""
import socket, struct, sys
dst_mac, src_ip, dst_ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("eth0", 0))
sip, dip = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
data = b"cove-localnet-probe"
udp = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data  # checksum 0: none (IPv4)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, sip, dip)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s.send(bytes.fromhex(dst_mac.replace(":", "")) + s.getsockname()[4] + b"\x08\x00" + ip + udp)
"""


@dataclass
class Box:
    pid: int
    address: str
    gateway: str
    bridge: str


def box(cove: CoveRunner, name: str, network: str = "bridge") -> Box:
    doc = json.loads(cove("inspect", "--type", "container", name).stdout)[0]
    net = doc["NetworkSettings"]["Networks"][network]
    bridge = json.loads(cove("network", "inspect", network).stdout)[0]["Options"][
        "com.docker.network.bridge.name"
    ]
    return Box(int(doc["State"]["Pid"]), net["IPAddress"], net["Gateway"], bridge)


def send_frame(b: Box, src: str, dst: str, port: int) -> None:
    """The frame goes to the gateway's MAC (the bridge's, as the container's own ARP
    would find it), from inside the container's network namespace."""
    mac = Path(f"/sys/class/net/{b.bridge}/address").read_text().strip()
    subprocess.run(
        ["nsenter", f"--net=/proc/{b.pid}/ns/net", "--", sys.executable, "-I", "-c", FRAME,
         mac, src, dst, str(port)],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip


def http(host: str, port: int, tries: int = 50) -> str:
    for _ in range(tries):
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.decode().split("\r\n\r\n", 1)[1]
        except (OSError, IndexError):
            time.sleep(0.1)
    raise AssertionError(f"no answer from {host}:{port}")


def published(cove: CoveRunner, name: str) -> dict[str, int]:
    """host ip -> host port of the container's published port 8080."""
    out = {}
    for line in cove("port", name, "8080").stdout.split():
        ip, _, port = line.rpartition(":")
        out[ip] = int(port)
    return out


@pytest.mark.parametrize("target", ["127.0.0.1", "127.1.2.3"])
def test_frames_to_host_loopback_are_dropped(cove: CoveRunner, alpine: str, target: str) -> None:
    cove("run", "-d", "--name", "web", *BB, "-p", "127.0.0.1::8080", "-p", "8080",
         "alpine:3.20", "sh", "-c", WEB)  # fmt: skip
    b = box(cove, "web")

    def probe(listen: str) -> bool:
        """Did a UDP service of the host bound to ``listen`` get the container's frame?"""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
            srv.bind((listen, 0))
            srv.settimeout(2)  # bounded wait for a datagram that must not come
            send_frame(b, b.address, listen, srv.getsockname()[1])
            try:
                return srv.recv(100) == b"cove-localnet-probe"
            except TimeoutError:
                return False

    assert not probe(target), f"a container reached a host service on {target}"
    # positive controls: the same crafted frame to the gateway's address arrives, and the
    # published ports, on 127.0.0.1 and on all addresses, still work from the host
    assert probe(b.gateway)
    ports = published(cove, "web")
    assert http("127.0.0.1", ports["127.0.0.1"]) == "hello\n"
    assert http("127.0.0.1", ports["0.0.0.0"]) == "hello\n"


NEIGHBOUR = ipaddress.IPv4Network("10.250.77.0/30")
HOST_SIDE, NB_SIDE = "10.250.77.1", "10.250.77.2"


@pytest.fixture
def neighbour() -> Iterator[str]:
    """A LAN neighbour: a netns on a veth pair, 10.250.77.2 there, 10.250.77.1 here."""
    routes = subprocess.run(["ip", "-o", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in routes.splitlines():
        dst = line.split()[0] if line.split()[0] not in ("local", "broadcast") else line.split()[1]
        if dst != "default" and ipaddress.IPv4Network(dst, strict=False).overlaps(NEIGHBOUR):
            pytest.fail(f"{NEIGHBOUR} is in use on this host: {line}")
    tag = secrets.token_hex(3)
    ns, host_if = f"cove-nb-{tag}", f"cvnb{tag}"
    try:
        for cmd in (
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "addr", "add", f"{HOST_SIDE}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", ns, "addr", "add", f"{NB_SIDE}/30", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes eth0 along
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        assert not os.path.exists(f"/sys/class/net/{host_if}")


NB_GET = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.settimeout(2)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    print(data.decode().split("\r\n\r\n", 1)[-1], end="")
except OSError as e:
    print(f"error: {e}")
"""


def from_neighbour(ns: str, host: str, port: int) -> str:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-I", "-c", NB_GET, host, str(port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def test_neighbour_reaches_published_ports_only(
    cove: CoveRunner, alpine: str, neighbour: str
) -> None:
    cove("network", "create", "lan")
    cove("run", "-d", "--name", "web", "--network", "lan", *BB, "-p", "8080", "alpine:3.20",
         "sh", "-c", WEB)  # fmt: skip
    b = box(cove, "web", "lan")
    subnet = json.loads(cove("network", "inspect", "lan").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    # the neighbour routes the container subnet through this host, as a LAN peer could
    subprocess.run(["ip", "-n", neighbour, "route", "add", subnet, "via", HOST_SIDE],
                   check=True, capture_output=True)  # fmt: skip
    port = published(cove, "web")["0.0.0.0"]
    # positive controls: the published port answers the neighbour on the host's address, and
    # the unpublished port listens (the host itself reaches it on the container's address)
    assert http("127.0.0.1", port) == "hello\n"
    assert from_neighbour(neighbour, HOST_SIDE, port) == "hello\n"
    assert http(b.address, 8081) == "hello\n"
    got = from_neighbour(neighbour, b.address, 8081)
    assert got.startswith("error:"), f"the neighbour reached an unpublished port: {got!r}"
    # nor is the network's DNS responder an open resolver for the neighbour
    assert dns_query(neighbour, b.gateway, "web") is None


FAKE_UPSTREAM = "127.83.41.7"  # a loopback address of the test's own fake DNS server
OUTSIDE_ANSWER = bytes([203, 0, 113, 7])  # data in the fake's answers; no traffic goes there


@pytest.fixture
def fake_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A DNS server on 127.83.41.7:53 answering every A query with 203.0.113.7; the
    responders of the test's networks use it as the host's resolver. Yields the names
    it was asked."""
    asked: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((FAKE_UPSTREAM, 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                msg, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            off, labels = 12, []
            while msg[off]:
                labels.append(msg[off + 1 : off + 1 + msg[off]].decode())
                off += 1 + msg[off]
            end = off + 5
            asked.append(".".join(labels))
            a = msg[off + 1 : off + 3] == b"\0\1"
            rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + OUTSIDE_ANSWER if a else b""
            sock.sendto(msg[0:2] + b"\x81\x80\x00\x01" + (b"\0\1" if a else b"\0\0") +
                        b"\0\0\0\0" + msg[12:end] + rr, peer)  # fmt: skip

    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {FAKE_UPSTREAM}\n")
    monkeypatch.setenv("COVE_HOST_RESOLV_CONF", str(resolv))
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield asked
    finally:
        stop.set()
        t.join()
        sock.close()


DIG = r"""
import socket, sys
q = b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\0\0\1\0\1"
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    try:
        s.sendto(b"\xab\xcd\1\0\0\1\0\0\0\0\0\0" + q, (sys.argv[1], 53))
        r = s.recv(4096)
    except OSError as e:
        print(f"error: {e}")
        sys.exit()
    n = int.from_bytes(r[6:8], "big")
    print(".".join(str(x) for x in r[-4:]) if n and r[:2] == b"\xab\xcd" else f"rcode {r[3] & 15}")
"""


def dns_query(ns_or_pid: str | int, server: str, name: str) -> str | None:
    """The A record a one-shot query from a netns (a name, or a process's) gets, or None."""
    enter = (["ip", "netns", "exec", ns_or_pid] if isinstance(ns_or_pid, str)
             else ["nsenter", f"--net=/proc/{ns_or_pid}/ns/net", "--"])  # fmt: skip
    out = subprocess.run([*enter, sys.executable, "-I", "-c", DIG, server, name],
                         capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    return None if out.startswith(("error", "rcode")) else out


def test_internal_network_dns_never_forwards(
    cove: CoveRunner, alpine: str, fake_upstream: list[str]
) -> None:
    cove("network", "create", "--internal", "inner")
    cove("network", "create", "outer")
    cove("run", "-d", "--name", "aa", "--network", "inner", "alpine:3.20", "sleep", "1000")
    cove("run", "-d", "--name", "bb", "--network", "outer", "alpine:3.20", "sleep", "1000")
    a, b = box(cove, "aa", "inner"), box(cove, "bb", "outer")
    # positive controls: container names resolve on both networks, and an outside name is
    # forwarded for a normal network (to the fake upstream on 127.0.0.0/8)
    assert dns_query(a.pid, a.gateway, "aa") == a.address
    assert dns_query(b.pid, b.gateway, "bb") == b.address
    assert dns_query(b.pid, b.gateway, "outside.example") == "203.0.113.7"
    assert fake_upstream == ["outside.example"]
    # the internal network's responder never asks anyone (CVE-2024-29018 class)
    assert dns_query(a.pid, a.gateway, "leak.example") is None
    assert "leak.example" not in fake_upstream
    # and it answers on its own bridge only: not to a container of another network
    assert dns_query(b.pid, a.gateway, "aa") is None
    assert dns_query(b.pid, a.gateway, "leak2.example") is None
    assert fake_upstream == ["outside.example"]
    # the busybox resolver in the container sees the same (resolv.conf names the gateway)
    out = cove("exec", "aa", "nslookup", "aa").stdout
    assert a.address in out
    bad = cove("exec", "aa", "nslookup", "leak3.example", check=False)
    assert "203.0.113.7" not in bad.stdout and "leak3.example" not in fake_upstream
