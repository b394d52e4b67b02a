"""A network's DNS responder (Docker's embedded DNS, aardvark-dns's place in Podman).

One small process per network listens on the bridge's gateway address, port 53 (UDP), for
datagrams arriving on that bridge only. It answers A queries for the names and aliases of
the containers on its network from a hosts file cove rewrites on every attach and detach
(re-read when it changes), and forwards every other query to the host's resolvers: from a
fresh socket with a random port and id per query, accepting only a response from the
server asked to the question asked. It runs in the host's network namespace, so a host
resolver on 127.0.0.53 works as an upstream; that is also why an ``--internal`` network's
responder is given no upstream at all (it would be the network's way out).

Lean like the monitor: a fresh interpreter that imports C modules only.
Arguments: HOSTS_FILE LISTEN_IP BRIDGE [UPSTREAM...]
"""

from __future__ import annotations

import _socket
import os
import select
import sys
import time

_A, _AAAA = 1, 28
TIMEOUT = 2.0  # seconds an upstream has to answer before the next one is asked
MAX_PENDING = 512  # forwarded queries in flight (one socket each); beyond: REFUSED


def _parse_name(msg: bytes, off: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        n = msg[off]
        if n == 0:
            return ".".join(labels), off + 1
        if n & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += 1 + n


def question(msg: bytes) -> tuple[int, str, int, int, int]:
    """(id, name, qtype, end of question, flags) of a query with one question."""
    if len(msg) < 12 or int.from_bytes(msg[4:6], "big") != 1:
        raise ValueError("not a single-question query")
    name, off = _parse_name(msg, 12)
    qtype = int.from_bytes(msg[off : off + 2], "big")
    return int.from_bytes(msg[0:2], "big"), name.lower().rstrip("."), qtype, off + 4, msg[2]


def answer(msg: bytes, end: int, addresses: list[str], qtype: int, rcode: int = 0) -> bytes:
    """A response echoing the question, with A records for ``addresses`` (TTL 0, as Docker)."""
    rd = msg[2] & 0x01
    flags = bytes((0x80 | 0x04 | rd, 0x80 | rcode))  # QR, AA, RD echoed; RA
    records = b""
    if qtype == _A:
        for a in addresses:
            records += b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big")
            records += (0).to_bytes(4, "big") + (4).to_bytes(2, "big")
            records += bytes(int(x) for x in a.split("."))
    count = len(addresses) if qtype == _A else 0
    header = msg[0:2] + flags + (1).to_bytes(2, "big") + count.to_bytes(2, "big") + b"\0\0\0\0"
    return header + msg[12:end] + records


class Names:
    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[int, int] = (0, 0)
        self.table: dict[str, list[str]] = {}

    def lookup(self, name: str) -> list[str] | None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_ino)
        except OSError:
            return None
        if stamp != self.stamp:
            table: dict[str, list[str]] = {}
            with open(self.path) as f:
                for line in f:
                    parts = line.split()
                    for n in parts[1:]:
                        table.setdefault(n.lower(), []).append(parts[0])
            self.table, self.stamp = table, stamp
        return self.table.get(name)


class _Pending:
    """One forwarded query: its own connected socket, so only the server asked can answer."""

    __slots__ = ("client", "deadline", "end", "qid", "query", "sock", "tried")

    def __init__(self, sock: _socket.socket, qid: bytes, query: bytes, end: int,
                 client: tuple[str, int], deadline: float, tried: int) -> None:  # fmt: skip
        self.sock, self.qid, self.query, self.end = sock, qid, query, end
        self.client, self.deadline, self.tried = client, deadline, tried


class Responder:
    """The responder's sockets and forwarding state; ``poll`` does one round of work."""

    def __init__(self, hosts: str, listen: str, device: str | None, upstreams: list[str], *,
                 port: int = 53, upstream_port: int = 53) -> None:  # fmt: skip
        self.sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        if device:
            # Binding to the gateway address alone still takes datagrams to that address
            # arriving on any interface (Linux's weak host model): containers of other
            # networks and the LAN would reach it. SO_BINDTODEVICE keeps it to the bridge.
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_BINDTODEVICE, device.encode())
        self.sock.bind((listen, port))
        self.names = Names(hosts)
        self.upstreams = upstreams
        self.upstream_port = upstream_port
        self.pending: dict[int, _Pending] = {}  # socket fd -> query

    def _forward(self, msg: bytes, end: int, client: tuple[str, int], tried: int) -> None:
        """Ask upstream number ``tried``; SERVFAIL once none is left (none at all for an
        ``--internal`` network, as Docker: its names never leave the host)."""
        if tried >= len(self.upstreams):
            qtype = int.from_bytes(msg[end - 4 : end - 2], "big")
            self.sock.sendto(answer(msg, end, [], qtype, rcode=2), client)
            return
        # a fresh socket per query: the kernel gives it a random source port, and connect()
        # makes it accept datagrams from that server's address and port only; with a random
        # id that leaves an off-path spoofer 32 bits to guess instead of 16 sequential ones
        up = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            up.connect((self.upstreams[tried], self.upstream_port))
            qid = os.urandom(2)
            up.send(qid + msg[2:])
        except OSError:
            up.close()
            self._forward(msg, end, client, tried + 1)
            return
        self.pending[up.fileno()] = _Pending(up, qid, msg, end, client,
                                             time.monotonic() + TIMEOUT, tried)  # fmt: skip

    def _from_client(self) -> None:
        msg, client = self.sock.recvfrom(4096)
        try:
            _qid, name, qtype, end, flags = question(msg)
        except (ValueError, IndexError):
            return
        if flags & 0x80:  # a response sent to us: never answered
            return
        found = self.names.lookup(name)
        if found is not None:
            self.sock.sendto(answer(msg, end, found, qtype), client)
        elif len(self.pending) >= MAX_PENDING:
            self.sock.sendto(answer(msg, end, [], qtype, rcode=5), client)  # REFUSED
        else:
            self._forward(msg, end, client, 0)

    def _from_upstream(self, p: _Pending) -> None:
        try:
            msg, src = p.sock.recvfrom(4096)
        except OSError:  # e.g. ICMP port unreachable reported on the connected socket
            return
        # the server asked (address and port), our id, a response, to our question
        want = (self.upstreams[p.tried], self.upstream_port)
        if src != want or len(msg) < 12 or msg[0:2] != p.qid or not msg[2] & 0x80:
            return
        try:
            end = question(msg)[3]
        except (ValueError, IndexError):
            return
        if msg[12:end].lower() != p.query[12 : p.end].lower():
            return
        self._done(p)
        self.sock.sendto(p.query[0:2] + msg[2:], p.client)

    def _done(self, p: _Pending) -> None:
        self.pending.pop(p.sock.fileno(), None)
        p.sock.close()

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for datagrams and handle them."""
        now = time.monotonic()
        for p in [p for p in self.pending.values() if p.deadline <= now]:
            self._done(p)
            self._forward(p.query, p.end, p.client, p.tried + 1)  # the next server
        if self.pending:
            timeout = max(0.0, min(timeout, min(p.deadline for p in self.pending.values()) - now))
        ready, _, _ = select.select([self.sock, *(p.sock for p in self.pending.values())], [],
                                    [], timeout)  # fmt: skip
        for s in ready:
            if s is self.sock:
                self._from_client()
            elif (waiting := self.pending.get(s.fileno())) is not None:
                self._from_upstream(waiting)


def serve(hosts: str, listen: str, device: str | None, upstreams: list[str]) -> None:
    r = Responder(hosts, listen, device, upstreams)
    while True:
        r.poll(5.0)


def main() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    serve(sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4:])
