"""OCI runtime-spec v1.1 config (``config.json``) types. Pure data: no I/O.

Python names are snake_case; JSON names are the spec's camelCase (with the
spec's own exceptions such as ``containerID``). Unknown JSON keys are ignored
on read; empty optional values are omitted on write.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from cove.errors import InvalidSpec

OCI_VERSION = "1.1.0"

_RENAMES = {"container_id": "containerID", "host_id": "hostID", "oom_score_adj": "oomScoreAdj"}


def _camel(name: str) -> str:
    if name in _RENAMES:
        return _RENAMES[name]
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


def to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if (
                value is None
                or value == []
                or value == {}
                or (value is False and f.default is False)
            ):
                if f.metadata.get("keep") is None:
                    continue
            out[f.metadata.get("json", _camel(f.name))] = to_json(value)
        return out
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise InvalidSpec(f"config.json: {where} must be a list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidSpec(f"config.json: {where} must be an object")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidSpec(f"config.json: {where} must be an integer")
    if tp is str and not isinstance(value, str):
        raise InvalidSpec(f"config.json: {where} must be a string")
    if tp is bool and not isinstance(value, bool):
        raise InvalidSpec(f"config.json: {where} must be a boolean")
    return value


def from_json(cls: Any, doc: Any, where: str = "") -> Any:
    if not isinstance(doc, dict):
        raise InvalidSpec(f"config.json: {where or cls.__name__} must be an object")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get("json", _camel(f.name))
        if key in doc:
            kwargs[f.name] = _convert(hints[f.name], doc[key], f"{where}.{key}".lstrip("."))
    return cls(**kwargs)


@dataclass
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: list[int] = field(default_factory=list)
    username: str = ""


@dataclass
class Capabilities:
    bounding: list[str] = field(default_factory=list)
    effective: list[str] = field(default_factory=list)
    inheritable: list[str] = field(default_factory=list)
    permitted: list[str] = field(default_factory=list)
    ambient: list[str] = field(default_factory=list)


@dataclass
class Rlimit:
    type: str
    hard: int
    soft: int


@dataclass
class Box:
    height: int = 0
    width: int = 0


@dataclass
class Process:
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    terminal: bool = False
    console_size: Box | None = None
    user: User = field(default_factory=User, metadata={"keep": True})
    capabilities: Capabilities | None = None
    rlimits: list[Rlimit] = field(default_factory=list)
    no_new_privileges: bool = False
    oom_score_adj: int | None = None


@dataclass
class Root:
    path: str = "rootfs"
    readonly: bool = False


@dataclass
class Mount:
    destination: str
    type: str = ""
    source: str = ""
    options: list[str] = field(default_factory=list)


@dataclass
class Namespace:
    type: str
    path: str = ""


@dataclass
class IDMapping:
    container_id: int
    host_id: int
    size: int


@dataclass
class Memory:
    limit: int | None = None
    swap: int | None = None


@dataclass
class CPU:
    shares: int | None = None
    quota: int | None = None
    period: int | None = None
    cpus: str = ""
    mems: str = ""


@dataclass
class Pids:
    limit: int = 0


@dataclass
class DeviceRule:
    allow: bool
    type: str = "a"
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"


@dataclass
class Resources:
    memory: Memory | None = None
    cpu: CPU | None = None
    pids: Pids | None = None
    devices: list[DeviceRule] = field(default_factory=list)


@dataclass
class SeccompArg:
    index: int
    value: int
    op: str
    value_two: int = 0


@dataclass
class SeccompSyscall:
    names: list[str]
    action: str
    args: list[SeccompArg] = field(default_factory=list)
    errno_ret: int | None = None


@dataclass
class Seccomp:
    default_action: str
    architectures: list[str] = field(default_factory=list)
    syscalls: list[SeccompSyscall] = field(default_factory=list)
    default_errno_ret: int | None = None


@dataclass
class Device:
    path: str
    type: str
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0


@dataclass
class Linux:
    namespaces: list[Namespace] = field(default_factory=list)
    uid_mappings: list[IDMapping] = field(default_factory=list)
    gid_mappings: list[IDMapping] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    cgroups_path: str = ""
    resources: Resources | None = None
    rootfs_propagation: str = ""
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    seccomp: Seccomp | None = None
    sysctl: dict[str, str] = field(default_factory=dict)


@dataclass
class Hook:
    path: str
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    timeout: int | None = None


@dataclass
class Hooks:
    """runtime-spec lifecycle hooks (``prestart`` is deprecated but still run, as runc)."""

    prestart: list[Hook] = field(default_factory=list)
    create_runtime: list[Hook] = field(default_factory=list)
    create_container: list[Hook] = field(default_factory=list)
    start_container: list[Hook] = field(default_factory=list)
    poststart: list[Hook] = field(default_factory=list)
    poststop: list[Hook] = field(default_factory=list)


@dataclass
class Spec:
    oci_version: str = OCI_VERSION
    process: Process = field(default_factory=Process)
    root: Root = field(default_factory=Root)
    hostname: str = ""
    domainname: str = ""
    mounts: list[Mount] = field(default_factory=list)
    linux: Linux = field(default_factory=Linux)
    annotations: dict[str, str] = field(default_factory=dict)
    hooks: Hooks | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(to_json(self), indent=2).encode() + b"\n"

    @classmethod
    def parse(cls, data: bytes) -> Spec:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise InvalidSpec(f"config.json is not valid json: {e}") from e
        spec: Spec = from_json(cls, doc)
        if not spec.process.args:
            raise InvalidSpec("config.json: process.args must not be empty")
        return spec

    def namespace(self, kind: str) -> Namespace | None:
        for ns in self.linux.namespaces:
            if ns.type == kind:
                return ns
        return None


NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

# Docker's defaults (moby oci/defaults.go), as facts: the capabilities a container keeps
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip

DEFAULT_MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip

DEFAULT_READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip

# name -> (type, major, minor): the device nodes every container gets
DEFAULT_DEVICES = {
    "/dev/null": ("c", 1, 3), "/dev/zero": ("c", 1, 5), "/dev/full": ("c", 1, 7),
    "/dev/random": ("c", 1, 8), "/dev/urandom": ("c", 1, 9), "/dev/tty": ("c", 5, 0),
}  # fmt: skip
