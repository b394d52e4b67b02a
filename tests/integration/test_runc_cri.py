"""Kubernetes' CRI, as kubelet calls it, with cove-runc as containerd's default runtime
through the config's ``BinaryName`` (issue 18): gRPC from Python (grpcio) to containerd
1.6's CRI plugin, with the project's own minimal protobuf encoder for the few messages of
``runtime.v1`` used (field numbers from kubernetes/cri-api api.proto are the interface).

The pod uses the host's network namespace (NamespaceMode NODE), so no CNI network is set up
and nothing outside the test's own containerd is touched; the sandbox ("pause") image is
built locally from the shared Alpine rootfs."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
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


# CRI enums (api.proto): NamespaceMode NODE = 2; ContainerState
NODE = 2
CONTAINER_RUNNING, CONTAINER_EXITED = 1, 2


@pytest.fixture
def cri() -> Iterator[tuple[Containerd, CRI]]:
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/test-deps.sh installs it")
    base = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))
    cd = Containerd(base, ns="k8s.io")  # the CRI plugin's namespace
    (base / "cni").mkdir()
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
    bin_dir = "/usr/lib/cni"
    conf_dir = "{base}/cni"
"""
    client: CRI | None = None
    try:
        cd.start(extra)
        cd.ctr("image", "import", "--base-name", "localhost/alpine", str(alpine_oci_archive(base)))
        pause = alpine_oci_archive(base, "1", {"Cmd": ["sleep", "2147483647"]})
        cd.ctr("image", "import", "--base-name", "localhost/pause", str(pause))
        client = CRI(cd.sock)
        yield cd, client
    finally:
        if client is not None:
            client.channel.close()
        forced = [x for x in cd.stop() if not x.startswith("mount ")]
        shutil.rmtree(base, ignore_errors=True)
        assert not forced, f"the test left these behind: {forced}"


def test_cri_pod_lifecycle_through_cove_runc(cri: tuple[Containerd, CRI]) -> None:
    cd, c = cri
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
