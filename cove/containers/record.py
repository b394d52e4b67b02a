"""The Docker-shaped configuration a container's record keeps (Config, HostConfig, the
log driver's options), made once at create.
"""

from __future__ import annotations

from typing import Any

from cove.errors import InvalidSpec


def log_config(opts: list[str]) -> dict[str, Any]:
    from cove import bundle as ctr

    cfg: dict[str, str] = {}
    out: dict[str, Any] = {"Type": "json-file", "Config": cfg, "MaxSize": 0, "MaxFile": 1}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq:
            raise InvalidSpec(f"invalid log option {o!r}: want KEY=VALUE")
        if key == "max-size":
            out["MaxSize"] = ctr.parse_size(value, "max-size")
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
