"""The handshake every client makes: ``/_ping``, ``/version``, ``/info``."""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from typing import Any

from cove import __version__
from cove.api.server import API_VERSION, MIN_API_VERSION, Request, Response

_PING_HEADERS = {
    "Builder-Version": "1",  # the legacy builder only (no BuildKit)
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}


def ping(req: Request) -> Response:
    return Response(200, raw=b"OK", content_type="text/plain; charset=utf-8", headers=_PING_HEADERS)


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def version(req: Request) -> Response:
    kernel = platform.release()
    # Platform.Name must not say "podman": testcontainers' is_podman() keys off it
    return Response(
        200,
        {
            "Platform": {"Name": "cove"},
            "Components": [
                {
                    "Name": "Engine",
                    "Version": __version__,
                    "Details": {
                        "ApiVersion": API_VERSION,
                        "MinAPIVersion": MIN_API_VERSION,
                        "Os": "linux",
                        "Arch": _arch(),
                        "KernelVersion": kernel,
                        "Experimental": "false",
                    },
                }
            ],
            "Version": __version__,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": f"python{platform.python_version()}",
            "Os": "linux",
            "Arch": _arch(),
            "KernelVersion": kernel,
            "BuildTime": "",
        },
    )


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "linux"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def info(req: Request) -> Response:
    from cove.runtime.cgroups import read_layout

    records = req.ce.all()
    counts = {"running": 0, "paused": 0}
    for rec in records:
        if rec.status.value in counts:
            counts[rec.status.value] += 1
    running = counts["running"]
    paused = counts["paused"]
    layout = read_layout()
    doc: dict[str, Any] = {
        "ID": _host_id(req.root),
        "Containers": len(records),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": len(records) - running - paused,
        "Images": len(req.engine.images.images()),
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "overlay"]],
        "DockerRootDir": req.root,
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "host", "none"],
            "Authorization": [],
            "Log": ["json-file"],
        },
        "MemoryLimit": True,
        "SwapLimit": True,
        "KernelMemory": False,
        "KernelMemoryTCP": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "OomKillDisable": False,
        "IPv4Forwarding": True,
        "BridgeNfIptables": False,
        "BridgeNfIp6tables": False,
        "Debug": False,
        "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": threading.active_count(),
        "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "2" if layout.pure_v2 else "1",
        "NEventsListener": 0,
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {
                "docker.io": {"Name": "docker.io", "Mirrors": [], "Secure": True, "Official": True}
            },
            "Mirrors": [],
        },
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "GenericResources": [],
        "HttpProxy": os.environ.get("HTTP_PROXY", ""),
        "HttpsProxy": os.environ.get("HTTPS_PROXY", ""),
        "NoProxy": os.environ.get("NO_PROXY", ""),
        "Name": socket.gethostname(),
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": __version__,
        "Runtimes": {"cove": {"path": "cove"}},
        "DefaultRuntime": "cove",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        # containers outlive the server (each has its own monitor), as with live-restore
        "LiveRestoreEnabled": True,
        "Isolation": "default",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": ["name=seccomp,profile=default"],
        "Warnings": [],
    }
    return Response(200, doc)


def _host_id(root: str) -> str:
    """A stable id for this engine: the state root's, as dockerd keeps one in its root."""
    import hashlib

    return hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:48].upper()


ROUTES = [
    ("GET", r"/_ping", ping),
    ("HEAD", r"/_ping", ping),
    ("GET", r"/version", version),
    ("GET", r"/info", info),
]
