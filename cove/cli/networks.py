"""``cove network``: create, ls, inspect, rm, prune, connect, disconnect."""

from __future__ import annotations

import argparse
from typing import Any

from cove.cli import fmt
from cove.engine import Engine


def _ce(engine: Engine) -> Any:
    from cove.containers.engine import ContainerEngine

    return ContainerEngine(engine)


def cmd_create(engine: Engine, args: argparse.Namespace) -> int:
    labels = {k: v for k, _, v in (i.partition("=") for i in args.label)}
    n = (
        _ce(engine)
        .networks()
        .create(
            args.name,
            subnet=args.subnet,
            gateway=args.gateway,
            internal=args.internal,
            labels=labels,
        )
    )
    print(n.id)
    return 0


def cmd_ls(engine: Engine, args: argparse.Namespace) -> int:
    nm = _ce(engine).networks()
    nm.default()  # Docker always lists the default network
    rows = [{"ID": n.id[:12], "Name": n.name, "Driver": "bridge", "Scope": "local",
             "Subnet": n.subnet, "Internal": n.internal} for n in nm.all()]  # fmt: skip
    rows += [{"ID": "", "Name": x, "Driver": x, "Scope": "local", "Subnet": "",
              "Internal": False} for x in ("host", "none")]  # fmt: skip
    for f in args.filter:
        key, _, value = f.partition("=")
        rows = [r for r in rows if key != "name" or value in r["Name"]]
    if args.quiet:
        print("\n".join(r["ID"] or r["Name"] for r in rows))
        return 0
    print(fmt.format_rows(args.format, ["NETWORK ID", "NAME", "DRIVER", "SCOPE"], rows,
                          lambda r: [r["ID"], r["Name"], r["Driver"], r["Scope"]],
                          kind="network"))  # fmt: skip
    return 0


def cmd_inspect(engine: Engine, args: argparse.Namespace) -> int:
    ce = _ce(engine)
    nm = ce.networks()
    users = ce.network_users()
    return fmt.inspect_each(args.names, lambda ref: nm.inspect(nm.get(ref), users), args.format)


def cmd_rm(engine: Engine, args: argparse.Namespace) -> int:
    return fmt.each(args.names, _ce(engine).networks().remove)


def cmd_prune(engine: Engine, args: argparse.Namespace) -> int:
    removed = _ce(engine).networks().prune(set())
    if removed:
        print("Deleted Networks:")
        print("\n".join(removed))
    return 0


def cmd_connect(engine: Engine, args: argparse.Namespace) -> int:
    _ce(engine).connect(args.network, args.container, aliases=args.alias, ip=args.ip)
    return 0


def cmd_disconnect(engine: Engine, args: argparse.Namespace) -> int:
    _ce(engine).disconnect(args.network, args.container)
    return 0


def register(sub: Any) -> None:
    network = sub.add_parser("network", help="manage networks")
    nsub = network.add_subparsers(dest="network_command", metavar="COMMAND",
                                  parser_class=type(network))  # fmt: skip
    p = nsub.add_parser("create", help="create a network")
    p.add_argument("name", metavar="NETWORK")
    p.add_argument("--subnet", help="subnet in CIDR format, e.g. 10.99.0.0/24")
    p.add_argument("--gateway", help="gateway address (default: the first of the subnet)")
    p.add_argument("--internal", action="store_true", help="no access to the outside (no NAT)")
    p.add_argument("-d", "--driver", default="bridge", choices=["bridge"], help="bridge")
    p.add_argument("--label", action="append", default=[], help="metadata")
    p.set_defaults(func=cmd_create)
    p = nsub.add_parser("ls", aliases=["list"], help="list networks")
    p.add_argument("-q", "--quiet", action="store_true", help="only display network IDs")
    p.add_argument("-f", "--filter", action="append", default=[], help="name=")
    p.add_argument("--format", help="table, json, or a Go template")
    p.set_defaults(func=cmd_ls)
    p = nsub.add_parser("inspect", help="display detailed information on networks")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.add_argument("-f", "--format", help="format with a Go template")
    p.set_defaults(func=cmd_inspect)
    p = nsub.add_parser("rm", aliases=["remove"], help="remove networks")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(func=cmd_rm)
    p = nsub.add_parser("prune", help="remove all unused networks")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt")
    p.set_defaults(func=cmd_prune)
    p = nsub.add_parser("connect", help="connect a running container to a network")
    p.add_argument("--alias", action="append", default=[], help="network-scoped alias")
    p.add_argument("--ip", help="IPv4 address")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=cmd_connect)
    p = nsub.add_parser("disconnect", help="disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true", help="accepted for compatibility")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=cmd_disconnect)
