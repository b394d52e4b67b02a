"""The ``cove`` command line: parse, call the engine, format. Handlers live in sibling modules."""

# ruff: noqa: E402  (the trace mark comes before the CLI's own imports: they are the next step)

from __future__ import annotations

from cove.sys import trace

trace.mark("interpreter")  # bench/start.py subtracts its clock before the spawn

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from cove import __version__
from cove.errors import CorruptState, CoveError
from cove.sys.private import ensure_private, set_private_umask


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    # argparse's default asks shutil.get_terminal_size for the width, and every parser and
    # argument makes a formatter: shutil (with bz2, lzma and fnmatch) on every command. The
    # same answer without it: $COLUMNS, else the terminal on stdout, else 80
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    else:
        try:
            width = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
        except (AttributeError, ValueError, OSError):
            width = 80
        width = width or 80
    return argparse.HelpFormatter(prog, width=max(width - 2, 11))


class _Parser(argparse.ArgumentParser):
    """argparse with Docker's error style: one line, exit 125."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _help_formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"Error: {message}\nSee '{self.prog} --help'.\n")
        raise SystemExit(125)


def _command(argv: Sequence[str]) -> str | None:
    """The verb in ``argv``, skipping the global options (and --root's value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--root":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given the verb, only that verb's module is imported (a lean start path)."""
    from cove.cli import containers

    container_verbs = containers.VERBS

    parser = _Parser(prog="cove", description="Run OCI images as containers or as VMs.")
    parser.add_argument("--version", action="version", version=f"cove version {__version__}")
    parser.add_argument(
        "--root", help="state root (default: $COVE_ROOT or /var/lib/cove)", default=None
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if command is None or command not in container_verbs:
        from cove.cli import images

        images.register(sub)
        from cove.cli import registry

        registry.register(sub)
        from cove.cli import vm

        vm.register(sub)
        vm.register_compare(sub)
        from cove.cli import serve

        serve.register(sub)
    if command is None or command in container_verbs:
        containers.register(sub, command)
    return parser


def _stdio_open() -> None:
    """Fill closed fds 0-2 with /dev/null: otherwise the first pipe cove makes could land on
    fd 0-2 and be taken for stdio by a child (the monitor, a container)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one


def _debug_log() -> None:
    """``--debug``: cove's debug records (a cleanup that failed and was passed over, see
    ``errors.best_effort``) to stderr; logging is imported only then."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("DEBUG: %(name)s: %(message)s"))
    log = logging.getLogger("cove")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)


# verbs whose process ends right after the handler returns, skipping the interpreter's
# teardown (module and object finalization, ~10-15 ms of a ~100 ms run); see main()
_LEAN_EXIT: list[bool] = []


def main(argv: Sequence[str] | None = None) -> int:
    try:
        rc = _main(argv)
    finally:
        trace.mark("exit")
        trace.dump()
    if argv is None and _LEAN_EXIT and sys.getprofile() is None and sys.gettrace() is None:
        # (a profiler or a coverage tracer writes its data at the interpreter's exit)
        # the process's own command line (not a caller's main([...])): a foreground
        # container run has closed its fds, committed its rows (SQLite's WAL needs no close
        # to keep them) and started no thread, so nothing is left for finalization but
        # freeing memory; Python's buffered stdio is all that must reach its files
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed pipe: what the interpreter would only report at exit
        os._exit(rc)
    return rc


def _main(argv: Sequence[str] | None) -> int:
    trace.mark("cli-import")
    _stdio_open()
    set_private_umask()  # everything made under the state root is private unless chmodded
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _command(argv)
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    trace.mark("parse")
    if args.debug:
        _debug_log()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 125
    from cove.containers.isolation import register
    from cove.engine import Engine
    from cove.vm.isolation import VM

    register(VM())  # the verbs find a vm run's driver here (containers never import vm)
    try:
        if os.geteuid() != 0:  # rootless: join the user's namespace (before any thread)
            from cove.sys import userns

            userns.enter()
        engine = Engine(args.root)
        ensure_private(engine.root)
        trace.mark("engine")
        rc: int = args.func(engine, args)
        # lean exit for a container run, foreground or -d (after the hand-off a detached
        # run has no thread and no child: the monitor was double-forked away), and for ps,
        # which only reads; the verb comes from argv (args.command is run's COMMAND operand)
        if (verb == "run" and not args.vm and args.isolation != "vm") or verb == "ps":
            _LEAN_EXIT.append(True)
        return rc
    except CoveError as e:
        if args.debug:
            raise
        sys.stderr.write(f"Error: {e}\n")
        if isinstance(e, CorruptState) and verb in ("run", "create"):
            return 125  # Docker: run and create fail with 125 when the engine itself fails
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
    except Exception as e:
        # a database damaged after this command's open-time check: still one line, no
        # traceback (sqlite3 is only imported here if a store already imported it)
        if args.debug or type(e).__module__ != "sqlite3":
            raise
        from cove.state import corrupt_error, is_corrupt

        if not is_corrupt(e):
            raise
        from cove.engine import default_root

        path = os.path.join(os.path.abspath(args.root or default_root()), "state.db")
        sys.stderr.write(f"Error: {corrupt_error(path, e)}\n")
        return 125 if verb in ("run", "create") else 1
