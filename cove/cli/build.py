"""Build verbs: build (also ``image build``), builder prune."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cove.engine import Engine


def cmd_build(engine: Engine, args: argparse.Namespace) -> int:
    from cove.build.builder import BuildOptions, build
    from cove.containers.engine import ContainerEngine

    opts = BuildOptions(
        context=args.context,
        dockerfile=args.file,
        tags=args.tag,
        build_args=args.build_arg,
        target=args.target,
        no_cache=args.no_cache,
        pull=args.pull,
        platform=args.platform,
        labels=args.label,
        quiet=args.quiet,
        progress=args.progress,
        network=args.network,
    )
    image_id = build(ContainerEngine(engine), opts, sys.stdin.buffer)
    print(image_id)
    return 0


def cmd_builder_prune(engine: Engine, args: argparse.Namespace) -> int:
    from cove.build.cache import BuildCache

    count = BuildCache(engine.root).prune()
    print(f"Deleted {count} build cache entries")
    return 0


def _add_build(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="build an image from a Dockerfile")
    p.add_argument("context", metavar="CONTEXT", help="a directory, a tarball, or - (stdin)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name the image NAME[:TAG]")
    p.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile); - for stdin")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                   help="set a build-time variable")  # fmt: skip
    p.add_argument("--target", help="stop at this stage")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--pull", action="store_true", help="always pull base images")
    p.add_argument("--platform", help="os/arch of the image (default: the host's)")
    p.add_argument("--label", action="append", default=[], metavar="K=V",
                   help="add a label to the image")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("--progress", default="auto", choices=["auto", "plain", "tty"],
                   help="how steps are shown (default: tty on a terminal, else plain)")  # fmt: skip
    p.add_argument("--network", default="bridge",
                   help="RUN steps' network: bridge (default), none, host, NAME")  # fmt: skip
    p.set_defaults(func=cmd_build)


def register(sub: Any, image_sub: Any | None = None) -> None:
    _add_build(sub, "build")
    if image_sub is not None:
        _add_build(image_sub, "build")
    builder = sub.add_parser("builder", help="manage the build cache")
    bsub = builder.add_subparsers(dest="builder_command", metavar="COMMAND",
                                  parser_class=type(builder))  # fmt: skip
    p = bsub.add_parser("prune", help="remove the build cache")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt (there is no prompt)")
    p.add_argument("-a", "--all", action="store_true", help="all entries (the only mode)")
    p.set_defaults(func=cmd_builder_prune)
