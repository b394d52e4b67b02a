"""The DNS responder's forwarding with real sockets on 127.0.0.0/8: replies that do not come
from the server asked, to the id and question asked, are never relayed to the client."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cove.network import dns

UPSTREAM = "127.0.0.1"
SPOOFED = bytes([6, 6, 6, 6])
GENUINE = bytes([10, 1, 2, 3])


def query(name: str, qid: bytes = b"\x12\x34", qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    header = qid + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + q + qtype.to_bytes(2, "big") + b"\0\1"


def reply(q: bytes, address: bytes, *, qid: bytes | None = None) -> bytes:
    """A response to ``q`` (id replaced by ``qid`` if given) with one A record."""
    end = dns.question(q)[3]
    rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + address
    return (qid or q[0:2]) + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:end] + rr


@pytest.fixture
def sockets() -> Iterator[Callable[[str], socket.socket]]:
    made: list[socket.socket] = []

    def make(address: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(s)
        s.bind((address, 0))
        s.settimeout(2)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def responder(tmp_path: Path, sockets: Callable[[str], socket.socket]) -> Iterator[
    tuple[dns.Responder, socket.socket]
]:  # fmt: skip
    """A responder on 127.0.0.1 (any port) whose one upstream is the returned socket."""
    upstream = sockets(UPSTREAM)
    hosts = tmp_path / "hosts"
    hosts.write_text("10.89.0.2 web\n")
    r = dns.Responder(str(hosts), "127.0.0.1", None, [UPSTREAM], port=0,
                      upstream_port=upstream.getsockname()[1])  # fmt: skip
    yield r, upstream
    for p in list(r.pending.values()):
        p.sock.close()
    r.sock.close()


def relay(r: dns.Responder, client: socket.socket) -> bytes:
    """Run the responder until the client has a datagram (bounded), and return it."""
    client.setblocking(False)
    try:
        for _ in range(50):
            r.poll(0.05)
            try:
                return client.recv(4096)
            except BlockingIOError:
                continue
    finally:
        client.settimeout(2)
    raise AssertionError("the responder relayed nothing")


def forwarded(r: dns.Responder, upstream: socket.socket, client: socket.socket,
              q: bytes) -> tuple[bytes, tuple[str, int]]:  # fmt: skip
    client.sendto(q, r.sock.getsockname())
    r.poll(1.0)
    msg, src = upstream.recvfrom(4096)
    return msg, src


@pytest.mark.parametrize(
    "spoof",
    ["other-port", "other-address", "wrong-id", "wrong-question", "not-a-response"],
)
def test_spoofed_upstream_reply_is_ignored(
    responder: tuple[dns.Responder, socket.socket],
    sockets: Callable[[str], socket.socket],
    spoof: str,
) -> None:
    r, upstream = responder
    client = sockets("127.0.0.1")
    q = query("example.test")
    fwd, src = forwarded(r, upstream, client, q)
    assert fwd[2:] == q[2:]  # the same query, under the responder's own id
    # the spoofer sends first: loopback keeps the order, so were it accepted, the client
    # would get it before the genuine reply
    if spoof == "other-port":
        sockets(UPSTREAM).sendto(reply(fwd, SPOOFED), src)
    elif spoof == "other-address":
        sockets("127.0.0.2").sendto(reply(fwd, SPOOFED), src)
    elif spoof == "wrong-id":
        wrong = bytes([fwd[0] ^ 0xFF, fwd[1]])
        upstream.sendto(reply(fwd, SPOOFED, qid=wrong), src)
    elif spoof == "wrong-question":
        upstream.sendto(reply(query("evil.test", qid=fwd[0:2]), SPOOFED), src)
    else:
        upstream.sendto(fwd[:2] + b"\x01\x00" + reply(fwd, SPOOFED)[4:], src)
    upstream.sendto(reply(fwd, GENUINE), src)
    got = relay(r, client)
    assert got[0:2] == q[0:2]  # the client's own id back
    assert got.endswith(GENUINE), got
    assert not r.pending


def test_forwarding_uses_random_ids_and_ports(
    responder: tuple[dns.Responder, socket.socket], sockets: Callable[[str], socket.socket]
) -> None:
    r, upstream = responder
    client = sockets("127.0.0.1")
    ids, ports = [], set()
    for i in range(16):
        fwd, src = forwarded(r, upstream, client, query(f"n{i}.example.test"))
        ids.append(int.from_bytes(fwd[0:2], "big"))
        ports.add(src[1])
        upstream.sendto(reply(fwd, GENUINE), src)
        assert relay(r, client).endswith(GENUINE)
    # sequential ids from one socket (the old scheme) would be one port and steps of 1
    assert len(ports) > 1, ports
    assert [b - a for a, b in itertools.pairwise(ids)] != [1] * 15, ids


def test_local_names_and_no_upstream(
    tmp_path: Path, sockets: Callable[[str], socket.socket]
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.89.0.2 web\n")
    r = dns.Responder(str(hosts), "127.0.0.1", None, [], port=0)  # an --internal network's
    try:
        client = sockets("127.0.0.1")
        client.sendto(query("web"), r.sock.getsockname())
        assert relay(r, client).endswith(bytes([10, 89, 0, 2]))
        client.sendto(query("example.test"), r.sock.getsockname())
        got = relay(r, client)
        assert got[3] & 0x0F == 2 and got[6:8] == b"\0\0"  # SERVFAIL, no answer (as Docker)
    finally:
        r.sock.close()
