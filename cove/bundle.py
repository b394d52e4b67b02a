"""From an image and Docker-style run options to an OCI bundle (config.json + files).

Pure where it can be (``build_spec``); user lookup reads the image's unpacked layers.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from cove.errors import InvalidSpec
from cove.image.files import read_image_file
from cove.runtime import caps as capmod
from cove.spec import runtime as rt
from cove.spec.flags import (
    MountRequest,
    parse_duration,
    parse_mapping,
    parse_size,
    parse_tmpfs,
    parse_ulimits,
)
from cove.sys.userns import (
    KeepId,
    keep_id_map,
    ns_size,
    outer_gid,
    outer_uid,
    parse_keep_id,
    rootless,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_PATH = "/sbin/cove-init"
TINI_CANDIDATES = ("/usr/bin/tini-static", "/usr/bin/tini")


@dataclass
class RunOptions:
    """What ``docker run`` flags say, before anything is resolved against the image."""

    image: str
    command: list[str] = field(default_factory=list)
    entrypoint: str | None = None
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    group_add: list[str] = field(default_factory=list)
    name: str | None = None
    hostname: str | None = None
    rm: bool = False
    tty: bool = False
    interactive: bool = False
    volumes: list[str] = field(default_factory=list)
    tmpfs: list[str] = field(default_factory=list)
    read_only: bool = False
    init: bool = False
    network: str = "bridge"
    network_aliases: list[str] = field(default_factory=list)
    ip: str | None = None
    publish_all: bool = False
    dns: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)
    pid: str = ""
    ipc: str = ""
    uts: str = ""
    userns: str = ""
    uidmap: list[str] = field(default_factory=list)
    gidmap: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    security_opt: list[str] = field(default_factory=list)
    memory: str | None = None
    memory_swap: str | None = None
    cpus: str | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    pids_limit: int | None = None
    devices: list[str] = field(default_factory=list)
    ulimits: list[str] = field(default_factory=list)
    platform: str | None = None
    labels: list[str] = field(default_factory=list)
    detach: bool = False
    mounts: list[str] = field(default_factory=list)
    volumes_from: list[str] = field(default_factory=list)
    restart: str = "no"
    health_cmd: str | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    no_healthcheck: bool = False
    log_opts: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    stop_timeout: int | None = None
    expose: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    pull: str = "missing"
    tls_verify: bool = True
    # the isolation driver (``--isolation``/``--vm``: "" is namespaces) and, for a vm, the
    # guest kernel to boot (``--kernel``; its size comes from --memory and --cpus)
    isolation: str = ""
    kernel: str | None = None


# -- user lookup in the image ------------------------------------------------


def _read_in_layers(layers_top_first: list[str], rel: str) -> str | None:
    """A file of the image as the container would see it, or None.

    The layers are hostile: /etc or /etc/passwd may be a symlink aimed at a host file.
    ``read_image_file`` resolves it inside the image's merged view, reads regular files only
    (never a FIFO or device) and caps the size.
    """
    data = read_image_file(layers_top_first, rel)
    return None if data is None else data.decode(errors="replace")


@dataclass
class ResolvedUser:
    uid: int
    gid: int
    additional: list[int]
    home: str
    name: str


def resolve_user(spec: str, group_add: list[str], layers_top_first: list[str]) -> ResolvedUser:
    """``user[:group]`` by name (the image's /etc/passwd and /etc/group) or number, as Docker."""
    passwd = _read_in_layers(layers_top_first, "etc/passwd") or ""
    groups_text = _read_in_layers(layers_top_first, "etc/group") or ""
    users = [line.split(":") for line in passwd.splitlines() if line.count(":") >= 6]
    groups = [line.split(":") for line in groups_text.splitlines() if line.count(":") >= 3]
    user_part, _, group_part = (spec or "0").partition(":")
    entry = None
    if user_part.isdigit():
        uid = int(user_part)
        entry = next((u for u in users if u[2] == user_part), None)
    else:
        entry = next((u for u in users if u[0] == user_part), None)
        if entry is None:
            raise InvalidSpec(
                f"unable to find user {user_part}: no matching entries in passwd file"
            )
        uid = int(entry[2])
    gid = int(entry[3]) if entry else 0
    name = entry[0] if entry else ""
    home = entry[5] if entry else "/"
    if group_part:
        gid = _group_id(group_part, groups)
    additional: list[int] = [gid]  # as Docker: the primary group is listed too
    if name:
        for g in groups:
            if name in g[3].split(",") and int(g[2]) not in additional:
                additional.append(int(g[2]))
    for extra in group_add:
        additional.append(_group_id(extra, groups))
    return ResolvedUser(uid, gid, additional, home or "/", name)


def _group_id(text: str, groups: list[list[str]]) -> int:
    if text.isdigit():
        return int(text)
    for g in groups:
        if g[0] == text:
            return int(g[2])
    raise InvalidSpec(f"unable to find group {text}: no matching entries in group file")


# -- the spec -------------------------------------------------------------------


def read_env_file(path: str) -> list[str]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if "=" not in line:
                    value = os.environ.get(line)
                    if value is not None:
                        out.append(f"{line}={value}")
                    continue
                out.append(line)
    except OSError as e:
        raise InvalidSpec(f"cannot read env file {path}: {e.strerror}") from e
    return out


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    """Later entries win; ``-e NAME`` without a value takes it from cove's environment."""
    env: dict[str, str] = {}
    for e in base + extra:
        key, eq, value = e.partition("=")
        if not eq:
            if key in os.environ:
                env[key] = os.environ[key]
            continue
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def process_args(opts: RunOptions, image_cfg: dict[str, Any]) -> list[str]:
    """Docker's ENTRYPOINT/CMD rules: --entrypoint resets CMD; a command replaces CMD."""
    if opts.entrypoint is not None:
        import shlex  # only with --entrypoint

        entrypoint = shlex.split(opts.entrypoint) if opts.entrypoint else []
        cmd = list(opts.command)
    else:
        entrypoint = list(image_cfg.get("Entrypoint") or [])
        cmd = list(opts.command) if opts.command else list(image_cfg.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise InvalidSpec("no command specified")
    return args


def parse_mount(text: str) -> MountRequest:
    """``--mount type=bind|volume|tmpfs,src=...,dst=...[,readonly]`` as Docker's CSV."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not key:
            continue
        fields[key] = value if eq else "true"
    kind = fields.pop("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise InvalidSpec(f"invalid --mount {text!r}: type must be bind, volume or tmpfs")
    src = fields.pop("source", fields.pop("src", ""))
    dst = fields.pop("destination", fields.pop("dst", fields.pop("target", "")))
    ro = False
    for key in ("readonly", "ro"):
        if key in fields:
            value = fields.pop(key).lower()
            if value not in ("true", "false", "1", "0"):
                raise InvalidSpec(f"invalid --mount {text!r}: bad value for {key}")
            ro = value in ("true", "1")
    options: list[str] = []
    if kind == "tmpfs":
        if "tmpfs-size" in fields:
            options.append(f"size={parse_size(fields.pop('tmpfs-size'), 'tmpfs-size')}")
        if "tmpfs-mode" in fields:
            options.append(f"mode={fields.pop('tmpfs-mode')}")
    for key in ("bind-propagation", "volume-nocopy", "consistency"):
        fields.pop(key, None)
    if fields:
        raise InvalidSpec(f"invalid --mount {text!r}: unexpected key {next(iter(fields))!r}")
    if not dst.startswith("/"):
        raise InvalidSpec(f"invalid --mount {text!r}: target must be an absolute path")
    if kind == "bind":
        if not src.startswith("/"):
            raise InvalidSpec(f"invalid --mount {text!r}: bind source must be an absolute path")
        if not os.path.exists(src):
            raise InvalidSpec(f"invalid mount config: bind source path does not exist: {src}")
    if kind == "tmpfs" and src:
        raise InvalidSpec(f"invalid --mount {text!r}: tmpfs takes no source")
    return MountRequest(kind, src, dst, ro, options)


def _resources(opts: RunOptions) -> rt.Resources | None:
    res = rt.Resources()
    if opts.memory:
        limit = parse_size(opts.memory, "memory")
        swap = None
        if opts.memory_swap:
            swap = -1 if opts.memory_swap == "-1" else parse_size(opts.memory_swap, "memory-swap")
            if swap != -1 and swap < limit:
                raise InvalidSpec("minimum memoryswap limit should be larger than memory limit")
        else:
            swap = limit * 2  # Docker: swap as large as the memory limit by default
        res.memory = rt.Memory(limit, swap)
    elif opts.memory_swap:
        raise InvalidSpec("you should always set the memory limit when using memoryswap limit")
    if opts.cpus or opts.cpu_shares is not None or opts.cpuset_cpus:
        cpu = rt.CPU()
        if opts.cpus:
            try:
                value = float(opts.cpus)
            except ValueError as e:
                raise InvalidSpec(f"invalid --cpus {opts.cpus!r}") from e
            if value <= 0:
                raise InvalidSpec(f"invalid --cpus {opts.cpus!r}: must be positive")
            cpu.period, cpu.quota = 100_000, int(value * 100_000)
        if opts.cpu_shares is not None:
            cpu.shares = opts.cpu_shares
        if opts.cpuset_cpus:
            cpu.cpus = opts.cpuset_cpus
        res.cpu = cpu
    if opts.pids_limit is not None and opts.pids_limit > 0:
        res.pids = rt.Pids(opts.pids_limit)
    if opts.privileged:
        res.devices = [rt.DeviceRule(allow=True, type="a")]
    for text in opts.devices:
        node, perms = _device(text)
        res.devices.append(rt.DeviceRule(True, node.type, node.major, node.minor, perms))
    return res


def _device(text: str) -> tuple[rt.Device, str]:
    """``--device HOST[:CONTAINER][:PERMS]`` (Docker's syntax): the node to make and the
    cgroup access (r, w, m) to allow on it."""
    parts = text.split(":")
    perms = "rwm"
    if len(parts) > 1 and parts[-1] and not set(parts[-1]) - set("rwm"):
        perms = parts.pop()
    if len(parts) > 2 or not parts[0]:
        raise InvalidSpec(f"invalid --device {text!r}: want HOST[:CONTAINER][:PERMS]")
    host = parts[0]
    dest = parts[1] if len(parts) == 2 and parts[1] else host
    if not os.path.isabs(host) or not os.path.isabs(dest):
        raise InvalidSpec(f"invalid --device {text!r}: paths must be absolute")
    try:
        st = os.stat(host)
    except OSError as e:
        raise InvalidSpec(f"error gathering device information for {host!r}: {e.strerror}") from e
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidSpec(f"invalid --device {text!r}: {host} is not a device node")
    node = rt.Device(dest, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                     st.st_mode & 0o777, st.st_uid, st.st_gid)  # fmt: skip
    return node, perms


def _capabilities(opts: RunOptions) -> list[str]:
    if opts.privileged:
        return [c for i, c in enumerate(capmod.CAPS) if i <= capmod.last_cap()]
    caps = list(rt.DEFAULT_CAPS)
    adds = [capmod.normalize(c) for c in opts.cap_add]
    drops = [capmod.normalize(c) for c in opts.cap_drop]
    if "ALL" in drops:
        caps = []
    if "ALL" in adds:
        caps = [c for i, c in enumerate(capmod.CAPS) if i <= capmod.last_cap()]
    caps += [c for c in adds if c != "ALL" and c not in caps]
    return [c for c in caps if c not in drops]


def build_spec(
    opts: RunOptions,
    image_cfg: dict[str, Any],
    user: ResolvedUser,
    container_id: str,
    files: dict[str, str],
    seccomp: rt.Seccomp | None,
    extra_mounts: list[rt.Mount] | None = None,
) -> rt.Spec:
    """The OCI spec for a container (Docker's defaults); pure apart from reading env files."""
    env = merge_env(list(image_cfg.get("Env") or []), [])
    env_extra = [e for f in opts.env_files for e in read_env_file(f)] + list(opts.env)
    env = merge_env(env, env_extra)
    names = {e.split("=", 1)[0] for e in env}
    hostname = opts.hostname or container_id[:12]
    defaults = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}", f"HOME={user.home}"]
    if opts.tty:
        defaults.append("TERM=xterm")
    env = [d for d in defaults if d.split("=", 1)[0] not in names] + env
    args = process_args(opts, image_cfg)
    if opts.init:
        args = [INIT_PATH, "--", *args]
    caps = _capabilities(opts)
    is_root = user.uid == 0
    process = rt.Process(
        args=args,
        env=env,
        cwd=opts.workdir or image_cfg.get("WorkingDir") or "/",
        terminal=opts.tty,
        user=rt.User(user.uid, user.gid, None, user.additional),
        capabilities=rt.Capabilities(
            bounding=caps,
            effective=caps if is_root else [],
            permitted=caps if is_root else [],
            inheritable=[],
            ambient=[],
        ),
        rlimits=parse_ulimits(opts.ulimits),
        no_new_privileges="no-new-privileges" in opts.security_opt
        or "no-new-privileges:true" in opts.security_opt,
    )
    namespaces = [rt.Namespace("mount"), rt.Namespace("cgroup")]
    for kind, mode in (("pid", opts.pid), ("ipc", opts.ipc), ("uts", opts.uts)):
        if mode not in ("", "private", "host"):
            raise InvalidSpec(f"invalid --{kind} {mode!r}: want host or private")
        if mode != "host":
            namespaces.append(rt.Namespace(kind))
    if opts.network.startswith("container:"):
        namespaces.append(rt.Namespace("network", opts.network.partition(":")[2]))
    elif opts.network != "host":
        namespaces.append(rt.Namespace("network"))
    linux = rt.Linux(namespaces=namespaces, cgroups_path=f"cove/{container_id}")
    keep = keep_id(opts)
    if keep is not None:
        # Podman's keep-id in rootless cove's namespace, whose id 0 is the user: that id
        # appears as keep.uid inside, the rest of the namespace's ids around it
        linux.namespaces.append(rt.Namespace("user"))
        linux.uid_mappings = [rt.IDMapping(*r) for r in keep_id_map(keep.uid, ns_size())]
        linux.gid_mappings = [
            rt.IDMapping(*r) for r in keep_id_map(keep.gid, ns_size("/proc/self/gid_map"))
        ]
    elif opts.userns not in ("", "host", "auto") and not opts.userns.startswith("auto"):
        raise InvalidSpec(f"invalid --userns {opts.userns!r}: want auto, host or keep-id")
    elif opts.userns.startswith("auto") or opts.uidmap:
        linux.namespaces.append(rt.Namespace("user"))
        if opts.uidmap:
            linux.uid_mappings = [parse_mapping(m, "--uidmap") for m in opts.uidmap]
            linux.gid_mappings = [parse_mapping(m, "--gidmap") for m in opts.gidmap or opts.uidmap]
        else:
            base = 100_000 + (int(container_id[:6], 16) % 1000) * 65536
            linux.uid_mappings = [rt.IDMapping(0, base, 65536)]
            linux.gid_mappings = [rt.IDMapping(0, base, 65536)]
    linux.resources = _resources(opts)
    linux.devices = [_device(text)[0] for text in opts.devices]
    if not opts.privileged:
        linux.masked_paths = list(rt.DEFAULT_MASKED_PATHS)
        linux.readonly_paths = list(rt.DEFAULT_READONLY_PATHS)
        linux.seccomp = seccomp
    ro = [] if opts.privileged else ["ro"]
    sys_mount = (
        rt.Mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro])
        if opts.network != "host" or opts.privileged
        else rt.Mount("/sys", "bind", "/sys", ["rbind", "nosuid", "noexec", "nodev", *ro])
    )
    mounts = [
        rt.Mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        rt.Mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        rt.Mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        sys_mount,
        rt.Mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", *ro]),
        rt.Mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        rt.Mount(
            "/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]
        ),
    ]
    for dest, src in files.items():
        mounts.append(rt.Mount(dest, "bind", src, ["rbind", "rprivate"]))
    extra_mounts = extra_mounts or []
    mounts += extra_mounts
    mounts += [parse_tmpfs(t) for t in opts.tmpfs]
    if opts.init:
        tini = next((t for t in TINI_CANDIDATES if os.path.exists(t)), None)
        if tini is None:
            raise InvalidSpec("--init needs tini (Debian package tini) on the host")
        mounts.append(rt.Mount(INIT_PATH, "bind", tini, ["bind", "ro", "nosuid", "nodev"]))
    annotations = {"io.cove.image": opts.image}
    return rt.Spec(
        process=process,
        root=rt.Root("rootfs", opts.read_only),
        hostname=hostname,
        mounts=mounts,
        linux=linux,
        annotations=annotations,
    )


def keep_id(opts: RunOptions) -> KeepId | None:
    """``--userns=keep-id[:uid=N,gid=N]``, for rootless cove only (as Podman's rootless
    keep-id: root's own ids need no such map, and Docker has no such mode)."""
    try:
        keep = parse_keep_id(opts.userns, (outer_uid(), outer_gid()))
    except ValueError as e:
        raise InvalidSpec(str(e)) from e
    if keep is None:
        return None
    if not rootless():
        raise InvalidSpec("--userns=keep-id is for rootless cove: run it as a non-root user")
    if opts.uidmap or opts.gidmap:
        raise InvalidSpec("--userns=keep-id and --uidmap/--gidmap are mutually exclusive")
    return keep


def keep_id_user(keep: KeepId, layers_top_first: list[str]) -> ResolvedUser:
    """The process user of a keep-id container with no ``--user``: the kept ids, named and
    homed as the user is on the host (the entry :func:`keep_id_passwd` adds)."""
    import pwd

    entry = pwd.getpwuid(outer_uid())
    image = resolve_user(f"{keep.uid}:{keep.gid}", [], layers_top_first)
    return ResolvedUser(keep.uid, keep.gid, [keep.gid], image.home if image.name
                        else entry.pw_dir, image.name or entry.pw_name)  # fmt: skip


def keep_id_passwd(keep: KeepId, layers_top_first: list[str]) -> dict[str, str]:
    """/etc/passwd and /etc/group lines a keep-id container lacks: the image's files plus
    the user's entry (host name, kept ids, host home, /bin/sh) and group, as Podman adds."""
    import grp
    import pwd

    entry = pwd.getpwuid(outer_uid())
    try:
        group = grp.getgrgid(outer_gid()).gr_name
    except KeyError:
        group = entry.pw_name
    out = {}
    passwd = _read_in_layers(layers_top_first, "etc/passwd")
    if passwd is not None and not any(
        line.split(":")[2:3] == [str(keep.uid)] for line in passwd.splitlines()
    ):
        name = check_etc_value("user name", entry.pw_name)
        home = check_etc_value("home directory", entry.pw_dir)
        line = f"{name}:*:{keep.uid}:{keep.gid}:{name}:{home}:/bin/sh\n"
        out["passwd"] = passwd + ("" if passwd.endswith("\n") or not passwd else "\n") + line
    groups = _read_in_layers(layers_top_first, "etc/group")
    if groups is not None and not any(
        line.split(":")[2:3] == [str(keep.gid)] for line in groups.splitlines()
    ):
        name = check_etc_value("group name", group)
        line = f"{name}:x:{keep.gid}:\n"
        out["group"] = groups + ("" if groups.endswith("\n") or not groups else "\n") + line
    return out


def check_etc_value(what: str, value: str) -> str:
    """A value cove writes into a container's /etc/hosts or /etc/resolv.conf: one word, so a
    newline, NUL or blank cannot add a line (another host entry, a nameserver) or a field."""
    if not value or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidSpec(f"invalid {what} {value!r}: blanks and control characters are refused")
    return value


def check_etc_inputs(opts: RunOptions) -> None:
    """Refuse, before anything is made, every run option that ends up in /etc/hosts,
    /etc/hostname or /etc/resolv.conf with a character that would change the file's lines."""
    if opts.hostname is not None:
        check_etc_value("--hostname", opts.hostname)
    for entry in opts.add_hosts:
        name, _, ip = entry.partition(":")
        check_etc_value("--add-host name", name)
        check_etc_value("--add-host address", ip)
    for server in opts.dns:
        import ipaddress  # only with --dns: ~1 ms of the start path otherwise

        try:
            ipaddress.ip_address(check_etc_value("--dns", server))
        except ValueError as e:
            raise InvalidSpec(f"invalid --dns {server!r}: not an IP address") from e
    for alias in opts.network_aliases:
        check_etc_value("--network-alias", alias)


def etc_files(
    dest_dir: str,
    hostname: str,
    network: str,
    *,
    add_hosts: list[str] | None = None,
    dns: list[str] | None = None,
    address: str | None = None,
    nameserver: str | None = None,
) -> dict[str, str]:
    """/etc/hostname, /etc/hosts and /etc/resolv.conf for the container; returns dest->source.

    Written in place, never replaced: the container bind-mounts these very inodes, and a
    network attachment rewrites hosts and resolv.conf once the address is known.
    """
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if address:
        hosts.append(f"{address}\t{hostname}")
    elif network != "host":
        hosts.append(f"127.0.1.1\t{hostname}")
    for entry in add_hosts or []:
        name, _, ip = entry.partition(":")
        if not ip:
            raise InvalidSpec(f"invalid --add-host {entry!r}: want HOST:IP")
        hosts.append(f"{ip}\t{name}")
    lines: list[str] = []
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        pass
    if dns or nameserver:
        servers = dns or [nameserver or ""]
        keep = [ln for ln in lines if ln.startswith(("search", "options"))]
        resolv = "\n".join([*(f"nameserver {s}" for s in servers), *keep])
    else:
        # a loopback resolver of the host is unreachable from the container's own network
        resolv = "\n".join(
            line
            for line in lines
            if not (
                line.startswith("nameserver")
                and line.split()[1:2]
                and line.split()[1].startswith(("127.", "::1"))
                and network != "host"
            )
        )
    files = {
        "/etc/hostname": hostname + "\n",
        "/etc/hosts": "\n".join(hosts) + "\n",
        "/etc/resolv.conf": resolv + "\n",
    }
    out = {}
    for dest, content in files.items():
        path = os.path.join(dest_dir, os.path.basename(dest))
        with open(path, "w") as f:
            f.write(content)
            # bind-mounted into the container, whose users all read them (cove's umask is 077)
            os.fchmod(f.fileno(), 0o644)
        out[dest] = path
    return out


def overlay_annotation(layers_dir: str, lower_top_first: list[str], upper: str, work: str) -> str:
    from cove.sys.overlay import check_depth

    check_depth(len(lower_top_first), "the image")  # at create, not as a mount error at start
    rel = [os.path.relpath(p, layers_dir) for p in lower_top_first]
    return json.dumps({"layers_dir": layers_dir, "lower": rel, "upper": upper, "work": work})


def healthcheck(opts: RunOptions, image_cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The effective Healthcheck document (image HEALTHCHECK overridden by --health-*)."""
    if opts.no_healthcheck:
        return None
    hc = dict(image_cfg.get("Healthcheck") or {})
    if opts.health_cmd is not None:
        hc["Test"] = ["CMD-SHELL", opts.health_cmd]
    test = hc.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    for key, value in (
        ("Interval", opts.health_interval),
        ("Timeout", opts.health_timeout),
        ("StartPeriod", opts.health_start_period),
    ):
        if value is not None:
            hc[key] = int(parse_duration(value, f"--health-{key.lower()}") * 1e9)
    if opts.health_retries is not None:
        hc["Retries"] = opts.health_retries
    return hc
