"""Container verbs: parse, call ``cove.containers``, format."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cove.cli import fmt
from cove.errors import CoveError
from cove.sys import trace

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine
    from cove.engine import Engine

# verbs _register_common builds alone (the rest need the whole tree: container, volume, ...)
COMMON = {
    "run", "create", "start", "stop", "kill", "restart", "wait", "pause", "unpause", "exec",
    "attach", "logs", "top", "stats", "cp", "diff", "export", "commit", "rename", "port",
}  # fmt: skip
VERBS = {
    "run",
    "create",
    "start",
    "stop",
    "kill",
    "restart",
    "rm",
    "wait",
    "pause",
    "unpause",
    "exec",
    "attach",
    "logs",
    "inspect",
    "top",
    "stats",
    "cp",
    "diff",
    "export",
    "commit",
    "rename",
    "port",
    "ps",
    "container",
    "volume",
    "network",
    "system",
}


def _ce(engine: Engine) -> ContainerEngine:
    from cove.containers.engine import ContainerEngine

    return ContainerEngine(engine)


def _opts(args: argparse.Namespace) -> Any:
    from cove.bundle import RunOptions

    return RunOptions(
        image=args.image,
        command=list(args.command),
        entrypoint=args.entrypoint,
        env=args.env,
        env_files=args.env_file,
        workdir=args.workdir,
        user=args.user,
        group_add=args.group_add,
        name=args.name,
        hostname=args.hostname,
        rm=args.rm,
        tty=args.tty,
        interactive=args.interactive,
        volumes=args.volume,
        tmpfs=args.tmpfs,
        read_only=args.read_only,
        init=args.init,
        network=args.network,
        pid=args.pid,
        ipc=args.ipc,
        uts=args.uts,
        userns=args.userns,
        uidmap=args.uidmap,
        gidmap=args.gidmap,
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        privileged=args.privileged,
        security_opt=args.security_opt,
        memory=args.memory,
        memory_swap=args.memory_swap,
        cpus=args.cpus,
        cpu_shares=args.cpu_shares,
        cpuset_cpus=args.cpuset_cpus,
        pids_limit=args.pids_limit,
        devices=args.device,
        ulimits=args.ulimit,
        platform=args.platform,
        labels=args.label,
        detach=getattr(args, "detach", False),
        mounts=args.mount,
        volumes_from=args.volumes_from,
        restart=args.restart,
        health_cmd=args.health_cmd,
        health_interval=args.health_interval,
        health_timeout=args.health_timeout,
        health_retries=args.health_retries,
        health_start_period=args.health_start_period,
        no_healthcheck=args.no_healthcheck,
        log_opts=args.log_opt,
        stop_signal=args.stop_signal,
        stop_timeout=args.stop_timeout,
        expose=args.expose,
        publish=args.publish,
        network_aliases=args.network_alias,
        ip=args.ip,
        publish_all=args.publish_all,
        dns=args.dns,
        add_hosts=args.add_host,
        pull=args.pull,
        tls_verify=args.tls_verify,
    )


def _start_errors(fn: Callable[[], int]) -> int:
    """Anything that kept the container from starting is cove's 125, or the exec code."""
    from cove.runtime.api import ContainerStartError

    try:
        return fn()
    except ContainerStartError as e:
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except CoveError as e:
        sys.stderr.write(f"Error: {e}\n")
        return 125


def _stdin_tty_refused(attach_stdin: bool, tty: bool) -> bool:
    """Docker's CheckTty: attaching stdin to a container TTY (``run/exec -it`` without
    ``-d``, ``attach`` to a TTY container) needs a terminal on our own stdin; say so and
    refuse before anything is created. ``-t`` alone still runs with a TTY allocated, as
    Docker does."""
    if not (attach_stdin and tty):
        return False
    try:
        if os.isatty(sys.stdin.fileno()):
            return False
    except (AttributeError, ValueError, OSError):
        pass  # no usable stdin at all: not a terminal either
    sys.stderr.write("the input device is not a TTY\n")
    return True


def cmd_run(engine: Engine, args: argparse.Namespace) -> int:
    if _stdin_tty_refused(args.interactive and not args.detach, args.tty):
        return 1
    opts = _opts(args)
    ce = _ce(engine)
    trace.mark("options")
    if getattr(args, "vm", False) or getattr(args, "isolation", "container") == "vm":
        opts.isolation, opts.kernel = "vm", args.kernel
    elif args.kernel:
        sys.stderr.write("Error: --kernel needs --vm\n")
        return 125

    def go() -> int:
        if opts.detach:
            print(ce.run_detached(opts))
            return 0
        return int(ce.run(opts))

    return _start_errors(go)


def cmd_create(engine: Engine, args: argparse.Namespace) -> int:
    if args.vm or args.isolation == "vm" or args.kernel:
        sys.stderr.write("Error: create does not make --vm runs: use run --vm [-d]\n")
        return 125
    opts = _opts(args)
    opts.detach = True
    return _start_errors(lambda: print(_ce(engine).create(opts)) or 0)


def cmd_start(engine: Engine, args: argparse.Namespace) -> int:
    if args.all or args.filter:
        return _start_all(engine, args)
    if not args.containers:
        sys.stderr.write("Error: start needs at least one container (or --all)\n")
        return 125
    ce = _ce(engine)
    if not args.attach and not args.interactive:
        return _start_errors(lambda: fmt.each(args.containers, ce.start))
    if len(args.containers) != 1:
        sys.stderr.write("Error: you cannot start and attach multiple containers at once\n")
        return 1

    def go() -> int:
        import socket

        from cove.containers.engine import attach_stream, forward_signals_to

        rec = ce.get(args.containers[0])
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            started = ce.start(rec.id, attach_fd=theirs.fileno())
        finally:
            theirs.close()
        tty = bool(rec.config.get("Config", {}).get("Tty"))
        with forward_signals_to(ce, rec.id):
            attach_stream(mine, args.interactive, tty)
        return int(ce.wait(rec.id, after=started.started_at))

    return _start_errors(go)


def _start_all(engine: Engine, args: argparse.Namespace) -> int:
    """``start --all [--filter restart-policy=P]`` (Podman's; what cove-restart.service runs)."""
    from cove.containers.boot import start_all

    if not args.all or args.containers or args.attach or args.interactive:
        sys.stderr.write("Error: --filter needs --all, which takes no container and no -a/-i\n")
        return 125
    rc = 0
    for rec, err in start_all(_ce(engine), args.filter):
        if err:
            sys.stderr.write(f"Error: {rec.name}: {err}\n")
            rc = 125
        else:
            print(rec.name)
    return rc


def cmd_system_check(engine: Engine, args: argparse.Namespace) -> int:
    """Podman's ``system check``: one line per problem; exit 1 while any stays unrepaired."""
    from cove.check import Checker

    findings = Checker(engine, repair=args.repair, quick=args.quick).run()
    for f in findings:
        if f.fixed:
            print(f"repaired: {f.what}: {f.fixed}")
        elif args.repair:
            print(f"not repaired: {f.what}")
        else:
            print(f.what)
    return 1 if any(not f.fixed for f in findings) else 0


def cmd_stop(engine: Engine, args: argparse.Namespace) -> int:
    from cove.spec.flags import parse_signal

    ce = _ce(engine)
    sig = parse_signal(args.signal) if args.signal else None
    return fmt.each(args.containers, lambda r: ce.stop(r, timeout=args.time, sig=sig))


def cmd_kill(engine: Engine, args: argparse.Namespace) -> int:
    from cove.spec.flags import parse_signal

    ce = _ce(engine)
    sig = parse_signal(args.signal)
    return fmt.each(args.containers, lambda r: ce.kill(r, sig))


def cmd_restart(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    return _start_errors(
        lambda: fmt.each(args.containers, lambda r: ce.restart(r, timeout=args.time))
    )


def cmd_rm(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    code = fmt.each(args.containers, lambda r: ce.remove(r, force=args.force, volumes=args.volumes))
    _sweep(ce)
    return code


def _sweep(
    ce: ContainerEngine, *, everything: bool = False, ids: set[str] | None = None
) -> list[str]:
    """Orphans of killed commands (``cove.sweep``); never fails the command it follows."""
    from cove.containers.sweep import sweep

    try:
        return sweep(ce.root, ce.store, everything=everything, ids=ids)
    except (OSError, CoveError) as e:
        if everything:
            raise
        return [f"sweep: {e}"]


def cmd_wait(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    return fmt.each(args.containers, lambda r: print(ce.wait(r)), echo=False)


def cmd_pause(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    return fmt.each(args.containers, ce.pause)


def cmd_unpause(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    return fmt.each(args.containers, ce.unpause)


def cmd_exec(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.exec import ExecOptions, exec_in

    if not args.command:
        sys.stderr.write("Error: exec needs a command\n")
        return 125
    if _stdin_tty_refused(args.interactive and not args.detach, args.tty):
        return 1
    o = ExecOptions(
        command=list(args.command),
        detach=args.detach,
        interactive=args.interactive,
        tty=args.tty,
        env=args.env,
        user=args.user,
        workdir=args.workdir,
        privileged=args.privileged,
    )
    from cove.errors import Conflict, NotFound
    from cove.runtime.api import ContainerStartError

    try:
        return exec_in(_ce(engine), args.container, o)
    except ContainerStartError as e:
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except (Conflict, NotFound) as e:  # Docker: the daemon refused, exit 1
        sys.stderr.write(f"Error: {e}\n")
        return 1
    except CoveError as e:
        sys.stderr.write(f"Error: {e}\n")
        return 125


def cmd_attach(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.engine import attach_stream, connect_attach, forward_signals_to

    ce = _ce(engine)
    rec = ce.get(args.container)
    if rec.status.value != "running":
        sys.stderr.write("Error: you cannot attach to a stopped container, start it first\n")
        return 1
    cfg = rec.config.get("Config", {})
    if _stdin_tty_refused(not args.no_stdin, bool(cfg.get("Tty"))):
        return 1
    sock = connect_attach(ce, rec)
    interactive = bool(cfg.get("OpenStdin")) and not args.no_stdin
    ctx = forward_signals_to(ce, rec.id) if args.sig_proxy else _nullcontext()
    with ctx:
        attach_stream(sock, interactive, bool(cfg.get("Tty")))
    return int(ce.wait(rec.id, after=rec.started_at))


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def cmd_logs(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.logs import read_logs

    ce = _ce(engine)
    rec = ce.get(args.container)
    if args.boot:
        console = rec.config.get("VM", {}).get("ConsoleLog")
        if not console:
            sys.stderr.write(f"Error: {rec.name} is not a --vm run: it has no boot log\n")
            return 1
        try:
            with open(console, "rb") as f:
                sys.stdout.buffer.write(f.read())
        except FileNotFoundError:
            pass
        return 0
    for stream, ts, line in read_logs(
        ce,
        rec,
        follow=args.follow,
        tail=args.tail,
        since=args.since,
        until=args.until,
    ):
        out = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
        if args.timestamps:
            out.write(ts.encode() + b" ")
        out.write(line)
        out.flush()
    return 0


def _status_text(rec: Any, now: float) -> str:
    from cove.containers.listing import status_text

    return status_text(rec, now)


def _matches(rec: Any, filters: list[str], ce: Any) -> bool:
    from cove.containers.listing import matches

    by_key: dict[str, list[str]] = {}
    for f in filters:
        key, _, value = f.partition("=")
        by_key.setdefault(key, []).append(value)
    return matches(ce, rec, by_key)


def _ports_text(cfg: dict[str, Any]) -> str:
    ports = (cfg.get("NetworkSettings") or {}).get("Ports") or {}
    out = []
    for cport, binds in ports.items():
        for b in binds or []:
            out.append(f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}->{cport}")
    return ", ".join(out)


def cmd_ps(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    now = time.time()
    for f in args.filter:
        if f.partition("=")[0] not in (
            "status",
            "name",
            "label",
            "ancestor",
            "id",
            "exited",
            "health",
        ):
            sys.stderr.write(f"Error: invalid filter '{f.partition('=')[0]}'\n")
            return 125
    statuses = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
    for f in args.filter:
        key, _, value = f.partition("=")
        if key == "status" and value not in statuses:
            sys.stderr.write(f"Error: invalid filter 'status={value}'\n")
            return 125
    rows = []
    every = ce.all()  # one query for every record (issue 20), each checked against /proc
    records = [r for r in every if _matches(r, args.filter, ce)]
    # after the records are reconciled: what no record owns any more goes (by the ids read)
    _sweep(ce, ids={r.id for r in every})
    show_all = args.all or bool(args.filter) or bool(args.last)
    if args.last:
        records = records[: args.last]
    for rec in records:
        running = rec.status.value in ("running", "paused", "restarting")
        if not show_all and not running:
            continue
        if args.quiet:  # the IDs alone: no column is formatted
            rows.append({"ID": rec.id if args.no_trunc else rec.id[:12]})
            continue
        cfg = rec.config
        cmd = " ".join([cfg.get("Path", ""), *cfg.get("Args", [])]).strip()
        row = {
            "ID": rec.id if args.no_trunc else rec.id[:12],
            "Image": rec.image,
            "Command": json.dumps(
                ensure_ascii=False, obj=cmd if args.no_trunc or len(cmd) <= 20 else cmd[:19] + "…"
            ),
            "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(rec.created)),
            "RunningFor": fmt.ago_ts(rec.created),
            "Status": _status_text(rec, now),
            "State": rec.status.value,
            "Ports": _ports_text(cfg),
            "Names": rec.name,
            "Labels": ",".join(
                f"{k}={v}" for k, v in (cfg.get("Config", {}).get("Labels") or {}).items()
            ),
            "Mounts": ",".join(m.get("Name") or m.get("Source", "") for m in cfg.get("Mounts", [])),
            "Isolation": cfg.get("HostConfig", {}).get("Isolation") or "container",
        }
        if args.size:
            from cove.containers.listing import upper_size

            row["Size"] = fmt.human_size(upper_size(ce, rec.id))
        rows.append(row)
    if args.quiet:
        if rows:
            print("\n".join(r["ID"] for r in rows))
        return 0
    headers = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES",
               "ISOLATION"]  # fmt: skip
    cols = ["ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names", "Isolation"]
    if args.size:
        headers.append("SIZE")
        cols.append("Size")
    out = fmt.format_rows(args.format, headers, rows, lambda r: [r[c] for c in cols])
    if out:
        print(out)
    return 0


def cmd_inspect(engine: Engine, args: argparse.Namespace) -> int:
    """``inspect``: containers first, then images (``--type`` narrows it), as Docker."""
    from cove.errors import NotFound

    ce = _ce(engine)

    def get(ref: str) -> dict[str, Any]:
        if args.type in (None, "container"):
            try:
                doc: dict[str, Any] = ce.inspect(ref)
                return doc
            except CoveError:
                if args.type == "container":
                    raise
        try:
            image: dict[str, Any] = engine.inspect_image(ref)
            return image
        except CoveError as e:
            if args.type is None:
                raise NotFound(f"no such object: {ref}") from e
            raise

    return fmt.inspect_each(args.names, get, args.format)


def cmd_container_inspect(engine: Engine, args: argparse.Namespace) -> int:
    args.type = "container"
    return cmd_inspect(engine, args)


def cmd_top(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.listing import top

    titles, rows = top(_ce(engine), args.container, args.ps_args or ["-ef"])
    if titles:
        widths = [max(len(r[i]) if i < len(r) else 0 for r in [titles, *rows]) for i in
                  range(len(titles))]  # fmt: skip
        for r in [titles, *rows]:
            print("   ".join(f.ljust(w) for f, w in zip(r, widths, strict=False)).rstrip())
    return 0


def cmd_stats(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.stats import sample_all

    ce = _ce(engine)
    refs = args.containers
    first = True
    while True:
        rows = sample_all(ce, refs, all_containers=args.all)
        out = fmt.format_rows(
            args.format,
            [
                "CONTAINER ID",
                "NAME",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "NET I/O",
                "BLOCK I/O",
                "PIDS",
            ],
            rows,
            lambda r: [
                r["ID"],
                r["Name"],
                r["CPUPerc"],
                r["MemUsage"],
                r["MemPerc"],
                r["NetIO"],
                r["BlockIO"],
                r["PIDs"],
            ],
        )
        if not args.no_stream and not first and sys.stdout.isatty():
            sys.stdout.write("\033[2J\033[H")
        print(out, flush=True)
        first = False
        if args.no_stream:
            return 0


def _split_cp(arg: str) -> tuple[str | None, str]:
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    ref, _, path = arg.partition(":")
    return ref, path


def cmd_cp(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.files import copy

    src_ctr, src = _split_cp(args.src)
    dst_ctr, dst = _split_cp(args.dest)
    if (src_ctr is None) == (dst_ctr is None):
        sys.stderr.write(
            "Error: copying between containers or on the host is not supported: "
            "one of SRC and DEST must be CONTAINER:PATH\n"
        )
        return 1
    copy(_ce(engine), src_ctr, src, dst_ctr, dst, follow_link=args.follow_link)
    return 0


def cmd_diff(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.files import diff

    for kind, path in diff(_ce(engine), args.container):
        print(f"{kind} {path}")
    return 0


def cmd_export(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.files import export

    if not args.output and sys.stdout.isatty():
        sys.stderr.write(
            "Error: cowardly refusing to save to a terminal. Use the -o flag or redirect\n"
        )
        return 1
    export(_ce(engine), args.container, args.output)
    return 0


def cmd_commit(engine: Engine, args: argparse.Namespace) -> int:
    from cove.containers.files import commit

    image_id = commit(
        _ce(engine),
        args.container,
        args.repository,
        changes=args.change,
        message=args.message or "",
        author=args.author or "",
        pause=args.pause,
    )
    print(image_id)
    return 0


def cmd_rename(engine: Engine, args: argparse.Namespace) -> int:
    _ce(engine).rename(args.container, args.new_name)
    return 0


def cmd_port(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    rec = ce.get(args.container)
    ports = rec.config.get("NetworkSettings", {}).get("Ports") or {}
    shown = 0
    for cport, bindings in sorted(ports.items()):
        if args.private_port and cport not in (args.private_port, f"{args.private_port}/tcp"):
            continue
        for b in bindings or []:
            line = f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}"
            print(line if args.private_port else f"{cport} -> {line}")
            shown += 1
    if args.private_port and not shown:
        want = args.private_port if "/" in args.private_port else f"{args.private_port}/tcp"
        sys.stderr.write(f"Error: no public port '{want}' published for {args.container}\n")
        return 1
    return 0


def cmd_container_prune(engine: Engine, args: argparse.Namespace) -> int:
    removed = _ce(engine).prune()
    if removed:
        print("Deleted Containers:")
        print("\n".join(removed))
        print()
    print("Total reclaimed space: 0B")
    return 0


def cmd_system_prune(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    removed = ce.prune()
    nets = ce.networks()
    from cove.vm.manager import VMManager

    vms = {v.id for v in VMManager(engine.root).all()}  # a vm's lease lives as long as the vm
    nets.release_stale({r.id for r in ce.all() if r.status.value in ("running", "paused")} | vms)
    _sweep(ce)
    pruned_nets = nets.prune(set())
    vols: list[str] = []
    if args.volumes:
        vols, _ = ce.volumes().prune()
    images, freed = engine.prune_images(all_images=args.all)
    for title, items in (("Deleted Containers:", removed), ("Deleted Networks:", pruned_nets),
                         ("Deleted Volumes:", vols)):  # fmt: skip
        if items:
            print(title)
            print("\n".join(items))
            print()
    if images:
        print("Deleted Images:")
        print("\n".join(f"{kind}: {ref}" for kind, ref in images))
        print()
    print(f"Total reclaimed space: {fmt.human_size(freed)}")
    return 0


def cmd_system_reset(engine: Engine, args: argparse.Namespace) -> int:
    """Podman's ``system reset``: every container, network, volume and image of this root."""
    if not args.force:
        sys.stderr.write("Error: system reset removes everything in the state root: use -f\n")
        return 125
    ce = _ce(engine)
    failed = []
    for rec in ce.all():
        try:
            ce.remove(rec.id, force=True, volumes=True)
        except CoveError as e:  # go on: a reset must not stop half-way
            failed.append(str(e))
    from cove.vm.manager import VMManager

    for name in VMManager(engine.root).all():
        try:
            VMManager(engine.root).remove(name.id, force=True)
        except CoveError as e:
            failed.append(str(e))
    ce.networks().reset()
    vols = ce.volumes()
    for v in vols.all():
        try:
            vols.remove(v.name, force=True)
        except CoveError as e:
            failed.append(str(e))
    try:  # what no record names any more: monitors, runtime state, bundles, responders
        _sweep(ce, everything=True)
    except (OSError, CoveError) as e:
        failed.append(f"sweep: {e}")
    engine.prune_images(all_images=True)
    from cove.sys import binfmt

    try:  # the emulators this root registered (others' registrations are never touched)
        binfmt.remove_own(engine.root)
    except CoveError as e:
        failed.append(str(e))
    for msg in failed:
        sys.stderr.write(f"Error: {msg}\n")
    return 1 if failed else 0


# -- volumes ------------------------------------------------------------------------------


def _labels(items: list[str]) -> dict[str, str]:
    return {k: v for k, _, v in (i.partition("=") for i in items)}


def cmd_volume_create(engine: Engine, args: argparse.Namespace) -> int:
    vols = _ce(engine).volumes()
    opts = _labels(args.opt)
    vol, _ = vols.create(args.name, labels=_labels(args.label), options=opts)
    print(vol.name)
    return 0


def cmd_volume_ls(engine: Engine, args: argparse.Namespace) -> int:
    vols = _ce(engine).volumes()
    rows = []
    for v in vols.all():
        if args.filter:
            users = vols.users(v.name)
            keep = True
            for f in args.filter:
                key, _, value = f.partition("=")
                if key == "dangling":
                    keep &= (not users) == (value.lower() in ("true", "1"))
                elif key == "name":
                    keep &= value in v.name
                elif key == "label":
                    k, eq, val = value.partition("=")
                    keep &= k in v.labels and (not eq or v.labels[k] == val)
            if not keep:
                continue
        rows.append(
            {
                "Driver": "local",
                "Name": v.name,
                "Mountpoint": vols.path(v.name),
                "Scope": "local",
                "Labels": ",".join(f"{k}={x}" for k, x in v.labels.items()),
            }
        )
    if args.quiet:
        if rows:
            print("\n".join(r["Name"] for r in rows))
        return 0
    print(
        fmt.format_rows(
            args.format,
            ["DRIVER", "VOLUME NAME"],
            rows,
            lambda r: [r["Driver"], r["Name"]],
            kind="volume",
        )
    )
    return 0


def cmd_volume_inspect(engine: Engine, args: argparse.Namespace) -> int:
    return fmt.inspect_each(args.names, _ce(engine).volumes().inspect, args.format)


def cmd_volume_rm(engine: Engine, args: argparse.Namespace) -> int:
    vols = _ce(engine).volumes()
    return fmt.each(args.names, lambda n: vols.remove(n, force=args.force))


def cmd_volume_prune(engine: Engine, args: argparse.Namespace) -> int:
    removed, freed = _ce(engine).volumes().prune(all_volumes=args.all)
    if removed:
        print("Deleted Volumes:")
        print("\n".join(removed))
        print()
    print(f"Total reclaimed space: {fmt.human_size(freed)}")
    return 0


# -- parsers ------------------------------------------------------------------------------


def _list(p: argparse.ArgumentParser, *names: str, help: str, dest: str | None = None) -> None:
    kw: dict[str, Any] = {"action": "append", "default": [], "help": help}
    if dest:
        kw["dest"] = dest
    p.add_argument(*names, **kw)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--name", help="assign a name to the container")
    p.add_argument("-h", "--hostname", help="container host name")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    _list(p, "-e", "--env", help="set environment variables")
    _list(p, "--env-file", help="read in a file of environment variables")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    _list(p, "--group-add", help="add additional groups to join")
    _list(p, "-v", "--volume", help="bind mount or volume: HOST:CTR[:ro], NAME:CTR[:ro], CTR")
    _list(p, "--mount", help="type=bind|volume|tmpfs,src=...,dst=...[,readonly]")
    _list(p, "--volumes-from", help="mount volumes from the specified container(s)")
    _list(p, "--tmpfs", help="mount a tmpfs directory PATH[:OPTIONS]")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("--entrypoint", help="overwrite the default ENTRYPOINT of the image")
    p.add_argument("--init", action="store_true", help="run an init inside the container")
    p.add_argument(
        "--network",
        "--net",
        default="bridge",
        help="bridge (default), NAME, none, host, container:NAME",
    )
    _list(p, "--network-alias", help="network-scoped alias for the container")
    p.add_argument("--ip", help="IPv4 address on the network")
    p.add_argument("-P", "--publish-all", action="store_true", help="publish every exposed port")
    _list(p, "--dns", help="set custom DNS servers")
    _list(p, "--add-host", help="add a custom host-to-IP mapping (host:ip)")
    p.add_argument("--pid", default="", help="PID namespace to use (host)")
    p.add_argument("--ipc", default="", help="IPC namespace to use (host)")
    p.add_argument("--uts", default="", help="UTS namespace to use (host)")
    p.add_argument("--userns", default="", help="auto, host or keep-id (rootless)")
    _list(p, "--uidmap", help="UID map CONTAINER_ID:HOST_ID:SIZE (implies a user namespace)")
    _list(p, "--gidmap", help="GID map CONTAINER_ID:HOST_ID:SIZE")
    _list(p, "--cap-add", help="add Linux capabilities")
    _list(p, "--cap-drop", help="drop Linux capabilities")
    p.add_argument("--privileged", action="store_true", help="give extended privileges")
    _list(p, "--security-opt", help="security options (seccomp=unconfined|FILE, no-new-privileges)")
    p.add_argument("-m", "--memory", help="memory limit")
    p.add_argument("--memory-swap", help="swap limit equal to memory plus swap: -1 unlimited")
    p.add_argument("--cpus", help="number of CPUs")
    p.add_argument("-c", "--cpu-shares", type=int, help="CPU shares (relative weight)")
    p.add_argument("--cpuset-cpus", help="CPUs in which to allow execution (0-3, 0,1)")
    p.add_argument("--pids-limit", type=int, help="tune container pids limit (-1 unlimited)")
    _list(p, "--device", help="add a host device HOST[:CONTAINER][:PERMS]")
    _list(p, "--ulimit", help="ulimit options NAME=SOFT[:HARD]")
    p.add_argument("--platform", help="os/arch the image must match")
    _list(p, "-l", "--label", help="set metadata on a container")
    p.add_argument("--restart", default="no", help="no, on-failure[:N], always, unless-stopped")
    p.add_argument("--health-cmd", help="command to run to check health")
    p.add_argument("--health-interval", help="time between running the check (e.g. 30s)")
    p.add_argument("--health-timeout", help="maximum time to allow one check to run")
    p.add_argument("--health-retries", type=int, help="consecutive failures to report unhealthy")
    p.add_argument("--health-start-period", help="start period before failures count")
    p.add_argument("--no-healthcheck", action="store_true", help="disable any HEALTHCHECK")
    p.add_argument(
        "--log-driver",
        default="json-file",
        choices=["json-file"],
        help="logging driver (json-file)",
    )
    _list(p, "--log-opt", help="log driver options: max-size=10m, max-file=3")
    p.add_argument("--stop-signal", help="signal to stop the container")
    p.add_argument("--stop-timeout", type=int, help="timeout (in seconds) to stop a container")
    _list(p, "--expose", help="expose a port or a range of ports")
    _list(p, "-p", "--publish", help="publish ports [IP:][HOSTPORT:]CPORT[/udp], ranges too")
    p.add_argument("--pull", default="missing", choices=["missing", "always", "never"],
                   help="pull the image before running (default missing)")  # fmt: skip
    p.add_argument(
        "--vm",
        action="store_true",
        help="run in a virtual machine of its own (same as --isolation vm)",
    )
    p.add_argument(
        "--isolation",
        choices=["container", "vm"],
        default="container",
        help="container (namespaces, shared kernel) or vm (QEMU, own kernel)",
    )
    p.add_argument("--kernel", help="--vm: guest kernel (default: cove vm kernel fetch's)")
    p.add_argument(
        "--tls-verify",
        type=lambda v: v.lower() in ("true", "1"),
        default=True,
        help="false: pull without TLS checks (localhost or insecure registries)",
    )


def _containers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def _register_common(sub: Any, only: str | None = None) -> None:
    """Verbs that exist both top-level and under ``container``; ``only`` builds just one
    (parsers cost milliseconds each, and a verb needs only its own)."""
    if only is None or only == "run":
        p = sub.add_parser(
            "run", help="create and run a new container from an image", add_help=False
        )
        p.add_argument("--help", action="help", help="show this help message and exit")
        add_run_flags(p)
        p.add_argument("-d", "--detach", action="store_true", help="run in the background")
        p.add_argument("image", metavar="IMAGE")
        p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
        p.set_defaults(func=cmd_run)
    if only is None or only == "create":
        p = sub.add_parser("create", help="create a new container", add_help=False)
        p.add_argument("--help", action="help", help="show this help message and exit")
        add_run_flags(p)
        p.add_argument("image", metavar="IMAGE")
        p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
        p.set_defaults(func=cmd_create)
    if only is None or only == "start":
        p = sub.add_parser("start", help="start one or more stopped containers")
        p.add_argument("-a", "--attach", action="store_true", help="attach STDOUT/STDERR")
        p.add_argument("-i", "--interactive", action="store_true", help="attach STDIN")
        p.add_argument(
            "--all",
            action="store_true",
            help="start every stopped container (with --filter: those matching)",
        )
        _list(
            p,
            "-f",
            "--filter",
            help="with --all: restart-policy=always|unless-stopped|on-failure|no (ORed)",
        )
        p.add_argument("containers", nargs="*", metavar="CONTAINER")
        p.set_defaults(func=cmd_start)  # fmt: skip
    if only is None or only == "stop":
        p = sub.add_parser("stop", help="stop one or more running containers")
        p.add_argument(
            "-t", "--time", "--timeout", type=float, help="seconds to wait before killing"
        )
        p.add_argument("-s", "--signal", help="signal to send (default: the STOPSIGNAL)")
        _containers_arg(p)
        p.set_defaults(func=cmd_stop)
    if only is None or only == "kill":
        p = sub.add_parser("kill", help="kill one or more running containers")
        p.add_argument("-s", "--signal", default="KILL", help="signal to send (default KILL)")
        _containers_arg(p)
        p.set_defaults(func=cmd_kill)
    if only is None or only == "restart":
        p = sub.add_parser("restart", help="restart one or more containers")
        p.add_argument(
            "-t", "--time", "--timeout", type=float, help="seconds to wait before killing"
        )
        _containers_arg(p)
        p.set_defaults(func=cmd_restart)
    if only is None or only == "wait":
        p = sub.add_parser("wait", help="block until containers stop, print their exit codes")
        _containers_arg(p)
        p.set_defaults(func=cmd_wait)
    if only is None or only == "pause" or only == "unpause":
        for name, fn in (("pause", cmd_pause), ("unpause", cmd_unpause)):
            p = sub.add_parser(name, help=f"{name} all processes within containers")
            _containers_arg(p)
            p.set_defaults(func=fn)
    if only is None or only == "exec":
        p = sub.add_parser("exec", help="execute a command in a running container")
        p.add_argument(
            "-d", "--detach", action="store_true", help="run the command in the background"
        )
        p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
        p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
        _list(p, "-e", "--env", help="set environment variables")
        p.add_argument("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
        p.add_argument("-w", "--workdir", help="working directory inside the container")
        p.add_argument("--privileged", action="store_true", help="extended privileges")
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
        p.set_defaults(func=cmd_exec)
    if only is None or only == "attach":
        p = sub.add_parser("attach", help="attach to a running container's output (and input)")
        p.add_argument("--no-stdin", action="store_true", help="do not attach STDIN")
        p.add_argument(
            "--sig-proxy",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="proxy received signals to the process",
        )
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(func=cmd_attach)
    if only is None or only == "logs":
        p = sub.add_parser("logs", help="fetch the logs of a container")
        p.add_argument("-f", "--follow", action="store_true", help="follow log output")
        p.add_argument("-n", "--tail", default="all", help="lines from the end (default all)")
        p.add_argument("--since", help="since timestamp (2013-01-02T13:23:37Z) or relative (42m)")
        p.add_argument("--until", help="before timestamp or relative")
        p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
        p.add_argument("--details", action="store_true", help="accepted for compatibility")
        p.add_argument(
            "--boot",
            action="store_true",
            help="a --vm run: its guest's console (kernel and agent) instead",
        )
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(func=cmd_logs)
    if only is None or only == "top":
        p = sub.add_parser("top", help="display the running processes of a container")
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS OPTIONS")
        p.set_defaults(func=cmd_top)
    if only is None or only == "stats":
        p = sub.add_parser("stats", help="live resource usage statistics of containers")
        p.add_argument("-a", "--all", action="store_true", help="show all containers")
        p.add_argument("--no-stream", action="store_true", help="print one sample and exit")
        p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
        p.add_argument("--format", help="table, json, or a Go template")
        p.add_argument("containers", nargs="*", metavar="CONTAINER")
        p.set_defaults(func=cmd_stats)
    if only is None or only == "cp":
        p = sub.add_parser("cp", help="copy files between a container and the host")
        p.add_argument("-L", "--follow-link", action="store_true", help="follow a symlink in SRC")
        p.add_argument("-a", "--archive", action="store_true", help="accepted for compatibility")
        p.add_argument("src", metavar="SRC")
        p.add_argument("dest", metavar="DEST")
        p.set_defaults(func=cmd_cp)
    if only is None or only == "diff":
        p = sub.add_parser("diff", help="changes to files or directories of a container")
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(func=cmd_diff)
    if only is None or only == "export":
        p = sub.add_parser("export", help="export a container's filesystem as a tar archive")
        p.add_argument("-o", "--output", help="write to a file instead of STDOUT")
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(func=cmd_export)
    if only is None or only == "commit":
        p = sub.add_parser("commit", help="create a new image from a container's changes")
        p.add_argument("-a", "--author", help="author")
        p.add_argument("-m", "--message", help="commit message")
        _list(p, "-c", "--change", help="apply Dockerfile instruction to the created image")
        p.add_argument(
            "-p",
            "--pause",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="pause the container during commit (default true)",
        )
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")
        p.set_defaults(func=cmd_commit)
    if only is None or only == "rename":
        p = sub.add_parser("rename", help="rename a container")
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("new_name", metavar="NEW_NAME")
        p.set_defaults(func=cmd_rename)
    if only is None or only == "port":
        p = sub.add_parser("port", help="list port mappings of the container")
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("private_port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
        p.set_defaults(func=cmd_port)


def _rm_parser(sub: Any, name: str, aliases: list[str] | None = None) -> None:
    p = sub.add_parser(name, aliases=aliases or [], help="remove one or more containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes")
    _containers_arg(p)
    p.set_defaults(func=cmd_rm)


def _ps_parser(sub: Any, name: str, aliases: list[str] | None = None) -> None:
    p = sub.add_parser(name, aliases=aliases or [], help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    p.add_argument("-s", "--size", action="store_true", help="display total file sizes")
    p.add_argument("-n", "--last", type=int, help="show n last created containers")
    p.add_argument("-l", "--latest", dest="last", action="store_const", const=1)
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    _list(p, "-f", "--filter", help="filter: status=, name=, label=, ancestor=, id=, exited=")
    p.add_argument("--format", help="table, json, or a Go template")
    p.set_defaults(func=cmd_ps)


def register(sub: Any, command: str | None = None) -> None:
    if command in COMMON:
        _register_common(sub, command)
        return
    _register_common(sub)
    _rm_parser(sub, "rm")
    _ps_parser(sub, "ps")
    p = sub.add_parser("inspect", help="low-level information on containers or images")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-f", "--format", help="format with a Go template")
    p.add_argument("--type", choices=["container", "image"], help="only this type")
    p.set_defaults(func=cmd_inspect)

    container = sub.add_parser("container", help="manage containers")
    csub = container.add_subparsers(
        dest="container_command", metavar="COMMAND", parser_class=type(container)
    )
    _register_common(csub)
    _rm_parser(csub, "rm", ["remove"])
    _ps_parser(csub, "ls", ["list", "ps"])
    p = csub.add_parser("inspect", help="display detailed information on containers")
    p.add_argument("names", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--format", help="format with a Go template")
    p.set_defaults(func=cmd_container_inspect)
    p = csub.add_parser("prune", help="remove all stopped containers")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.set_defaults(func=cmd_container_prune)

    from cove.cli import networks

    networks.register(sub)
    system = sub.add_parser("system", help="manage the state root")
    ssub = system.add_subparsers(dest="system_command", metavar="COMMAND",
                                 parser_class=type(system))  # fmt: skip
    p = ssub.add_parser(
        "prune",
        help="remove stopped containers, unused networks, "
        "dangling images (and with --volumes unused anonymous volumes)",
    )
    p.add_argument("-a", "--all", action="store_true", help="all unused images, not just dangling")
    p.add_argument("--volumes", action="store_true", help="prune anonymous volumes too")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt")
    p.set_defaults(func=cmd_system_prune)
    p = ssub.add_parser("reset", help="remove every container, network, volume and image")
    p.add_argument("-f", "--force", action="store_true", help="really do it")
    p.set_defaults(func=cmd_system_reset)
    p = ssub.add_parser(
        "check",
        help="verify the database, the records, the image index, blobs and layers",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="rebuild what can be rebuilt from the bundles and blobs on disk",
    )
    p.add_argument(
        "--quick", action="store_true", help="skip hashing every blob; SQLite's quick_check only"
    )
    p.set_defaults(func=cmd_system_check)  # fmt: skip
    volume = sub.add_parser("volume", help="manage volumes")
    vsub = volume.add_subparsers(
        dest="volume_command", metavar="COMMAND", parser_class=type(volume)
    )
    p = vsub.add_parser("create", help="create a volume")
    p.add_argument("name", nargs="?", metavar="VOLUME")
    p.add_argument("-d", "--driver", default="local", choices=["local"], help="driver (local)")
    _list(p, "--label", help="set metadata for a volume")
    _list(p, "-o", "--opt", help="driver specific options")
    p.set_defaults(func=cmd_volume_create)
    p = vsub.add_parser("ls", aliases=["list"], help="list volumes")
    p.add_argument("-q", "--quiet", action="store_true", help="only display volume names")
    _list(p, "-f", "--filter", help="filter: dangling=, name=, label=")
    p.add_argument("--format", help="table, json, or a Go template")
    p.set_defaults(func=cmd_volume_ls)
    p = vsub.add_parser("inspect", help="display detailed information on volumes")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    p.add_argument("-f", "--format", help="format with a Go template")
    p.set_defaults(func=cmd_volume_inspect)
    p = vsub.add_parser("rm", aliases=["remove"], help="remove one or more volumes")
    p.add_argument("-f", "--force", action="store_true", help="force the removal")
    p.add_argument("names", nargs="+", metavar="VOLUME")
    p.set_defaults(func=cmd_volume_rm)
    p = vsub.add_parser("prune", help="remove unused anonymous volumes (-a: all unused)")
    p.add_argument("-a", "--all", action="store_true", help="remove all unused volumes")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    p.set_defaults(func=cmd_volume_prune)
