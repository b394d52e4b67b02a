"""``/containers/...``: every handler parses the request, calls the container engine as the
CLI does, and shapes Docker's answer. Attach (hijacked) and the start that hands a
pending attach to the new monitor live here too; exec is in ``execs``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import socket
import threading
import time
from typing import Any

from cove.api import launch
from cove.api.server import ApiError, NotModified, Request, Response, write_all
from cove.errors import CoveError, NotFound

# -- create -----------------------------------------------------------------------------


def _norm_image(name: str) -> str:
    """The name as Docker's 404 says it: a tag added when none is given."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in name else f"{name}:latest"


def _ns_to_duration(ns: Any) -> str | None:
    return f"{int(ns) / 1e9:g}s" if ns else None


def run_options(body: dict[str, Any], name: str | None, platform: str | None) -> Any:
    """A create request's body as the CLI's ``RunOptions``: the engine sees one shape."""
    from cove.bundle import RunOptions

    hc = body.get("HostConfig") or {}
    image = body.get("Image") or ""
    if not image:
        raise ApiError(400, "config cannot be empty in order to create a container")
    cmd = body.get("Cmd")
    command = [cmd] if isinstance(cmd, str) else list(cmd or [])
    ep = body.get("Entrypoint")
    entrypoint: str | None = None
    if isinstance(ep, str):
        entrypoint = ep
    elif isinstance(ep, list):
        entrypoint = shlex.join(ep) if ep != [""] else ""
    labels = [f"{k}={v}" for k, v in (body.get("Labels") or {}).items()]
    publish = []
    for port, binds in (hc.get("PortBindings") or {}).items():
        for b in binds or [{}]:
            ip = (b or {}).get("HostIp") or ""
            host = (b or {}).get("HostPort") or ""
            publish.append(f"{ip}:{host}:{port}" if ip else f"{host}:{port}" if host else port)
    restart = "no"
    rp = hc.get("RestartPolicy") or {}
    if rp.get("Name"):
        restart = rp["Name"]
        if restart == "on-failure" and rp.get("MaximumRetryCount"):
            restart += f":{rp['MaximumRetryCount']}"
    mounts = []
    for m in hc.get("Mounts") or []:
        parts = [f"type={m.get('Type') or 'volume'}"]
        if m.get("Source"):
            parts.append(f"source={m['Source']}")
        parts.append(f"target={m.get('Target')}")
        if m.get("ReadOnly"):
            parts.append("readonly")
        mounts.append(",".join(parts))
    network = hc.get("NetworkMode") or "bridge"
    if network == "default":
        network = "bridge"
    aliases: list[str] = []
    ip = None
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for net, ep_cfg in endpoints.items():
        if net in (network,) or len(endpoints) == 1:
            aliases = list((ep_cfg or {}).get("Aliases") or [])
            ip = ((ep_cfg or {}).get("IPAMConfig") or {}).get("IPv4Address") or None
    health = body.get("Healthcheck") or {}
    test = health.get("Test") or []
    health_cmd = None
    no_health = bool(test) and test[0] == "NONE"
    if test and test[0] == "CMD-SHELL":
        health_cmd = test[1] if len(test) > 1 else ""
    elif test and test[0] == "CMD":
        health_cmd = shlex.join(test[1:])
    log = hc.get("LogConfig") or {}
    if log.get("Type") not in (None, "", "json-file"):
        raise ApiError(400, f"logging driver {log['Type']} is not supported: json-file only")
    nano = hc.get("NanoCpus")
    return RunOptions(
        image=image,
        command=command,
        entrypoint=entrypoint,
        env=list(body.get("Env") or []),
        workdir=body.get("WorkingDir") or None,
        user=body.get("User") or None,
        group_add=list(hc.get("GroupAdd") or []),
        name=name,
        hostname=body.get("Hostname") or None,
        rm=bool(hc.get("AutoRemove")),
        tty=bool(body.get("Tty")),
        interactive=bool(body.get("OpenStdin")),
        volumes=list(hc.get("Binds") or []),
        tmpfs=[f"{k}:{v}" if v else k for k, v in (hc.get("Tmpfs") or {}).items()],
        read_only=bool(hc.get("ReadonlyRootfs")),
        init=bool(hc.get("Init")),
        network=network,
        network_aliases=aliases,
        ip=ip,
        publish_all=bool(hc.get("PublishAllPorts")),
        dns=list(hc.get("Dns") or []),
        add_hosts=list(hc.get("ExtraHosts") or []),
        pid=hc.get("PidMode") or "",
        ipc=hc.get("IpcMode") or "",
        uts=hc.get("UTSMode") or "",
        userns=hc.get("UsernsMode") or "",
        cap_add=list(hc.get("CapAdd") or []),
        cap_drop=list(hc.get("CapDrop") or []),
        privileged=bool(hc.get("Privileged")),
        security_opt=list(hc.get("SecurityOpt") or []),
        memory=str(hc["Memory"]) if hc.get("Memory") else None,
        memory_swap=str(hc["MemorySwap"]) if hc.get("MemorySwap") else None,
        cpus=f"{int(nano) / 1e9:g}" if nano else None,
        cpu_shares=hc.get("CpuShares") or None,
        cpuset_cpus=hc.get("CpusetCpus") or None,
        pids_limit=hc.get("PidsLimit") or None,
        devices=[
            f"{d['PathOnHost']}:{d.get('PathInContainer') or d['PathOnHost']}"
            f":{d.get('CgroupPermissions') or 'rwm'}"
            for d in hc.get("Devices") or []
        ],
        ulimits=[f"{u['Name']}={u['Soft']}:{u['Hard']}" for u in hc.get("Ulimits") or []],
        platform=platform or None,
        labels=labels,
        mounts=mounts,
        volumes_from=list(hc.get("VolumesFrom") or []),
        restart=restart,
        health_cmd=health_cmd,
        health_interval=_ns_to_duration(health.get("Interval")),
        health_timeout=_ns_to_duration(health.get("Timeout")),
        health_retries=health.get("Retries") or None,
        health_start_period=_ns_to_duration(health.get("StartPeriod")),
        no_healthcheck=no_health,
        log_opts=[f"{k}={v}" for k, v in (log.get("Config") or {}).items()],
        stop_signal=body.get("StopSignal") or None,
        stop_timeout=body.get("StopTimeout"),
        expose=list((body.get("ExposedPorts") or {}).keys()),
        publish=publish,
        pull="never",  # the API never pulls on create: a 404 makes the client pull
    )


def create(req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid JSON body: an object is wanted")
    opts = run_options(body, req.arg("name") or None, req.arg("platform"))
    try:
        req.engine.image(opts.image)
    except NotFound as e:
        # docker CLI, docker-py and testcontainers pull only on a 404 saying exactly this
        raise ApiError(404, f"No such image: {_norm_image(opts.image)}") from e
    cid = req.ce.create(opts)
    return Response(201, {"Id": cid, "Warnings": []})


# -- start and attach (a pending attach is handed to the monitor at start) -----------------


class _Pending:
    """An attach to a container not yet started: its end of a socketpair goes to the
    monitor at start, so it sees all output from the first byte."""

    def __init__(self) -> None:
        self.mine, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.handed = threading.Event()
        self.first = False  # the start gave ``theirs`` to the monitor


_pending: dict[str, list[_Pending]] = {}
_pending_lock = threading.Lock()


def start(req: Request) -> Response:
    from cove.runtime.api import ContainerStartError
    from cove.state import Status

    rec = req.ce.get(req.params["id"])
    if rec.status in (Status.RUNNING, Status.RESTARTING):
        raise NotModified()
    with _pending_lock:
        waiting = _pending.pop(rec.id, [])
        first = waiting[0] if waiting else None
        if first is not None:
            first.first = True  # under the lock: its attach must wait for the hand-off
    try:
        # never forked from this threaded process (the engine's start forks): the fork
        # helper's child runs it, or a fresh launcher process when no helper can
        launch.start(req.root, rec.id, first.theirs.fileno() if first else -1)
    except ContainerStartError as e:
        if rec.config.get("HostConfig", {}).get("AutoRemove"):
            # as dockerd: a container that was to go at its exit goes when it cannot start
            # (``docker run --rm`` waits for condition=removed before it reports the error)
            with contextlib.suppress(CoveError):
                req.ce.remove(rec.id, force=True, volumes=True)
        # the docker CLI maps the texts ("executable file not found", "permission
        # denied") to its exit codes 127 and 126
        raise ApiError(400 if e.exit_code in (126, 127) else 500, str(e)) from e
    finally:
        if first is not None:
            first.theirs.close()
        for p in waiting:
            p.handed.set()
    return Response(204)


def _claim(req: Request, cid: str) -> socket.socket | _Pending:
    """Before the 101 goes out (the client sends start as soon as it has it): the
    monitor's socket if the container runs, else a place in the next start's hand-off."""
    from cove.containers.attach import connect_attach
    from cove.state import Status

    rec = req.ce.get(cid)
    if rec.status in (Status.RUNNING, Status.PAUSED) and not rec.op:
        return connect_attach(req.ce, rec)  # type: ignore[no-any-return]
    p = _Pending()
    with _pending_lock:
        _pending.setdefault(cid, []).append(p)
    return p


def _await_start(req: Request, cid: str, p: _Pending) -> socket.socket | None:
    """The attach's socket once the container started: the socketpair the start gave the
    monitor, or the monitor's own socket when another attach or command started it; None
    if the client left or the container ran and ended meanwhile."""
    from cove.containers.attach import connect_attach
    from cove.state import Status

    ce = req.ce
    since = time.time()
    try:
        while not p.handed.wait(0.2):
            if req.client_gone():
                return None
            with _pending_lock:
                mine = p.first  # the start under way gives the monitor our socketpair
            if mine:
                continue  # (a fast --rm container may be gone before the start returns)
            try:
                fresh = ce.store.get(cid)
            except NotFound:
                return None
            # started by someone else (another attach's start, the CLI): join the monitor
            if fresh.status in (Status.RUNNING, Status.PAUSED) and not fresh.op:
                with contextlib.suppress(CoveError):
                    return connect_attach(ce, fresh)  # type: ignore[no-any-return]
            if fresh.finished_at >= since and fresh.status == Status.EXITED:
                return None
        if p.first:
            return p.mine
        return connect_attach(ce, ce.store.get(cid))  # type: ignore[no-any-return]
    finally:
        if not p.first:
            p.theirs.close()
            p.mine.close()
        with _pending_lock:
            left = _pending.get(cid, [])
            if p in left:
                left.remove(p)
                if not left:
                    _pending.pop(cid, None)


def attach(req: Request) -> Response | None:
    rec = req.ce.get(req.params["id"])
    tty = bool(rec.config.get("Config", {}).get("Tty"))
    want_in = req.flag("stdin")
    wanted = {1: req.flag("stdout"), 2: req.flag("stderr")}
    if not req.flag("stream") and not req.flag("logs"):
        raise ApiError(400, "either stream or logs must be set")
    claim = _claim(req, rec.id) if req.flag("stream") else None
    try:
        h = req.hijack()
        if req.flag("logs"):
            _replay_logs(req, rec, h, tty, wanted)
        if claim is None:
            h.close_write()
            return None
        sock = _await_start(req, rec.id, claim) if isinstance(claim, _Pending) else claim
        claim = None  # owned by the pump from here
        if sock is not None:
            _pump_attach(sock, h, tty, wanted, want_in)
        else:
            h.close_write()
        return None
    finally:
        if isinstance(claim, socket.socket):
            claim.close()
        elif isinstance(claim, _Pending):
            with _pending_lock:
                left = _pending.get(rec.id, [])
                if claim in left:
                    left.remove(claim)


def _replay_logs(req: Request, rec: Any, h: Any, tty: bool, wanted: dict[int, bool]) -> None:
    from cove.containers.logs import read_logs

    for stream, _ts, line in read_logs(req.ce, rec):
        n = 2 if stream == "stderr" else 1
        if wanted[n]:
            h.send(line) if tty else h.frame(n, line)


def _pump_attach(
    sock: socket.socket, h: Any, tty: bool, wanted: dict[int, bool], want_in: bool
) -> None:
    """Monitor frames to the client (as they are without a TTY, unframed with one); the
    client's input to the monitor, its half-close passed on as ours."""
    from cove.containers.attach import split_frames

    def feed() -> None:
        try:
            while True:
                data = h.read()
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the client's stdin ended: the container's does

    feeder = None
    if want_in:
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    buf = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            frames, buf = split_frames(buf + data)
            for n, frame in frames:
                if wanted[n]:
                    h.send(frame[8:]) if tty else h.send(frame)
    except OSError:
        pass
    finally:
        sock.close()
        h.close_write()


# -- wait, stop, kill, restart, pause, rename, resize, delete -----------------------------


def wait(req: Request) -> Response | None:
    from cove.containers.stop import WAIT_CONDITIONS

    condition = req.arg("condition") or "not-running"
    if condition not in WAIT_CONDITIONS:
        raise ApiError(400, f"invalid condition: {condition!r}")
    rec = req.ce.get(req.params["id"])
    after = time.time()
    # the headers go out now (the CLI sends this before start and waits for them), the
    # body at the exit; an exit the row no longer holds is read from the store's exits
    out = req.stream()
    try:
        code = req.ce.wait(rec.id, after=after, condition=condition)
        # no "Error" key rather than dockerd's null: the swagger types it as an object,
        # and Go clients and docker-py read a missing key as no error
        doc: dict[str, Any] = {"StatusCode": code}
    except CoveError as e:
        doc = {"StatusCode": -1, "Error": {"Message": str(e)}}
    out.json(doc)
    out.close()
    return None


def _timeout(req: Request) -> float | None:
    t = req.int_arg("t")
    return None if t is None else float(t)


def stop(req: Request) -> Response:
    rec = req.ce.get(req.params["id"])
    if not rec.status.can_kill():
        raise NotModified()
    req.ce.stop(rec.id, timeout=_timeout(req))
    return Response(204)


def kill(req: Request) -> Response:
    from cove.spec import flags

    sig = flags.parse_signal(req.arg("signal") or "SIGKILL")
    req.ce.kill(req.params["id"], sig)
    return Response(204)


def restart(req: Request) -> Response:
    """The engine's restart is stop then start: the start (it forks) runs in the fork
    helper's child, or a launcher process when no helper can take it (launch.start)."""
    rec = req.ce.get(req.params["id"])
    if rec.status.can_kill():
        req.ce.stop(rec.id, timeout=_timeout(req))
    launch.start(req.root, rec.id)
    return Response(204)


def pause(req: Request) -> Response:
    req.ce.pause(req.params["id"])
    return Response(204)


def unpause(req: Request) -> Response:
    req.ce.unpause(req.params["id"])
    return Response(204)


def rename(req: Request) -> Response:
    name = req.arg("name")
    if not name:
        raise ApiError(400, "new name is required")
    req.ce.rename(req.params["id"], name)
    return Response(204)


def resize(req: Request) -> Response:
    from cove.containers.attach import resize_tty

    rec = req.ce.get(req.params["id"])
    resize_tty(rec, req.int_arg("h") or 0, req.int_arg("w") or 0)
    return Response(200, raw=b"", content_type="text/plain")


def delete(req: Request) -> Response:
    req.ce.remove(req.params["id"], force=req.flag("force"), volumes=req.flag("v"))
    return Response(204)


def prune(req: Request) -> Response:
    from cove.api.filters import prune_filter

    accepts = prune_filter(req.filters())
    deleted = req.ce.prune(
        lambda rec: accepts(rec.created, (rec.config.get("Config") or {}).get("Labels") or {})
    )
    return Response(200, {"ContainersDeleted": deleted, "SpaceReclaimed": 0})


# -- reads: inspect, list, logs, top, stats, changes, export, archive ---------------------


def _networks(nets: dict[str, Any]) -> dict[str, Any]:
    """Endpoint settings with their unset lists as [] (the record keeps Docker's nulls,
    which the swagger's EndpointSettings types as arrays)."""
    out = {}
    for name, ep in nets.items():
        ep = dict(ep or {})
        for key in ("Aliases", "Links"):
            if ep.get(key) is None:
                ep[key] = []
        out[name] = ep
    return out


# keys the record keeps as Docker's nulls that the 1.41 swagger types as arrays or objects:
# the API answers [] and {} (Go clients and docker-py read both as empty)
_HOST_LISTS = (
    "Binds", "VolumesFrom", "Mounts", "CapAdd", "CapDrop", "ExtraHosts", "SecurityOpt", "Dns",
    "DnsOptions", "DnsSearch", "GroupAdd", "Links", "Devices", "DeviceCgroupRules",
    "DeviceRequests", "Ulimits", "BlkioWeightDevice", "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps", "MaskedPaths",
    "ReadonlyPaths",
)  # fmt: skip
_HOST_OBJECTS = ("Tmpfs", "Sysctls", "StorageOpt", "PortBindings")
_CONFIG_LISTS = ("Entrypoint", "Cmd", "Env", "OnBuild", "Shell")
_CONFIG_OBJECTS = ("ExposedPorts", "Volumes", "Labels")


def _filled(
    section: dict[str, Any], lists: tuple[str, ...], objects: tuple[str, ...]
) -> dict[str, Any]:
    out = dict(section)
    for key in lists:
        if key in out and out[key] is None:
            out[key] = []
    for key in objects:
        if key in out and out[key] is None:
            out[key] = {}
    return out


def inspect(req: Request) -> Response:
    doc = req.ce.inspect(req.params["id"])
    doc["HostConfig"] = _filled(doc.get("HostConfig") or {}, _HOST_LISTS, _HOST_OBJECTS)
    doc["Config"] = _filled(doc.get("Config") or {}, _CONFIG_LISTS, _CONFIG_OBJECTS)
    settings = doc.get("NetworkSettings") or {}
    if settings.get("Networks"):
        doc["NetworkSettings"] = {**settings, "Networks": _networks(settings["Networks"])}
    if req.flag("size"):
        from cove.containers.listing import upper_size

        doc["SizeRw"] = upper_size(req.ce, doc["Id"])
    return Response(200, doc)


def _ports(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ports = (cfg.get("NetworkSettings") or {}).get("Ports") or {}
    for cport, binds in ports.items():
        number, _, proto = cport.partition("/")
        if not binds:
            out.append({"PrivatePort": int(number), "Type": proto or "tcp"})
        for b in binds or []:
            out.append(
                {
                    "IP": b.get("HostIp") or "0.0.0.0",
                    "PrivatePort": int(number),
                    "PublicPort": int(b.get("HostPort") or 0),
                    "Type": proto or "tcp",
                }
            )
    return out


def list_containers(req: Request) -> Response:
    from cove.containers.listing import check_filters, matches, status_text, upper_size

    filters = req.filters()
    check_filters(filters)
    ce = req.ce
    show_all = req.flag("all") or "status" in filters  # dockerd: a status filter implies all
    limit = req.int_arg("limit") or -1
    now = time.time()
    out = []
    for rec in ce.all():
        running = rec.status.value in ("running", "paused", "restarting")
        if not (show_all or running or limit > 0):
            continue
        if not matches(ce, rec, filters):
            continue
        cfg = rec.config
        hc = cfg.get("HostConfig") or {}
        nets = (cfg.get("NetworkSettings") or {}).get("Networks") or {}
        item: dict[str, Any] = {
            "Id": rec.id,
            "Names": ["/" + rec.name],
            "Image": rec.image,
            "ImageID": rec.image_id,
            "Command": " ".join([cfg.get("Path", ""), *cfg.get("Args", [])]).strip(),
            "Created": int(rec.created),
            "Ports": _ports(cfg),
            "Labels": (cfg.get("Config") or {}).get("Labels") or {},
            "State": rec.status.value,
            "Status": status_text(rec, now),
            "HostConfig": {"NetworkMode": hc.get("NetworkMode") or "default"},
            "NetworkSettings": {"Networks": _networks(nets)},
            "Mounts": [
                {k: v for k, v in m.items() if k != "Anonymous"} for m in cfg.get("Mounts", [])
            ],
        }
        if req.flag("size"):
            item["SizeRw"] = upper_size(ce, rec.id)
        out.append(item)
        if 0 < limit <= len(out):
            break
    return Response(200, out)


def logs(req: Request) -> Response | None:
    from cove.containers.logs import parse_when, read_logs

    rec = req.ce.get(req.params["id"])
    want = {1: req.flag("stdout"), 2: req.flag("stderr")}
    if not want[1] and not want[2]:
        raise ApiError(400, "you must choose at least one stream")
    since = req.arg("since")
    until = req.arg("until")
    since = None if since in (None, "", "0") else since
    until = None if until in (None, "", "0") else until
    tail = req.arg("tail") or "all"
    # everything that can fail is checked before the 200: a stream cannot report errors
    parse_when(since, "since")
    parse_when(until, "until")
    if tail not in ("all", "") and not tail.lstrip("-").isdigit():
        raise ApiError(400, f"invalid value for tail: {tail!r}")
    tty = bool(rec.config.get("Config", {}).get("Tty"))
    stamps = req.flag("timestamps")
    out = req.stream(content_type="application/vnd.docker.raw-stream")
    entries = read_logs(req.ce, rec, follow=req.flag("follow"), tail=tail, since=since, until=until)
    for stream, ts, line in entries:
        n = 2 if stream == "stderr" else 1
        if not want[n]:
            continue
        data = (ts.encode() + b" " + line) if stamps else line
        out.write(data if tty else bytes((n, 0, 0, 0)) + len(data).to_bytes(4, "big") + data)
    out.close()
    return None


def top(req: Request) -> Response:
    from cove.containers.listing import top as top_rows

    titles, rows = top_rows(req.ce, req.params["id"], (req.arg("ps_args") or "-ef").split())
    return Response(200, {"Titles": titles, "Processes": rows})


def stats(req: Request) -> Response | None:
    from cove.containers.stats import docker_stats

    rec = req.ce.get(req.params["id"])
    stream = req.flag("stream", True) and not req.flag("one-shot")
    if not stream:
        prior = None
        if not req.flag("one-shot"):
            # precpu_stats from a sample half a second earlier, as ``cove stats`` measures
            prior = docker_stats(req.ce, rec, prior=None)
            time.sleep(0.5)
        return Response(200, docker_stats(req.ce, rec, prior=prior))
    out = req.stream()
    prior = None
    while True:
        doc = docker_stats(req.ce, rec, prior=prior)
        out.json(doc)
        prior = doc
        fresh = req.ce.store.get(rec.id)
        if fresh.status.value not in ("running", "paused", "restarting") or req.client_gone():
            break
        time.sleep(1)
    out.close()
    return None


def changes(req: Request) -> Response:
    from cove.containers.files import diff

    kinds = {"C": 0, "A": 1, "D": 2}
    rows = [{"Path": path, "Kind": kinds[kind]} for kind, path in diff(req.ce, req.params["id"])]
    return Response(200, rows)


class _ChunkFile:
    """A chunked response as a write-only file (tarfile's stream mode)."""

    def __init__(self, req: Request, content_type: str, headers: dict[str, str] | None = None):
        self.req = req
        self.content_type = content_type
        self.headers = headers
        self.out: Any = None
        self.gone = False

    def write(self, data: bytes) -> int:
        if self.out is None:
            self.out = self.req.stream(content_type=self.content_type)
        if not self.gone:
            try:
                self.out.write(bytes(data))
            except OSError:
                self.gone = True  # the client left (| head): the rest is dropped
                raise
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.out is None:
            self.out = self.req.stream(content_type=self.content_type)
        if not self.gone:
            self.out.close()


def export(req: Request) -> Response | None:
    from cove.containers.files import export as export_fs

    rec = req.ce.get(req.params["id"])
    out = _ChunkFile(req, "application/x-tar")
    export_fs(req.ce, rec.id, None, stream=out)
    out.close()
    return None


def _path_arg(req: Request) -> str:
    path = req.arg("path")
    if not path:
        raise ApiError(400, "path is required")
    return path


def _stat_header(doc: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


# cp forks (a stopped container's rootfs is mounted in a child in its own mount namespace):
# under ``cove serve`` each runs in a child of the fork helper, never forked from here


def _stat(req: Request, path: str) -> dict[str, Any]:
    from cove.api import forkserver
    from cove.containers.files import stat_path

    fs = forkserver.current()
    if fs is not None:
        with contextlib.suppress(forkserver.HelperGone):
            doc = {"op": "stat", "root": req.root, "cid": req.params["id"], "path": path}
            return fs.call(doc)["doc"]  # type: ignore[no-any-return]
    return stat_path(req.ce, req.params["id"], path)


def archive_head(req: Request) -> Response:
    doc = _stat(req, _path_arg(req))
    return Response(
        200,
        raw=b"",
        content_type="application/x-tar",
        headers={"X-Docker-Container-Path-Stat": _stat_header(doc)},
    )


def archive_get(req: Request) -> Response | None:
    from cove.api import forkserver
    from cove.api.server import Chunks
    from cove.containers.files import archive_get as get_tar

    path = _path_arg(req)
    doc = _stat(req, path)
    c = req._conn
    c.send_response(200)
    c.send_header("Content-Type", "application/x-tar")
    c.send_header("Transfer-Encoding", "chunked")
    c.send_header("X-Docker-Container-Path-Stat", _stat_header(doc))
    c.common_headers()
    c.end_headers()
    c.wfile.flush()
    req.started = True
    fs = forkserver.current()
    if fs is not None:
        # the child writes the chunked tar onto the connection itself (a dup of it)
        with contextlib.suppress(forkserver.HelperGone):
            job = {"op": "archive_get", "root": req.root, "cid": req.params["id"], "path": path}
            fs.call(job, [c.connection.fileno()])
            return None
    chunks = Chunks(c.connection)
    get_tar(req.ce, req.params["id"], path, chunks)
    chunks.close()
    return None


def archive_put(req: Request) -> Response:
    from cove.api import forkserver
    from cove.containers.files import archive_put as put_tar

    path = _path_arg(req)
    fs = forkserver.current()
    reply = None
    if fs is not None:
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            job = {"op": "archive_put", "root": req.root, "cid": req.params["id"], "path": path}
            reply = fs.request(job, [r])
        except forkserver.HelperGone:
            os.close(w)
        finally:
            os.close(r)
    if reply is None:
        put_tar(req.ce, req.params["id"], path, req.body)
        return Response(200, raw=b"", content_type="text/plain")
    # the body into the child's pipe, until its end or until the child stops reading (it
    # failed: its answer says why; the dispatcher drains the rest of the body)
    with reply:
        try:
            while data := req.body.read(65536):
                write_all(w, data)
        except BrokenPipeError:
            pass
        finally:
            os.close(w)
        answer, _ = forkserver.recv(reply)
    forkserver.check(answer, {"op": "cp into", "cid": req.params["id"]})
    return Response(200, raw=b"", content_type="text/plain")


_ID = r"/containers/(?P<id>[^/]+)"

ROUTES = [
    ("POST", r"/containers/create", create),
    ("GET", r"/containers/json", list_containers),
    ("POST", r"/containers/prune", prune),
    ("GET", _ID + r"/json", inspect),
    ("POST", _ID + r"/start", start),
    ("POST", _ID + r"/attach", attach),
    ("POST", _ID + r"/wait", wait),
    ("POST", _ID + r"/stop", stop),
    ("POST", _ID + r"/kill", kill),
    ("POST", _ID + r"/restart", restart),
    ("POST", _ID + r"/pause", pause),
    ("POST", _ID + r"/unpause", unpause),
    ("POST", _ID + r"/rename", rename),
    ("POST", _ID + r"/resize", resize),
    ("GET", _ID + r"/logs", logs),
    ("GET", _ID + r"/top", top),
    ("GET", _ID + r"/stats", stats),
    ("GET", _ID + r"/changes", changes),
    ("GET", _ID + r"/export", export),
    ("HEAD", _ID + r"/archive", archive_head),
    ("GET", _ID + r"/archive", archive_get),
    ("PUT", _ID + r"/archive", archive_put),
    ("DELETE", _ID, delete),
]
