"""Links, addresses and routes through iproute2's batch mode.

Why iproute2 and not netlink from Python: importing pyroute2 costs 0.2-0.4 s and ~30 MB here,
more than a whole container start; an attachment is two ``ip -batch`` processes (one on the
host, one entered into the container's network namespace) of about 4 ms each, measured on
this machine. A hand-written rtnetlink layer would save those ~8 ms; it is the next step if
the start path ever needs it.
"""

from __future__ import annotations

import socket
import subprocess

from cove.errors import CoveError, HostFailure, HostToolFailed


def _batch(commands: list[str], netns_pid: int | None = None) -> None:
    argv = ["ip", "-batch", "-"]
    if netns_pid is not None:
        argv = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--", *argv]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise HostToolFailed(
            f"network setup failed: {err[-1] if err else 'ip exited ' + str(proc.returncode)}",
            "ip",
            proc.returncode,
        )


def exists(name: str) -> bool:
    # by index in our own network namespace: /sys shows the namespace that mounted it,
    # which is the host's for rootless cove in its own (cove.network.usermode)
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise HostFailure(f"cannot set {path} to {value}: {e.strerror}") from e


def ensure_bridge(name: str, gateway: str, prefix: int, mtu: int = 1500) -> None:
    """The network's bridge with the gateway address, up (created if missing)."""
    if not exists(name):
        try:
            _batch([
                f"link add {name} mtu {mtu} type bridge",
                f"addr add {gateway}/{prefix} dev {name}",
                f"link set {name} up",
            ])  # fmt: skip
        except CoveError:
            if not exists(name):  # a parallel cove made it first: fine
                raise
    # forwarding for outbound NAT and published ports (as Docker); route_localnet lets
    # 127.0.0.1:PORT be DNATed to a container on this bridge (no userland proxy)
    _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    _sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")


def delete(name: str) -> None:
    if exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def attach(
    pid: int,
    bridge: str,
    host_iface: str,
    iface: str,
    cidr: str,
    mac: str,
    gateway: str | None,
    mtu: int = 1500,
) -> None:
    """A veth pair: ``host_iface`` on the bridge, ``iface`` in the netns of ``pid``."""
    _batch([
        f"link add {host_iface} mtu {mtu} type veth peer name {iface} mtu {mtu} address {mac} "
        f"netns {pid}",
        f"link set {host_iface} master {bridge} up",
    ])  # fmt: skip
    try:
        cmds = [f"addr add {cidr} dev {iface}", f"link set {iface} up"]
        if gateway:
            cmds.append(f"route add default via {gateway} dev {iface}")
        _batch(cmds, netns_pid=pid)
    except BaseException:
        delete(host_iface)
        raise


def add_tap(name: str, bridge: str, mtu: int = 1500) -> None:
    """A tap device for a VM's QEMU, on the network's bridge (a VM's veth, in effect)."""
    delete(name)  # a stale one from a QEMU that died uncleanly
    _batch([
        f"tuntap add dev {name} mode tap",
        f"link set {name} mtu {mtu} master {bridge} up",
    ])  # fmt: skip


def detach_inside(pid: int, iface: str) -> None:
    subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "link", "del", iface],
        capture_output=True,
    )


def interfaces(pid: int) -> list[str]:
    """Interface names inside the network namespace of ``pid``."""
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "--", "ip", "-o", "link", "show"],
        capture_output=True,
        text=True,
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
