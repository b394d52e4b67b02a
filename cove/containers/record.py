"""The Docker-shaped configuration a container's record keeps (Config, HostConfig, the
log driver's options), made once at create.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from cove.errors import InvalidSpec


def log_config(opts: list[str]) -> dict[str, Any]:
    from cove.spec import flags

    cfg: dict[str, str] = {}
    out: dict[str, Any] = {"Type": "json-file", "Config": cfg, "MaxSize": 0, "MaxFile": 1}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq:
            raise InvalidSpec(f"invalid log option {o!r}: want KEY=VALUE")
        if key == "max-size":
            out["MaxSize"] = flags.parse_size(value, "max-size")
        elif key == "max-file":
            if not value.isdigit() or int(value) < 1:
                raise InvalidSpec(f"invalid max-file {value!r}: want a positive number")
            out["MaxFile"] = int(value)
        else:
            raise InvalidSpec(f"unknown log opt '{key}' for json-file log driver")
        cfg[key] = value
    return out


def docker_config(
    opts: Any,
    img: Any,
    oci: Any,
    hostname: str,
    restart: dict[str, Any],
    log_cfg: dict[str, Any],
    stop_signal: str,
) -> dict[str, Any]:
    from cove import bundle as ctr

    image_cfg = img.config.config
    labels = dict(image_cfg.get("Labels") or {})
    for label in opts.labels:
        k, _, v = label.partition("=")
        labels[k] = v
    exposed = dict(image_cfg.get("ExposedPorts") or {})
    for e in opts.expose:
        exposed[e if "/" in e else f"{e}/tcp"] = {}
    args = list(oci.process.args)
    entrypoint = (
        (opts.entrypoint.split() if opts.entrypoint else [])
        if opts.entrypoint is not None
        else image_cfg.get("Entrypoint")
    )
    cmd = list(opts.command) if opts.command else image_cfg.get("Cmd")
    hc = ctr.healthcheck(opts, image_cfg)
    res = oci.linux.resources
    config = {
        "Hostname": hostname,
        "Domainname": "",
        "User": opts.user or image_cfg.get("User") or "",
        "AttachStdin": opts.interactive and not opts.detach,
        "AttachStdout": not opts.detach,
        "AttachStderr": not opts.detach,
        "ExposedPorts": exposed or None,
        "Tty": opts.tty,
        "OpenStdin": opts.interactive,
        "StdinOnce": opts.interactive and not opts.detach,
        "Env": oci.process.env,
        "Cmd": cmd,
        "Image": opts.image,
        "Volumes": image_cfg.get("Volumes"),
        "WorkingDir": oci.process.cwd if oci.process.cwd != "/" else "",
        "Entrypoint": entrypoint,
        "Labels": labels,
        "StopSignal": stop_signal,
    }
    if opts.stop_timeout is not None:
        config["StopTimeout"] = opts.stop_timeout
    if hc:
        config["Healthcheck"] = hc
    host = {
        "Binds": list(opts.volumes) or None,
        "LogConfig": log_cfg,
        "NetworkMode": opts.network,
        "PortBindings": {},
        "RestartPolicy": restart,
        "AutoRemove": opts.rm,
        "VolumesFrom": list(opts.volumes_from) or None,
        "CapAdd": list(opts.cap_add) or None,
        "CapDrop": list(opts.cap_drop) or None,
        "Init": opts.init,
        "Privileged": opts.privileged,
        "ReadonlyRootfs": opts.read_only,
        "SecurityOpt": list(opts.security_opt) or None,
        "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in opts.tmpfs} or None,
        "Memory": res.memory.limit if res and res.memory and res.memory.limit else 0,
        "NanoCpus": int(float(opts.cpus) * 1e9) if opts.cpus else 0,
        "PidsLimit": opts.pids_limit,
        "Mounts": list(opts.mounts) or None,
    }
    return {
        "Config": config,
        "HostConfig": host,
        "Path": args[0],
        "Args": args[1:],
    }


# -- the typed view the core reads ----------------------------------------------------
#
# The record keeps Docker's shape on disk (state.db's config column and record.json): rows
# written by every older version load as they are, and a monitor started by older code
# still reads the row it expects after an upgrade. The core reads this typed view of it;
# Docker's inspect JSON is made from the stored document at the edge (inspect.py).

_SECOND = 1_000_000_000


@dataclass(frozen=True)
class Healthcheck:
    """Docker's HEALTHCHECK (durations in ns, 0 meaning Docker's default)."""

    test: list[str]
    interval_ns: int = 0
    timeout_ns: int = 0
    start_period_ns: int = 0
    retries: int = 0

    @property
    def disabled(self) -> bool:
        return not self.test or self.test[0] == "NONE"

    @property
    def interval(self) -> float:
        return (self.interval_ns or 30 * _SECOND) / _SECOND

    @property
    def timeout(self) -> float:
        return (self.timeout_ns or 30 * _SECOND) / _SECOND

    @property
    def start_period(self) -> float:
        return self.start_period_ns / _SECOND

    @property
    def max_retries(self) -> int:
        return self.retries or 3

    def argv(self) -> list[str]:
        """The check's command: CMD-SHELL through /bin/sh -c, CMD as given."""
        if self.test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", self.test[1]]
        return self.test[1:]

    @classmethod
    def from_docker(cls, doc: dict[str, Any] | None) -> Healthcheck | None:
        if not doc:
            return None
        return cls(
            list(doc.get("Test") or []),
            int(doc.get("Interval") or 0),
            int(doc.get("Timeout") or 0),
            int(doc.get("StartPeriod") or 0),
            int(doc.get("Retries") or 0),
        )

    def to_docker(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval_ns),
            ("Timeout", self.timeout_ns),
            ("StartPeriod", self.start_period_ns),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True)
class PortBinding:
    """One ``-p``: ``host_port`` is Docker's string ("8080", "8000-8010", "" for any)."""

    host_ip: str
    host_port: str


@dataclass(frozen=True)
class NetworkAttachment:
    """A network the container joins: the run's own one, or one ``network connect`` added."""

    network: str
    aliases: list[str] = field(default_factory=list)
    ipv4_address: str | None = None


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)  # type: ignore[assignment]
    return doc


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        nxt = doc.get(key)
        if not isinstance(nxt, dict):
            nxt = doc[key] = {}
        doc = nxt
    doc[path[-1]] = value


def _ports_in(v: Any) -> dict[str, list[PortBinding]]:
    return {k: [PortBinding(b.get("HostIp") or "", str(b.get("HostPort") or ""))
                for b in binds or []]
            for k, binds in (v or {}).items()}  # fmt: skip


def _ports_out(v: dict[str, list[PortBinding]]) -> dict[str, Any]:
    return {k: [{"HostIp": b.host_ip, "HostPort": b.host_port} for b in bs] for k, bs in v.items()}


def _extra_in(v: Any) -> list[NetworkAttachment]:
    return [
        NetworkAttachment(e["Network"], list(e.get("Aliases") or []), e.get("IPv4Address"))
        for e in v or []
    ]


def _extra_out(v: list[NetworkAttachment]) -> list[dict[str, Any]]:
    return [{"Network": a.network, "Aliases": list(a.aliases), "IPv4Address": a.ipv4_address}
            for a in v]  # fmt: skip


def _same(v: Any) -> Any:
    return v


def _text(v: Any) -> str:
    return str(v or "")


def _flag(v: Any) -> bool:
    return bool(v)


def _strings(v: Any) -> list[str]:
    return [str(x) for x in v or []]


def _optional_strings(v: Any) -> list[str] | None:
    return None if v is None else [str(x) for x in v]


def _labels(v: Any) -> dict[str, str]:
    return {str(k): str(x) for k, x in (v or {}).items()}


def _keys(v: Any) -> list[str]:
    return list(v or {})


def _keys_out(v: list[str]) -> dict[str, Any] | None:
    return {k: {} for k in v} or None


def _int0(v: Any) -> int:
    return int(v or 0)


def _health_out(v: Healthcheck | None) -> dict[str, Any] | None:
    return v.to_docker() if v is not None else None


# attribute -> (where Docker keeps it, read from Docker, write to Docker)
_FIELDS: dict[str, tuple[tuple[str, ...], Any, Any]] = {
    "image": (("Config", "Image"), _text, _same),
    "hostname": (("Config", "Hostname"), _text, _same),
    "user": (("Config", "User"), _text, _same),
    "workdir": (("Config", "WorkingDir"), _text, _same),
    "env": (("Config", "Env"), _strings, _same),
    "cmd": (("Config", "Cmd"), _optional_strings, _same),
    "entrypoint": (("Config", "Entrypoint"), _optional_strings, _same),
    "tty": (("Config", "Tty"), _flag, _same),
    "open_stdin": (("Config", "OpenStdin"), _flag, _same),
    "stdin_once": (("Config", "StdinOnce"), _flag, _same),
    "labels": (("Config", "Labels"), _labels, _same),
    "exposed_ports": (("Config", "ExposedPorts"), _keys, _keys_out),
    "stop_signal": (("Config", "StopSignal"), lambda v: str(v or "SIGTERM"), _same),
    "stop_timeout": (("Config", "StopTimeout"), lambda v: None if v is None else int(v), _same),
    "healthcheck": (("Config", "Healthcheck"), Healthcheck.from_docker, _health_out),
    "path": (("Path",), _text, _same),
    "args": (("Args",), _strings, _same),
    "restart_policy": (("HostConfig", "RestartPolicy", "Name"), lambda v: str(v or "no"), _same),
    "restart_max": (("HostConfig", "RestartPolicy", "MaximumRetryCount"), _int0, _same),
    "auto_remove": (("HostConfig", "AutoRemove"), _flag, _same),
    "log_max_size": (("HostConfig", "LogConfig", "MaxSize"), lambda v: int(v or 0), _same),
    "log_max_file": (("HostConfig", "LogConfig", "MaxFile"), lambda v: int(v or 1), _same),
    "network_mode": (("HostConfig", "NetworkMode"), lambda v: str(v or "none"), _same),
    "port_bindings": (("HostConfig", "PortBindings"), _ports_in, _ports_out),
    "publish_all": (("HostConfig", "PublishAllPorts"), _flag, _same),
    "dns": (("HostConfig", "Dns"), _strings, _same),
    "extra_hosts": (("HostConfig", "ExtraHosts"), _strings, _same),
    "isolation": (("HostConfig", "Isolation"), _text, _same),
    "mounts": (("Mounts",), lambda v: copy.deepcopy(list(v or [])), _same),
    "aliases": (("NetworkingConfig", "Aliases"), _strings, _same),
    "ipv4_address": (("NetworkingConfig", "IPv4Address"), lambda v: v or None, _same),
    "primary_detached": (("NetworkingConfig", "PrimaryDetached"), _flag, _same),
    "extra_networks": (("NetworkingConfig", "Extra"), _extra_in, _extra_out),
    "network_settings": (("NetworkSettings",), lambda v: copy.deepcopy(dict(v or {})), _same),
}


@dataclass
class ContainerConfig:
    """What the core reads of a container's configuration, typed. ``from_docker`` reads a
    stored document of any version (missing keys take Docker's defaults); ``to_docker``
    gives the document back with changed fields written into their Docker places and
    everything else (keys this view does not model, absent keys left absent) as it was."""

    image: str = ""
    hostname: str = ""
    user: str = ""
    workdir: str = ""
    env: list[str] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None
    healthcheck: Healthcheck | None = None
    path: str = ""
    args: list[str] = field(default_factory=list)
    restart_policy: str = "no"
    restart_max: int = 0
    auto_remove: bool = False
    log_max_size: int = 0
    log_max_file: int = 1
    network_mode: str = "none"
    port_bindings: dict[str, list[PortBinding]] = field(default_factory=dict)
    publish_all: bool = False
    dns: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)
    isolation: str = ""
    mounts: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    ipv4_address: str | None = None
    primary_detached: bool = False
    extra_networks: list[NetworkAttachment] = field(default_factory=list)
    network_settings: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def health_enabled(self) -> bool:
        return self.healthcheck is not None and not self.healthcheck.disabled

    @classmethod
    def from_docker(cls, doc: dict[str, Any]) -> ContainerConfig:
        values = {name: read(_get(doc, path)) for name, (path, read, _w) in _FIELDS.items()}
        return cls(**values, raw=doc)

    def to_docker(self) -> dict[str, Any]:
        out = copy.deepcopy(self.raw)
        for name, (path, read, write) in _FIELDS.items():
            value = getattr(self, name)
            if value != read(_get(self.raw, path)):
                _set(out, path, write(value))
        return out


def config_of(rec: Any) -> ContainerConfig:
    """The typed configuration of a container record (``state.Record``)."""
    return ContainerConfig.from_docker(rec.config)
