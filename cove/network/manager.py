"""Networks and attachments: the API the container engine (and later VMs) call.

A network is a bridge (``cove0`` for the default ``bridge`` network, ``cove-<id>`` for
the others), a subnet with leases, a DNS responder on the gateway address, and rules in
cove's chains. An attachment is a veth pair: one end on the bridge, the other moved into
the container's network namespace as ``eth0`` (``eth1``... for ``connect``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from cove.errors import Conflict, InvalidSpec, NotFound, best_effort
from cove.network import firewall, ipam, links
from cove.network.store import Lease, Network, NetworkStore, Port
from cove.sys import events
from cove.sys.private import DEFAULT_ROOT
from cove.sys.userns import rootless

DEFAULT = "bridge"
DEFAULT_BRIDGE = "cove0"
SPECIAL = ("none", "host")
PREDEFINED = (DEFAULT, *SPECIAL)


@dataclass
class PortSpec:
    proto: str
    host_ip: str
    host_port: int  # 0: pick a free one
    container_port: int
    host_port_end: int = 0  # a host range for one container port: the first free one


def parse_publish(text: str) -> list[PortSpec]:
    """``-p [IP:][HOSTPORT:]CPORT[/tcp|udp]``, ranges on both sides (Docker's syntax)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidSpec(f"invalid proto: {proto}")
    parts = spec.rsplit(":", 2)
    ip, hport, cport = "", "", ""
    if len(parts) == 1:
        cport = parts[0]
    elif len(parts) == 2:
        hport, cport = parts
    else:
        ip, hport, cport = parts
    if ip:
        try:
            ipaddress.IPv4Address(ip.strip("[]"))
        except ValueError as e:
            raise InvalidSpec(f"invalid IP address in -p {text!r}") from e

    def rng(t: str) -> list[int]:
        lo, _, hi = t.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError as e:
            raise InvalidSpec(f"invalid port in -p {text!r}") from e
        if not (0 < a <= b < 65536):
            raise InvalidSpec(f"invalid port range in -p {text!r}")
        return list(range(a, b + 1))

    cports = rng(cport)
    hports = rng(hport) if hport else [0] * len(cports)
    if len(hports) != len(cports):
        if hport and len(cports) == 1:
            # Docker: a host range for one container port takes its first free port
            return [PortSpec(proto, ip, hports[0], cports[0], hports[-1])]
        raise InvalidSpec(f"invalid ranges in -p {text!r}: sizes differ")
    return [PortSpec(proto, ip, h, c) for h, c in zip(hports, cports, strict=True)]


def _mac(address: str) -> str:
    return "02:42:" + ":".join(f"{int(x):02x}" for x in address.split("."))


class NetworkManager:
    def __init__(self, root: str, db: Any) -> None:
        self.root = root
        self.dir = os.path.join(root, "networks")
        self.store = NetworkStore(db)
        if rootless():  # rootless: every bridge, veth and rule lives in the user's netns
            from cove.network import usermode

            usermode.join()

    # -- networks -------------------------------------------------------------

    def _taken(self) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(n.subnet) for n in self.store.networks()] + ipam.host_routes()

    def create(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: dict[str, str] | None = None,
    ) -> Network:
        if name in SPECIAL or any(n.name == name for n in self.store.networks()):
            raise Conflict(f"network with name {name} already exists")
        with self._lock():
            taken = self._taken()
            if subnet:
                net = ipam.parse_subnet(subnet)
                clash = [t for t in taken if net.overlaps(t)]
                if clash:
                    raise Conflict(f"invalid pool request: pool {net} overlaps with {clash[0]}")
            elif name == DEFAULT:
                try:
                    net = ipam.free_subnet(ipam.DEFAULT_CANDIDATES, taken)
                except Conflict:
                    net = ipam.free_subnet(ipam.POOL, taken, ipam.POOL_PREFIX)
            else:
                net = ipam.free_subnet(ipam.POOL, taken, ipam.POOL_PREFIX)
            gw = ipam.gateway_for(net, gateway)
            nid = secrets.token_hex(32)
            bridge = self._default_bridge() if name == DEFAULT else f"cove-{nid[:10]}"
            n = Network(nid, name, bridge, str(net), str(gw), internal, time.time(), labels or {})
            self.store.add(n)
        try:
            self._bring_up(n)
        except BaseException:
            self.store.remove(n.id)
            links.delete(n.bridge)
            raise
        events.emit(self.root, "network", "create", n.id, {"name": n.name, "type": "bridge"})
        return n

    def _default_bridge(self) -> str:
        """``cove0`` for the standard root; other roots (tests, a second user) get their own,
        since the kernel has one namespace of interface names for all of them."""
        import hashlib

        if os.path.abspath(self.root) == DEFAULT_ROOT:
            return DEFAULT_BRIDGE
        return DEFAULT_BRIDGE + "-" + hashlib.sha256(self.root.encode()).hexdigest()[:6]

    def reset(self) -> None:
        """Remove every network of this root, the default one too (``system reset``)."""
        for n in self.all():
            for cid in self.users(n):
                with best_effort(f"detach container {cid} from network {n.name}", __name__):
                    self.detach(cid)
            self._stop_dns(n)
            self.store.remove(n.id)
            links.delete(n.bridge)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        self.sync()

    def rename(self, cid: str, name: str) -> None:
        """The container's new name answers on its networks; the old one no longer does."""
        self.store.db.execute("UPDATE leases SET name = ? WHERE container = ?", (name, cid))
        for lease in self.store.leases(container=cid):
            with contextlib.suppress(NotFound):
                self._write_hosts(self.store.get(lease.network))

    def release_stale(self, live: set[str]) -> None:
        """Leases and ports of containers that are not running any more (a crash's leftovers)."""
        stale = {x.container for x in self.store.leases()} | {
            p.container for p in self.store.ports()
        }
        for cid in stale - live:
            self.detach(cid)

    def _find(self, ref: str) -> Network | None:
        try:
            return self.store.get(ref)
        except NotFound:
            return None

    def get(self, ref: str) -> Network:
        if ref == DEFAULT:
            return self.default()
        return self.store.get(ref)

    def default(self) -> Network:
        net = self._find(DEFAULT)
        if net is None:
            try:
                return self.create(DEFAULT)
            except Conflict:
                net = self._find(DEFAULT)  # a parallel cove made it first
                if net is None:
                    raise
        return net

    def all(self) -> list[Network]:
        return self.store.networks()

    def _bring_up(self, n: Network) -> None:
        """Bridge, firewall rules and DNS responder; idempotent (also after a reboot)."""
        net = ipaddress.IPv4Network(n.subnet)
        fresh = not links.exists(n.bridge)
        links.ensure_bridge(n.bridge, n.gateway, net.prefixlen)
        if fresh:
            self.sync()
        self._ensure_dns(n)

    @contextlib.contextmanager
    def _lock(self) -> Any:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def users(self, n: Network) -> list[str]:
        return [lease.container for lease in self.store.leases(network=n.id)]

    def remove(self, ref: str) -> Network:
        n = self.store.get(ref) if ref not in PREDEFINED else None
        if n is None or n.name == DEFAULT:
            raise Conflict(f"{ref} is a pre-defined network and cannot be removed")
        users = self.users(n)
        if users:
            raise Conflict(
                f"error while removing network: network {n.name} id {n.id} has active endpoints"
            )
        self._stop_dns(n)
        self.store.remove(n.id)
        links.delete(n.bridge)
        with best_effort(f"remove the files of network {n.name}", __name__):
            import shutil

            with contextlib.suppress(FileNotFoundError):  # expected: none were made
                shutil.rmtree(os.path.join(self.dir, n.id))
        self.sync()
        events.emit(self.root, "network", "destroy", n.id, {"name": n.name, "type": "bridge"})
        return n

    def inspect(self, n: Network, containers: dict[str, str]) -> dict[str, Any]:
        import datetime

        created = datetime.datetime.fromtimestamp(n.created, datetime.UTC).isoformat()
        prefix = ipaddress.IPv4Network(n.subnet).prefixlen
        return {
            "Name": n.name,
            "Id": n.id,
            "Created": created.replace("+00:00", "Z"),
            "Scope": "local",
            "Driver": "bridge",
            "EnableIPv6": False,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}],
            },
            "Internal": n.internal,
            "Attachable": False,
            "Ingress": False,
            "Containers": {
                lease.container: {
                    "Name": containers.get(lease.container, ""),
                    "MacAddress": lease.mac,
                    "IPv4Address": f"{lease.address}/{prefix}",
                    "IPv6Address": "",
                }
                for lease in self.store.leases(network=n.id)
            },
            "Options": {"com.docker.network.bridge.name": n.bridge},
            "Labels": n.labels,
        }

    # -- DNS ------------------------------------------------------------------

    def _ndir(self, n: Network) -> str:
        d = os.path.join(self.dir, n.id)
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d

    def _dns_pid(self, n: Network) -> int:
        """The responder's pid if it runs (pid and start time, as recorded)."""
        from cove.sys.proc import proc_start_time

        try:
            with open(os.path.join(self._ndir(n), "dns.pid")) as f:
                pid, start = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            return 0
        return pid if proc_start_time(pid) == start else 0

    def _ensure_dns(self, n: Network) -> None:
        with self._lock():
            if self._dns_pid(n):
                return
            hosts = os.path.join(self._ndir(n), "hosts")
            if not os.path.exists(hosts):
                self._write_hosts_locked(n)
            here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            code = (f"import sys; sys.path[:0] = [{here!r}]; "
                    "from cove.network.dns import main; main()")  # fmt: skip
            # an --internal network's names never leave the host (CVE-2024-29018 class: the
            # responder sits in the host's netns, so forwarding would be the network's way out)
            upstreams = [] if n.internal else _upstreams()
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code, hosts, n.gateway, n.bridge, *upstreams],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(self._ndir(n), "dns.log"), "ab"),
                start_new_session=True,
            )
            from cove.sys.proc import proc_start_time

            with open(os.path.join(self._ndir(n), "dns.pid"), "w") as f:
                f.write(f"{proc.pid} {proc_start_time(proc.pid)}")

    def _stop_dns(self, n: Network) -> None:
        pid = self._dns_pid(n)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _write_hosts(self, n: Network) -> None:
        with self._lock():
            self._write_hosts_locked(n)

    def _write_hosts_locked(self, n: Network) -> None:
        """Under the lock: the leases read here include every one committed before."""
        lines = []
        if n.name != DEFAULT:  # Docker: no name resolution on the default bridge
            for lease in self.store.leases(network=n.id):
                names = [x for x in (lease.name, lease.container[:12], *lease.aliases) if x]
                lines.append(f"{lease.address} {' '.join(names)}\n")
        path = os.path.join(self._ndir(n), "hosts")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, path)

    # -- firewall -------------------------------------------------------------

    def sync(self) -> None:
        """Under the networks lock: two parallel changes cannot load stale rule sets."""
        with self._lock():
            self._sync_locked()

    def _sync_locked(self) -> None:
        nets = self.store.networks()
        if rootless():  # published ports reach the user's netns through slirp4netns
            from cove.network import usermode

            usermode.sync_forwards((p.proto, p.host_ip, p.host_port) for p in self.store.ports())
        tag = self._default_bridge().removeprefix(DEFAULT_BRIDGE)
        if not nets:
            firewall.remove_all(tag)
            return
        firewall.sync(
            [firewall.NetRule(n.bridge, n.subnet, n.internal) for n in nets],
            [
                firewall.PortRule(p.proto, p.host_ip, p.host_port, p.address, p.container_port)
                for p in self.store.ports()
            ],
            tag,
        )

    # -- attachments ----------------------------------------------------------

    def attach(
        self,
        cid: str,
        name: str,
        pid: int,
        ref: str,
        *,
        iface: str,
        aliases: list[str],
        ip: str | None = None,
        default_route: bool = True,
    ) -> tuple[Network, Lease]:
        n = self.get(ref)
        self._bring_up(n)
        net = ipaddress.IPv4Network(n.subnet)
        gw = ipaddress.IPv4Address(n.gateway)

        def pick(used: set[str]) -> ipaddress.IPv4Address:
            if ip:
                want = ipaddress.IPv4Address(ip)
                if want not in net or want in (gw, net.network_address, net.broadcast_address):
                    raise InvalidSpec(f"invalid address {ip}: not a free host address of {net}")
                if ip in used:
                    raise Conflict(f"address {ip} is already in use on network {n.name}")
                return want
            return ipam.pick_address(net, gw, used)

        host_iface = f"veth{cid[:8]}{iface.removeprefix('eth')}"
        lease = self.store.lease(n, cid, name, aliases, pick, iface, host_iface, "")
        mac = _mac(lease.address)
        self.store.db.execute(
            "UPDATE leases SET mac = ? WHERE network = ? AND container = ?", (mac, n.id, cid)
        )
        lease.mac = mac
        try:
            links.attach(pid, n.bridge, host_iface, iface, f"{lease.address}/{net.prefixlen}",
                         mac, n.gateway if default_route else None)  # fmt: skip
        except BaseException:
            self.store.release(cid, n.id)
            raise
        self._write_hosts(n)
        return n, lease

    def lease_vm(self, vm_id: str, name: str, ref: str, tap: str) -> tuple[Network, Lease]:
        """An address on network ``ref`` for a VM, held until the VM is removed (so its
        guest configuration stays true across restarts); its name answers in DNS."""
        n = self.get(ref)
        self._bring_up(n)
        net = ipaddress.IPv4Network(n.subnet)
        gw = ipaddress.IPv4Address(n.gateway)
        lease = self.store.lease(
            n, vm_id, name, [], lambda used: ipam.pick_address(net, gw, used), "eth0", tap, ""
        )
        lease.mac = _mac(lease.address)
        self.store.db.execute(
            "UPDATE leases SET mac = ? WHERE network = ? AND container = ?",
            (lease.mac, n.id, vm_id),
        )
        self._write_hosts(n)
        return n, lease

    def plug_tap(self, n: Network, tap: str) -> None:
        """The VM's tap on its network's bridge (at each start; the bridge may be new)."""
        self._bring_up(n)
        links.add_tap(tap, n.bridge)

    def publish(self, cid: str, address: str, specs: list[PortSpec]) -> list[Port]:
        if not specs:
            return []
        for attempt in range(20):
            ports = [Port(s.proto, s.host_ip, _host_port(s), cid, address, s.container_port)
                     for s in specs]  # fmt: skip
            try:
                self.store.add_ports(ports)
                break
            except Conflict:
                # a parallel run drew the same free port: draw again (explicit ports fail)
                if all(s.host_port and not s.host_port_end for s in specs) or attempt == 19:
                    raise
        self.sync()
        return ports

    def detach(self, cid: str, network: str | None = None, pid: int = 0) -> None:
        """Release what ``cid`` holds (all networks, or one): leases, ports, host veths."""
        leases = [x for x in self.store.leases(container=cid) if network in (None, x.network)]
        addresses = {x.address for x in leases}
        mine = [p for p in self.store.ports(cid) if network is None or p.address in addresses]
        had_ports = bool(mine)
        for lease in leases:
            if pid and network:
                links.detach_inside(pid, lease.iface)
            links.delete(lease.host_iface)
            self.store.release(cid, lease.network)
        if network is None:
            self.store.release_ports(cid)
        else:
            for p in mine:
                self.store.db.execute(
                    "DELETE FROM ports WHERE proto = ? AND host_ip = ? AND host_port = ?",
                    (p.proto, p.host_ip, p.host_port),
                )
        for net_id in {x.network for x in leases}:
            with contextlib.suppress(NotFound):
                self._write_hosts(self.store.get(net_id))
        if had_ports:
            self.sync()

    def prune(self, in_use: set[str]) -> list[str]:
        out = []
        for n in self.all():
            if n.name == DEFAULT or self.users(n):
                continue
            with contextlib.suppress(Conflict, NotFound):
                self.remove(n.id)
                out.append(n.name)
        return out


def _upstreams() -> list[str]:
    """The host's IPv4 resolvers, from ``$COVE_HOST_RESOLV_CONF`` if set (tests point the
    responders at a server of their own on 127.0.0.0/8) or /etc/resolv.conf."""
    out = []
    try:
        with open(os.environ.get("COVE_HOST_RESOLV_CONF") or "/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                    out.append(parts[1])
    except OSError:
        pass
    return out


def _host_port(s: PortSpec) -> int:
    """The host port for ``s``: explicit (checked free on the host), first free of a range,
    or any free one."""
    if not s.host_port:
        return _free_port(s.proto, s.host_ip)
    last = s.host_port_end or s.host_port
    for port in range(s.host_port, last + 1):
        if _bindable(s.proto, s.host_ip, port):
            return port
    where = f"{s.host_ip or '0.0.0.0'}:{s.host_port}"
    raise Conflict(f"bind for {where}/{s.proto} failed: port is already allocated")


def _bindable(proto: str, host_ip: str, port: int) -> bool:
    """Nothing on the host listens there (a DNAT rule would silently take its traffic)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host_ip if host_ip and host_ip != "0.0.0.0" else "", port))
        except OSError:
            return False
    return True


def _free_port(proto: str, host_ip: str) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip if host_ip and host_ip != "0.0.0.0" else "", 0))
        return int(s.getsockname()[1])


def settings(attached: list[tuple[Network, Lease]], ports: list[Port]) -> dict[str, Any]:
    """Docker's NetworkSettings for ``inspect``."""
    nets: dict[str, Any] = {}
    for n, lease in attached:
        nets[n.name] = {
            "Aliases": lease.aliases or None,
            "NetworkID": n.id,
            "EndpointID": lease.host_iface,
            "Gateway": n.gateway,
            "IPAddress": lease.address,
            "IPPrefixLen": ipaddress.IPv4Network(n.subnet).prefixlen,
            "MacAddress": lease.mac,
        }
    port_map: dict[str, Any] = {}
    for p in ports:
        port_map.setdefault(f"{p.container_port}/{p.proto}", []).append(
            {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)}
        )
    first: dict[str, Any] = next(iter(nets.values()), {})
    return {
        "Networks": nets,
        "Ports": port_map,
        "IPAddress": first.get("IPAddress", ""),
        "Gateway": first.get("Gateway", ""),
        "MacAddress": first.get("MacAddress", ""),
        "IPPrefixLen": first.get("IPPrefixLen", 0),
    }
