"""What a virtual machine is made of: pure data, parsed from flags, no I/O.

A ``VMSpec`` is what ``cove vm create`` records; ``cove.vm.qemu`` turns it, plus the
paths of the VM's state directory and the accelerator chosen at start, into one QEMU
command line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from cove.errors import InvalidSpec

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
ACCELS = ("auto", "kvm", "tcg")
DISPLAYS = ("none", "vnc")
DISK_FORMATS = ("raw", "qcow2")


def parse_bytes(text: str, *, default_unit: str = "") -> int:
    """``1G``, ``512M``, ``1.5g``, ``2048`` (in ``default_unit``): bytes, binary units."""
    m = _SIZE.match(text.strip())
    if not m:
        raise InvalidSpec(f"invalid size {text!r}: want a number with K, M, G or T")
    unit = (m.group(2) or default_unit).lower()
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InvalidSpec(f"invalid size {text!r}: must be positive")
    return value


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidSpec(
            f"invalid vm name {name!r}: want [a-zA-Z0-9][a-zA-Z0-9_.-], at most 63 characters"
        )
    return name


@dataclass(frozen=True)
class PortForward:
    """``-p [IP:]HOST:GUEST[/udp]``: a user-mode network host forward."""

    host_ip: str
    host_port: int
    guest_port: int
    proto: str = "tcp"

    @classmethod
    def parse(cls, text: str) -> PortForward:
        body, _, proto = text.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp"):
            raise InvalidSpec(f"invalid port forward {text!r}: protocol must be tcp or udp")
        parts = body.rsplit(":", 2)
        if len(parts) == 2:
            ip, (host, guest) = "127.0.0.1", parts
        elif len(parts) == 3:
            ip, host, guest = parts
        else:
            raise InvalidSpec(f"invalid port forward {text!r}: want [IP:]HOST:GUEST[/udp]")
        try:
            ipaddress.IPv4Address(ip or "0.0.0.0")
            hp, gp = int(host), int(guest)
        except ValueError as e:
            raise InvalidSpec(f"invalid port forward {text!r}: {e}") from e
        if not (0 < hp < 65536 and 0 < gp < 65536):
            raise InvalidSpec(f"invalid port forward {text!r}: ports are 1-65535")
        return cls(ip, hp, gp, proto)

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}:{self.guest_port}/{self.proto}"


@dataclass
class VMSpec:
    """A VM as created: what it boots, its resources, its devices."""

    name: str
    memory_mib: int = 1024
    cpus: int = 2
    disk_size: int | None = None  # bytes of a new disk (or the size an image grows to)
    disk_image: str | None = None  # a base image the VM's disk overlays, never written
    # the base image's format: as declared (--disk-format), else as verified at create
    disk_format: str | None = None
    # files outside cove's vm directory the base image's backing chain may name
    allow_backing: list[str] = field(default_factory=list)
    iso: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    cloud_init: str | None = None  # the user's user-data file
    ssh_key: str | None = None  # a public key file
    user: str | None = None
    network: str = "user"  # user | none | a cove network
    ports: list[PortForward] = field(default_factory=list)
    display: str = "none"
    accel: str = "auto"
    arch: str = ""  # the guest's CPU (uname -m: x86_64, aarch64); "" the host's

    def validate(self) -> VMSpec:
        check_name(self.name)
        if self.memory_mib < 16:
            raise InvalidSpec(f"vm {self.name}: --memory must be at least 16M")
        if not 1 <= self.cpus <= 255:
            raise InvalidSpec(f"vm {self.name}: --cpus must be 1-255")
        if self.arch not in ("", "x86_64", "aarch64"):
            raise InvalidSpec(f"unsupported vm architecture {self.arch!r}: want x86_64 or aarch64")
        if self.accel not in ACCELS:
            raise InvalidSpec(f"invalid --accel {self.accel!r}: want auto, kvm or tcg")
        if self.display not in DISPLAYS:
            raise InvalidSpec(f"invalid --display {self.display!r}: want none or vnc")
        if self.initrd and not self.kernel:
            raise InvalidSpec("--initrd needs --kernel")
        if self.append and not self.kernel:
            raise InvalidSpec("--append needs --kernel")
        if not (self.kernel or self.iso or self.disk_image or self.disk_size):
            raise InvalidSpec(
                f"vm {self.name} has nothing to boot: give --kernel, --iso, --disk-image or --disk"
            )
        if self.disk_format is not None and self.disk_format not in DISK_FORMATS:
            raise InvalidSpec(f"invalid --disk-format {self.disk_format!r}: want raw or qcow2")
        if (self.disk_format or self.allow_backing) and not self.disk_image:
            raise InvalidSpec("--disk-format and --allow-backing need --disk-image")
        if self.ports and self.network != "user":
            raise InvalidSpec("-p forwards ports of user-mode networking: use --network user")
        return self

    @property
    def boot(self) -> str:
        """How it boots: 'kernel' (direct), 'iso' (firmware from the CD), or 'disk'."""
        if self.kernel:
            return "kernel"
        return "iso" if self.iso else "disk"

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ports"] = [str(p) for p in self.ports]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> VMSpec:
        doc = dict(doc)
        doc["ports"] = [PortForward.parse(p) for p in doc.get("ports", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})
