"""A network's DNS responder (Docker's embedded DNS, aardvark-dns's place in Podman).

One small process per network listens on the bridge's gateway address, port 53 (UDP). It
answers A queries for the names and aliases of the containers on its network from a hosts
file cove rewrites on every attach and detach (re-read when it changes), and forwards
every other query to the host's resolvers. It runs in the host's network namespace, so a
host resolver on 127.0.0.53 works as an upstream.

Lean like the monitor: a fresh interpreter that imports C modules only.
Arguments: HOSTS_FILE LISTEN_IP [UPSTREAM...]
"""

from __future__ import annotations

import _socket
import os
import select
import sys

_A, _AAAA = 1, 28


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


def serve(hosts: str, listen: str, upstreams: list[str]) -> None:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    sock.bind((listen, 53))
    up = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    up.bind(("0.0.0.0", 0))
    names = Names(hosts)
    pending: dict[int, tuple[bytes, tuple[str, int]]] = {}  # upstream id -> (client id, addr)
    next_id = 1
    while True:
        ready, _, _ = select.select([sock, up], [], [], 5.0)
        if sock in ready:
            msg, client = sock.recvfrom(4096)
            try:
                _qid, name, qtype, end, _flags = question(msg)
            except (ValueError, IndexError):
                continue
            found = names.lookup(name)
            if found is not None:
                sock.sendto(answer(msg, end, found, qtype), client)
            elif upstreams:
                next_id = (next_id % 65535) + 1
                pending[next_id] = (msg[0:2], client)
                up.sendto(next_id.to_bytes(2, "big") + msg[2:], (upstreams[0], 53))
                if len(pending) > 1024:
                    pending.pop(next(iter(pending)))
            else:
                sock.sendto(answer(msg, end, [], qtype, rcode=2), client)  # SERVFAIL
        if up in ready:
            msg, _ = up.recvfrom(4096)
            entry = pending.pop(int.from_bytes(msg[0:2], "big"), None)
            if entry is not None:
                sock.sendto(entry[0] + msg[2:], entry[1])


def main() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    serve(sys.argv[1], sys.argv[2], sys.argv[3:])
