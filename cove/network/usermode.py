"""Rootless networking: one network namespace per user that cove owns, reached by slirp4netns.

A rootless user cannot make bridges, veths or iptables rules on the host, but can in a
network namespace its own user namespace owns. So rootless cove makes one (bound on
``$XDG_RUNTIME_DIR/cove/netns`` inside the pause process's mount namespace, so it lives as
long as that namespace) and every network operation of a rootless command happens in it:
:func:`join` moves the calling process there before the network manager touches anything.
Inside, cove's networks are what they are as root: bridges, veths, leases, DNS responders,
NAT and published-port DNAT in the namespace's own iptables. Containers of one user reach
each other by name there; two users' namespaces are separate.

The namespace reaches the outside through slirp4netns (user-mode TCP/IP, Debian's
slirp4netns), started once with ``--configure`` (tap0 10.0.2.100/24, gateway 10.0.2.2) and an
API socket: a published port is a ``add_hostfwd`` from the host's address and port to the
namespace's tap address, where the DNAT rule of the port takes it to the container. Why
slirp4netns and not pasta (Podman's default since 5.0): host forwards can be added and removed
while it runs (pasta 2023 takes its port list once, at start), and a shared namespace gets
ports as containers come and go. The host's loopback is not reachable from the namespace
(``--disable-host-loopback``): services on the host's 127.0.0.1 stay out of reach, as Docker's
and Podman's rootless defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterable

from cove.errors import Conflict, HostToolFailed, RootlessUnavailable
from cove.sys import syscalls as sc
from cove.sys import userns

NSFS_MAGIC = 0x6E736673
TAP_ADDRESS = "10.0.2.100"  # slirp4netns --configure's address for the namespace


def _paths() -> tuple[str, str, str, str]:
    d = userns.runtime_dir()
    return (
        os.path.join(d, "netns"),
        os.path.join(d, "slirp4netns.sock"),
        os.path.join(d, "slirp4netns.pid"),
        os.path.join(d, "netns.lock"),
    )


def _bound(path: str) -> bool:
    """Is ``path`` a network namespace bound there (not the empty file under it)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return sc.fstatfs_type(fd) == NSFS_MAGIC
    finally:
        os.close(fd)


def _make_netns(path: str) -> None:
    """A child unshares a network namespace and binds it on ``path``; it exits, the bind
    mount (in our mount namespace, the pause process's) keeps the namespace."""
    with open(path, "a"):
        pass
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits
        code = 1
        try:
            sc.unshare(sc.CLONE_NEWNET)
            sc.mount("/proc/self/ns/net", path, None, sc.MS_BIND)
            sc.set_loopback_up()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not _bound(path):
        raise RootlessUnavailable(f"cannot make the rootless network namespace at {path}")


def _slirp_alive(pidfile: str) -> bool:
    from cove.sys.proc import alive

    try:
        with open(pidfile) as f:
            pid, start = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return False
    return alive(pid, start)


def _kill_slirp(pidfile: str) -> None:
    from cove.sys.proc import alive

    with contextlib.suppress(OSError, ValueError):
        with open(pidfile) as f:
            pid, start = (int(x) for x in f.read().split())
        if alive(pid, start):
            os.kill(pid, 9)


def _start_slirp(netns: str, api: str, pidfile: str) -> None:
    import shutil

    from cove.sys.proc import proc_start_time

    exe = shutil.which("slirp4netns")
    if exe is None:
        raise RootlessUnavailable("slirp4netns not found: install the slirp4netns package")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(api)
    ready_r, ready_w = os.pipe()
    argv = [exe, "--configure", "--mtu=65520", "--disable-host-loopback",
            "--enable-sandbox", "--enable-seccomp", f"--ready-fd={ready_w}",
            f"--api-socket={api}", "--netns-type=path", netns, "tap0"]  # fmt: skip
    log = open(os.path.join(os.path.dirname(api), "slirp4netns.log"), "ab")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(ready_w,), start_new_session=True)  # fmt: skip
    finally:
        log.close()
        os.close(ready_w)
    try:
        ready = os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    if ready != b"1":
        proc.kill()
        proc.wait()
        raise HostToolFailed("slirp4netns did not start (see slirp4netns.log)", "slirp4netns")
    with open(pidfile, "w") as f:
        f.write(f"{proc.pid} {proc_start_time(proc.pid)}\n")


def join() -> None:
    """Move this process into the user's rootless network namespace (made, with its
    slirp4netns, on first use). One way: a process cannot return to the host's namespace,
    so only the network manager's callers come here."""
    netns, api, pidfile, lock = _paths()
    with sc.flocked(lock):
        if not _bound(netns):
            _kill_slirp(pidfile)  # one left from a namespace that is gone
            _make_netns(netns)
        if not _slirp_alive(pidfile):
            _start_slirp(netns, api, pidfile)
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    finally:
        os.close(fd)


def _api(request: dict[str, object]) -> dict[str, object]:
    _, api, _, _ = _paths()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(api)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    reply: dict[str, object] = json.loads(data or b"{}")
    return reply


def sync_forwards(ports: Iterable[tuple[str, str, int]]) -> None:
    """Make slirp4netns forward exactly ``ports`` (proto, host ip, host port) from the host
    to the same port on the namespace's tap address, where the ports' DNAT rules are."""
    want = {(proto, ip or "0.0.0.0", port) for proto, ip, port in ports}
    have: dict[tuple[str, str, int], int] = {}
    listed = _api({"execute": "list_hostfwd"})
    found = listed.get("entries", [])  # slirp4netns answers {"entries": [...]}, no "return"
    for e in found if isinstance(found, list) else []:
        have[(e["proto"], e["host_addr"], int(e["host_port"]))] = int(e["id"])
    for key, fid in have.items():
        if key not in want:
            _api({"execute": "remove_hostfwd", "arguments": {"id": fid}})
    for proto, ip, port in sorted(want - set(have)):
        reply = _api({"execute": "add_hostfwd", "arguments": {
            "proto": proto, "host_addr": ip, "host_port": port,
            "guest_addr": TAP_ADDRESS, "guest_port": port}})  # fmt: skip
        if "error" in reply:
            raise Conflict(f"bind for {ip}:{port}/{proto} failed: {reply['error']}")
