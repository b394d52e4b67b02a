"""Container verbs: run, rm, ps, and container inspect."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cove.cli import fmt
from cove.engine import ContainerEngine, Engine
from cove.errors import CoveError


def _opts(args: argparse.Namespace) -> Any:
    from cove.container import RunOptions

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
        ulimits=args.ulimit,
        platform=args.platform,
        labels=args.label,
    )


def cmd_run(engine: Engine, args: argparse.Namespace) -> int:
    from cove.runtime.api import ContainerStartError

    try:
        return ContainerEngine(engine).run(_opts(args))
    except ContainerStartError as e:
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except CoveError as e:  # anything that kept the container from starting is cove's: 125
        sys.stderr.write(f"Error: {e}\n")
        return 125


def cmd_rm(engine: Engine, args: argparse.Namespace) -> int:
    rc = 0
    ce = ContainerEngine(engine)
    for ref in args.containers:
        try:
            ce.remove(ref, force=args.force)
            print(ref)
        except CoveError as e:
            sys.stderr.write(f"Error: {e}\n")
            rc = 1
    return rc


def cmd_ps(engine: Engine, args: argparse.Namespace) -> int:
    ce = ContainerEngine(engine)
    rows = []
    for rec in ce.list():
        info = ce.inspect(rec.id)
        state = info["State"]
        if not args.all and not state["Running"]:
            continue
        if state["Running"]:
            status = "Up " + fmt.human_duration(_now() - rec.started_at)
        elif rec.started_at:
            status = f"Exited ({rec.exit_code}) {fmt.ago_ts(rec.finished_at)}"
        else:
            status = "Created"
        rows.append(
            {
                "ID": rec.id[:12],
                "Image": rec.image,
                "Command": "",
                "Names": rec.name,
                "Status": status,
                "State": state["Status"],
                "CreatedAt": rec.created,
            }
        )
    if args.quiet:
        if rows:
            print("\n".join(r["ID"] for r in rows))
        return 0
    out = fmt.format_rows(
        args.format,
        ["CONTAINER ID", "IMAGE", "STATUS", "NAMES"],
        rows,
        lambda r: [r["ID"], r["Image"], r["Status"], r["Names"]],
    )
    print(out)
    return 0


def _now() -> float:
    import time

    return time.time()


def cmd_container_inspect(engine: Engine, args: argparse.Namespace) -> int:
    ce = ContainerEngine(engine)
    out, rc = [], 0
    for ref in args.names:
        try:
            out.append(ce.inspect(ref))
        except CoveError as e:
            sys.stderr.write(f"Error: {e}\n")
            rc = 1
    if args.format:
        for o in out:
            print(fmt.render(args.format, o))
    else:
        print(json.dumps(out, indent=4))
    return rc


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
    _list(p, "-v", "--volume", help="bind mount a volume HOST:CONTAINER[:ro]")
    _list(p, "--tmpfs", help="mount a tmpfs directory PATH[:OPTIONS]")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("--entrypoint", help="overwrite the default ENTRYPOINT of the image")
    p.add_argument("--init", action="store_true", help="run an init inside the container")
    p.add_argument("--network", "--net", default="none", help="none or host (default none)")
    p.add_argument("--pid", default="", help="PID namespace to use (host)")
    p.add_argument("--ipc", default="", help="IPC namespace to use (host)")
    p.add_argument("--uts", default="", help="UTS namespace to use (host)")
    p.add_argument("--userns", default="", help="user namespace to use (auto or host)")
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
    _list(p, "--ulimit", help="ulimit options NAME=SOFT[:HARD]")
    p.add_argument("--platform", help="os/arch the image must match")
    _list(p, "-l", "--label", help="set metadata on a container")


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="create and run a new container from an image", add_help=False)
    p.add_argument("--help", action="help", help="show this help message and exit")
    add_run_flags(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    p.set_defaults(func=cmd_run)

    for name in ("rm",):
        p = sub.add_parser(name, help="remove one or more containers")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
        p.add_argument("-v", "--volumes", action="store_true", help="accepted for compatibility")
        p.set_defaults(func=cmd_rm)
    for name in ("ps",):
        p = sub.add_parser(name, help="list containers")
        p.add_argument("-a", "--all", action="store_true", help="show all containers")
        p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
        p.add_argument("--format", help="table, json, or a Go template")
        p.set_defaults(func=cmd_ps)
    container = sub.add_parser("container", help="manage containers")
    csub = container.add_subparsers(
        dest="container_command", metavar="COMMAND", parser_class=type(container)
    )
    p = csub.add_parser("inspect", help="display detailed information on containers")
    p.add_argument("names", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--format", help="format with a Go template")
    p.set_defaults(func=cmd_container_inspect)
    p = csub.add_parser("rm", help="remove one or more containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.add_argument("-f", "--force", action="store_true")
    p.set_defaults(func=cmd_rm)
    p = csub.add_parser("ls", aliases=["list"], help="list containers")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format")
    p.set_defaults(func=cmd_ps)
