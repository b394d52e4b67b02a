"""``cove serve``: the Docker Engine API on a unix socket (the server lives in cove.api,
imported only when this verb runs)."""

from __future__ import annotations

import argparse
from typing import Any

from cove.engine import Engine


def cmd_serve(engine: Engine, args: argparse.Namespace) -> int:
    from cove.api.server import serve

    return serve(engine.root, args.host, args.group, args.verbose)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the Docker Engine API (v1.41) on a unix socket",
        description="Serve the Docker Engine API v1.41 so that docker, compose, docker-py and "
        "testcontainers drive cove unchanged. Access to the socket is root-equivalent, as "
        "membership of Docker's group is. Containers started through it are cove's own: "
        "they keep running when the server stops.",
    )
    p.add_argument(
        "-H",
        "--host",
        default="unix:///run/cove.sock",
        help="unix:///PATH to listen on (default unix:///run/cove.sock; ignored under "
        "systemd socket activation)",
    )
    p.add_argument(
        "--group",
        default=None,
        help="the socket's group (mode 0660 root:GROUP; default: docker if it exists, else root)",
    )
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.set_defaults(func=cmd_serve)
