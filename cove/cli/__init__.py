"""The ``cove`` command line: parse, call the engine, format. Handlers live in sibling modules."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cove import __version__
from cove.errors import CoveError


class _Parser(argparse.ArgumentParser):
    """argparse with Docker's error style: one line, exit 125."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"Error: {message}\nSee '{self.prog} --help'.\n")
        raise SystemExit(125)


def build_parser() -> argparse.ArgumentParser:
    from cove.cli import containers, images

    parser = _Parser(prog="cove", description="Run OCI images as containers or as VMs.")
    parser.add_argument("--version", action="version", version=f"cove version {__version__}")
    parser.add_argument(
        "--root", help="state root (default: $COVE_ROOT or /var/lib/cove)", default=None
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    images.register(sub)
    containers.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 125
    from cove.engine import Engine

    try:
        engine = Engine(args.root)
        rc: int = args.func(engine, args)
        return rc
    except CoveError as e:
        if args.debug:
            raise
        sys.stderr.write(f"Error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if args.debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"Error: {e.strerror or e}{where}\n")
        return 1
