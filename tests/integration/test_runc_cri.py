"""Kubernetes' CRI, as kubelet calls it, with cove-runc as containerd's default runtime
through the config's ``BinaryName`` (issue 18): gRPC from Python (grpcio) to containerd
1.6's CRI plugin, with the project's own minimal protobuf encoder for the few messages of
``runtime.v1`` used (field numbers from kubernetes/cri-api api.proto are the interface).

Two pods: one in the host's network namespace (NamespaceMode NODE, no CNI), and one in its
own network namespace set up by Debian's CNI plugins (containernetworking-plugins: bridge,
host-local, loopback) on a test-unique bridge and subnet, with ipMasq off so no iptables
rule is made; its containers (cove-runc) join the pod's netns by the path in config.json.
The sandbox ("pause") image is built locally from the shared Alpine rootfs."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import COVE_RUNC, Containerd, alpine_oci_archive

# -- a minimal protobuf encoder/decoder (varints and length-delimited fields only) ---------

Fields = list[tuple[int, Any]]  # (field number, str | bytes | int | Fields)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(fields: Fields) -> bytes:
    out = bytearray()
    for num, value in fields:
        if isinstance(value, bool | int):
            out += _varint(num << 3) + _varint(int(value))
            continue
        if isinstance(value, str):
            data = value.encode()
        elif isinstance(value, bytes):
            data = value
        else:
            data = encode(value)
        out += _varint(num << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def decode(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while i < len(data):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out.setdefault(num, []).append(varint())
        elif wire == 2:
            n = varint()
            out.setdefault(num, []).append(data[i : i + n])
            i += n
        elif wire == 1:
            out.setdefault(num, []).append(data[i : i + 8])
            i += 8
        elif wire == 5:
            out.setdefault(num, []).append(data[i : i + 4])
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


class CRI:
    def __init__(self, sock: Path) -> None:
        import grpc

        self.channel = grpc.insecure_channel(f"unix://{sock}")

    def call(self, method: str, fields: Fields) -> dict[int, list[Any]]:
        rpc = self.channel.unary_unary(
            f"/runtime.v1.RuntimeService/{method}",
            request_serializer=encode,
            response_deserializer=lambda b: b,
        )
        return decode(rpc(fields, timeout=60))


# CRI enums (api.proto): NamespaceMode POD = 0, NODE = 2; ContainerState
POD, NODE = 0, 2
CONTAINER_RUNNING, CONTAINER_EXITED = 1, 2
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
NETNS_DIR = Path("/var/run/netns")  # where containerd 1.6 mounts the pods' netns
CNI_CACHE = Path("/var/lib/cni")  # libcni's result cache (its default cacheDir)


@dataclass
class PodNet:
    """The test's CNI network: a bridge and a subnet no host route or other test uses."""

    name: str  # the network's and the bridge's name
    subnet: ipaddress.IPv4Network
    ipam_dir: Path  # host-local's dataDir

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)  # isGateway: the bridge's address


def _free_subnet() -> ipaddress.IPv4Network:
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    used = []
    for word in routes.split():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(word, strict=False))
    for i in range(256):
        net = ipaddress.IPv4Network(f"10.233.{(os.getpid() + i) % 256}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise AssertionError("no free 10.233.X.0/24 for the test's CNI bridge")


def _iptables_rules_naming(*words: str) -> list[str]:
    """IPv4 rules (nft and legacy back ends) that name any of ``words``."""
    found = []
    for tool in ("iptables-nft-save", "iptables-legacy-save"):
        if shutil.which(tool) is not None:
            out = subprocess.run([tool], capture_output=True, text=True).stdout
            found += [f"{tool}: {x}" for x in out.splitlines() if any(w in x for w in words)]
    return found


@pytest.fixture
def cri() -> Iterator[tuple[Containerd, CRI, PodNet]]:
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/test-deps.sh installs it")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).exists():
            pytest.fail(f"CNI plugin {plugin} is missing: scripts/test-deps.sh installs it")
    base = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))
    cd = Containerd(base, ns="k8s.io")  # the CRI plugin's namespace
    (base / "cni").mkdir()
    net = PodNet(f"covecri{os.getpid()}", _free_subnet(), base / "ipam")  # <= 15 chars
    conflist = {
        "cniVersion": "0.4.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.name,
                "isGateway": True,
                "ipMasq": False,  # no NAT: no iptables rule, no traffic beyond the bridge
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(net.subnet)}]],
                    "dataDir": str(net.ipam_dir),
                },
            }
        ],
    }
    (base / "cni" / "10-cove.conflist").write_text(json.dumps(conflist))
    # the bridge plugin (isGateway) turns IPv4 forwarding on: put back what was there
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    forward_was = forward.read_text()
    netns_before = set(NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else set()
    made_dirs = [d for d in (NETNS_DIR, CNI_CACHE / "results", CNI_CACHE) if not d.exists()]
    extra = f"""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:1"
  # the pause container asks for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE,
  # which a sandboxed root may lack: cap it at containerd's own (kind and rootless do too)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "cove"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cove]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cove.options]
        BinaryName = "{COVE_RUNC}"
        Root = "{base}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{base}/cni"
"""
    client: CRI | None = None
    try:
        cd.start(extra)
        cd.ctr("image", "import", "--base-name", "localhost/alpine", str(alpine_oci_archive(base)))
        pause = alpine_oci_archive(base, "1", {"Cmd": ["sleep", "2147483647"]})
        cd.ctr("image", "import", "--base-name", "localhost/pause", str(pause))
        client = CRI(cd.sock)
        yield cd, client, net
    finally:
        if client is not None:
            client.channel.close()
        forced = [x for x in cd.stop() if not x.startswith("mount ")]
        for ns in (set(NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else set()) - netns_before:
            forced.append(f"netns {ns}")
            subprocess.run(["umount", str(ns)], capture_output=True)
            ns.unlink(missing_ok=True)
        if CNI_CACHE.is_dir():
            for cached in CNI_CACHE.glob(f"results/{net.name}-*"):
                forced.append(f"cni cache {cached}")
                cached.unlink()
        forced += [f"iptables rule {r}" for r in _iptables_rules_naming(net.name, str(net.subnet))]
        # the bridge outlives its pods by the plugin's design: the test's to remove
        subprocess.run(["ip", "link", "del", net.name], capture_output=True)
        for d in made_dirs:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty
        forward.write_text(forward_was)
        shutil.rmtree(base, ignore_errors=True)
        assert not forced, f"the test left these behind: {forced}"


def test_cri_pod_lifecycle_through_cove_runc(cri: tuple[Containerd, CRI, PodNet]) -> None:
    cd, c, _ = cri
    version = c.call("Version", [(1, "v1")])
    assert version[2] == [b"containerd"] and version[4] == [b"v1"]

    parent = f"/covecri{os.getpid()}"
    sandbox_config: Fields = [
        (1, [(1, "pod1"), (2, "uid-1"), (3, "default"), (4, 0)]),  # metadata
        (2, "pod1"),  # hostname
        (3, str(cd.base / "logs")),  # log_directory
        (8, [(1, parent), (2, [(1, [(1, NODE)])])]),  # linux: cgroup_parent, host network
    ]
    pod = c.call("RunPodSandbox", [(1, sandbox_config)])[1][0].decode()
    try:
        container_config: Fields = [
            (1, [(1, "c1"), (2, 0)]),  # metadata
            (2, [(1, "localhost/alpine:3.20")]),  # image
            (3, "sh"),  # command (repeated: one value)
            (4, "-c"),
            (4, "echo started; exec sleep 1000"),  # args
            (11, "c1.log"),  # log_path, under the pod's log_directory
        ]
        created = c.call("CreateContainer", [(1, pod), (2, container_config), (3, sandbox_config)])
        cid = created[1][0].decode()
        c.call("StartContainer", [(1, cid)])
        status = decode(c.call("ContainerStatus", [(1, cid)])[1][0])
        assert status[3] == [CONTAINER_RUNNING]

        # the pod's containers are cove-runc's: its state under the BinaryName runtime's Root
        states = Path(cd.base / "runc" / "k8s.io")
        assert {pod, cid} <= {p.name for p in states.iterdir()}

        out = c.call("ExecSync", [(1, cid), (2, "cat"), (2, "/etc/alpine-release"), (3, 30)])
        assert out[1] == [b"3.20.3\n"] and out.get(3, [0]) == [0]
        failing = c.call("ExecSync", [(1, cid), (2, "sh"), (2, "-c"), (2, "exit 3"), (3, 30)])
        assert failing[3] == [3]

        listed = [decode(x) for x in c.call("ListContainers", []).get(1, [])]
        assert [(x[1][0].decode(), x[6][0]) for x in listed] == [(cid, CONTAINER_RUNNING)]

        c.call("StopContainer", [(1, cid), (2, 2)])
        status = decode(c.call("ContainerStatus", [(1, cid)])[1][0])
        assert status[3] == [CONTAINER_EXITED]
        c.call("RemoveContainer", [(1, cid)])
        assert c.call("ListContainers", []).get(1, []) == []
    finally:
        c.call("StopPodSandbox", [(1, pod)])
        c.call("RemovePodSandbox", [(1, pod)])
    deadline = time.monotonic() + 10
    while list(states.iterdir()):
        assert time.monotonic() < deadline, f"cove-runc state left: {list(states.iterdir())}"
        time.sleep(0.1)


POD_PORT = 7777


def _tcp_read(ip: str, patience: float) -> bytes:
    """Connect to the pod's ``POD_PORT`` from the host and read to EOF; a refused connect
    (the listener not up yet) is retried for ``patience`` seconds, anything else raises."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with socket.create_connection((ip, POD_PORT), timeout=2) as conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                return data
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _exec_sync(c: CRI, cid: str, *argv: str) -> tuple[int, str]:
    out = c.call("ExecSync", [(1, cid), *((2, a) for a in argv), (3, 30)])
    text = b"".join(out.get(1, []) + out.get(2, [])).decode()
    return out.get(3, [0])[0], text


def test_cri_pod_network_through_cni(cri: tuple[Containerd, CRI, PodNet]) -> None:
    """A pod in its own network namespace, made by containerd and set up by the CNI
    plugins: cove-runc's containers join it by path; the pod IP is on eth0 of both
    containers, the pod reaches its gateway (the bridge), and stopping the pod releases
    the IP, the netns and the veth."""
    cd, c, net = cri
    parent = f"/covecri{os.getpid()}"
    sandbox_config: Fields = [
        (1, [(1, "pod2"), (2, "uid-2"), (3, "default"), (4, 0)]),  # metadata
        (2, "pod2"),  # hostname
        (3, str(cd.base / "logs")),  # log_directory
        (8, [(1, parent), (2, [(1, [(1, POD)])])]),  # linux: cgroup_parent, pod network
    ]
    runc_root = cd.base / "runc" / "k8s.io"  # the BinaryName runtime's Root, per namespace
    pod = c.call("RunPodSandbox", [(1, sandbox_config)])[1][0].decode()
    stopped = False
    try:
        status = decode(c.call("PodSandboxStatus", [(1, pod)])[1][0])
        pod_ip = decode(status[5][0])[1][0].decode()  # status.network.ip
        assert ipaddress.ip_address(pod_ip) in net.subnet and pod_ip != net.gateway
        assert (net.ipam_dir / net.name / pod_ip).exists()  # host-local's lease

        # what containerd gave cove-runc for the pause container: the netns as a path
        bundle = cd.base / "state" / "io.containerd.runtime.v2.task" / "k8s.io" / pod
        spec = json.loads((bundle / "config.json").read_text())
        netns = [n.get("path", "") for n in spec["linux"]["namespaces"] if n["type"] == "network"]
        assert len(netns) == 1 and netns[0].startswith(f"{NETNS_DIR}/cni-"), netns
        pod_netns = f"net:[{os.stat(netns[0]).st_ino}]"
        assert os.readlink("/proc/self/ns/net") != pod_netns  # control: not the host's
        state = subprocess.run([str(COVE_RUNC), "--root", str(runc_root), "state", pod],
                               capture_output=True, text=True, check=True)  # fmt: skip
        assert os.readlink(f"/proc/{json.loads(state.stdout)['pid']}/ns/net") == pod_netns

        ids = []
        # c1 answers one TCP connection on the pod IP (busybox nc), then sleeps
        serve = f"echo hello from the pod | nc -l -p {POD_PORT}; exec sleep 1000"
        for name, argv in (("c1", ["sh", "-c", serve]), ("c2", ["sleep", "1000"])):
            config: Fields = [
                (1, [(1, name), (2, 0)]),  # metadata
                (2, [(1, "localhost/alpine:3.20")]),  # image
                *((3, a) for a in argv),  # command
                (11, f"{name}.log"),
            ]
            created = c.call("CreateContainer", [(1, pod), (2, config), (3, sandbox_config)])
            ids.append(created[1][0].decode())
            c.call("StartContainer", [(1, ids[-1])])
        for cid in ids:
            # the same netns as the pause container's (joined by path), the pod IP on eth0
            assert _exec_sync(c, cid, "readlink", "/proc/self/ns/net") == (0, pod_netns + "\n")
            code, addr = _exec_sync(c, cid, "ip", "-4", "addr", "show", "eth0")
            assert code == 0 and f"inet {pod_ip}/{net.subnet.prefixlen} " in addr, addr
            code, lo = _exec_sync(c, cid, "ip", "link", "show", "lo")
            assert code == 0 and "UP" in lo.split("<", 1)[1].split(">", 1)[0], lo  # loopback
            code, ping = _exec_sync(c, cid, "ping", "-c", "1", "-W", "5", net.gateway)
            assert code == 0 and "1 packets received" in ping, ping
        # the host reaches the pod over the bridge (the veth is on it)
        veths = subprocess.run(["ip", "-o", "link", "show", "master", net.name],
                               capture_output=True, text=True).stdout  # fmt: skip
        assert veths.strip(), f"no veth on bridge {net.name}"
        assert _tcp_read(pod_ip, patience=30) == b"hello from the pod\n"

        for cid in ids:
            c.call("StopContainer", [(1, cid), (2, 2)])
            c.call("RemoveContainer", [(1, cid)])
        c.call("StopPodSandbox", [(1, pod)])
        stopped = True
        # stop releases the network: the lease, the netns, the veth
        assert not (net.ipam_dir / net.name / pod_ip).exists()
        assert not Path(netns[0]).exists()
        veths = subprocess.run(["ip", "-o", "link", "show", "master", net.name],
                               capture_output=True, text=True).stdout  # fmt: skip
        assert veths.strip() == ""
        # control for the connection above: the pod's address no longer answers
        with pytest.raises(OSError):
            _tcp_read(pod_ip, patience=0)
    finally:
        if not stopped:
            c.call("StopPodSandbox", [(1, pod)])
        c.call("RemovePodSandbox", [(1, pod)])
    assert _iptables_rules_naming(net.name, str(net.subnet)) == []  # ipMasq false: none made
    deadline = time.monotonic() + 10
    while list(runc_root.iterdir()):
        assert time.monotonic() < deadline, f"cove-runc state left: {list(runc_root.iterdir())}"
        time.sleep(0.1)
