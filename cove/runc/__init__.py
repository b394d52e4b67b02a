"""``cove-runc``: cove's runtime behind runc's command line (containerd's shim, conmon,
podman and runtime-tools call it as a single executable path).

This face parses runc's flags and prints runc's output; ``cove.runtime.oci`` does the
work. Errors go to stderr and, with ``--log``, to that file as runc writes them (JSON lines
``{"level":"error","msg":...,"time":...}`` with ``--log-format json``, which the shim reads
back); every failure of ours exits 1, as runc. Imports stay lazy: the shim runs ``state``
and ``kill`` often.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

if TYPE_CHECKING:
    import argparse
    import types

    from cove.runtime.oci import OciRuntime

VERSION = "0.1.0"
SPEC_VERSION = "1.1.0"


class _Log:
    """runc's logrus output: to ``--log`` (or stderr) in text or JSON lines."""

    def __init__(self, path: str, fmt: str, debug: bool) -> None:
        self.path, self.fmt, self.debug_on = path, fmt, debug

    def write(self, level: str, msg: str) -> None:
        import json
        import time

        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        stamp += f".{int((now % 1) * 1e9):09d}Z"
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg={json.dumps(msg)}'
        if self.path:
            try:
                fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
                return
        os.write(2, (line + "\n").encode())

    def debug(self, msg: str) -> None:
        if self.debug_on:
            self.write("debug", msg)


class _Unbuilt:
    """Stands in for the subparser of a verb not asked for: its arguments are not built."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        return None


_VERBS = ("create", "run", "start", "state", "pause", "resume", "list", "kill", "delete",
          "exec", "ps", "update", "events", "features", "spec")  # fmt: skip


def _parser(only: str = "") -> argparse.ArgumentParser:
    """runc's command line; ``only`` (a verb) builds that verb's subparser alone (the
    other fourteen cost ~2 ms on every call the shim makes), anything else builds all."""
    import argparse

    def formatter(prog: str) -> argparse.HelpFormatter:
        # argparse's own default asks shutil for the terminal's width, and building the
        # subparsers makes one: shutil (with bz2 and lzma) on every verb. $COLUMNS or 80
        # as shutil falls back, for the help text only
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() else 80
        return argparse.HelpFormatter(prog, width=max(width - 2, 20))

    p = argparse.ArgumentParser(prog="cove-runc", add_help=True, formatter_class=formatter)
    p.add_argument("--root", default="/run/cove-runc")
    p.add_argument("--log", default="")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--rootless", default="auto")
    p.add_argument("--criu", default="")
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="command")

    def cmd(name: str) -> argparse.ArgumentParser | _Unbuilt:
        if only in _VERBS and name != only:
            return _Unbuilt()
        return sub.add_parser(name, formatter_class=formatter)

    for name in ("create", "run"):
        c = cmd(name)
        c.add_argument("-b", "--bundle", default="")
        c.add_argument("--pid-file", default="")
        c.add_argument("--console-socket", default="")
        c.add_argument("--pidfd-socket", default="")
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        c.add_argument("--preserve-fds", type=int, default=0)
        c.add_argument("-d", "--detach", action="store_true")
        c.add_argument("--keep", action="store_true")
        c.add_argument("id")
    for name in ("start", "state", "pause", "resume"):
        cmd(name).add_argument("id")
    c = cmd("list")
    c.add_argument("-f", "--format", default="table", choices=["table", "json"])
    c.add_argument("-q", "--quiet", action="store_true")
    c = cmd("kill")
    c.add_argument("-a", "--all", action="store_true")
    c.add_argument("id")
    c.add_argument("signal", nargs="?", default="SIGTERM")
    c = cmd("delete")
    c.add_argument("-f", "--force", action="store_true")
    c.add_argument("id")
    c = cmd("exec")
    c.add_argument("-p", "--process", default="")
    c.add_argument("-d", "--detach", action="store_true")
    c.add_argument("--pid-file", default="")
    c.add_argument("--console-socket", default="")
    c.add_argument("--pidfd-socket", default="")
    c.add_argument("-t", "--tty", action="store_true")
    c.add_argument("--cwd", default="")
    c.add_argument("-e", "--env", action="append", default=[])
    c.add_argument("-u", "--user", default="")
    c.add_argument("--preserve-fds", type=int, default=0)
    c.add_argument("id")
    c.add_argument("args", nargs=argparse.REMAINDER)
    c = cmd("ps")
    c.add_argument("-f", "--format", default="table", choices=["table", "json"])
    c.add_argument("id")
    c.add_argument("ps_args", nargs=argparse.REMAINDER)
    c = cmd("update")
    c.add_argument("-r", "--resources", default="")
    for flag in (
        "--memory", "--memory-swap", "--memory-reservation", "--cpu-shares", "--cpu-quota",
        "--cpu-period", "--cpuset-cpus", "--cpuset-mems", "--pids-limit",
    ):  # fmt: skip
        c.add_argument(flag, default=None)
    c.add_argument("id")
    c = cmd("events")
    c.add_argument("--stats", action="store_true")
    c.add_argument("--interval", default="5s")
    c.add_argument("id")
    cmd("features")
    c = cmd("spec")
    c.add_argument("-b", "--bundle", default="")
    c.add_argument("--rootless", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The console script's entry (``argv`` None: exits the process itself) and the
    in-process call (returns the exit status)."""
    if argv is not None:
        return _main(argv)
    # a short-lived CLI the shim runs for every state and kill: no collector passes over
    # the import-time objects, and no interpreter teardown at exit (~10 ms of freeing
    # modules); what teardown would flush is flushed here, and every file the verbs open
    # is closed by them (with-blocks), so _exit drops nothing
    gc.disable()
    from cove.runtime import cgwarm

    if _verb(sys.argv[1:]) in _JOINS_CGROUPS:
        cgwarm.start()  # the cgroup join's grace period passes while we import
    try:
        status = _main(sys.argv[1:])
    except SystemExit as e:  # argparse's --help and usage errors
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    finally:
        cgwarm.stop()  # a verb that failed before its fork: no helper outlives us
    _flush_and_exit(status)


_JOINS_CGROUPS = ("create", "run", "exec")
_GLOBAL_VALUES = ("--root", "--log", "--log-format", "--rootless", "--criu")


def _verb(argv: Sequence[str]) -> str:
    """The command word, before any parsing: the first argument that is no global flag."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_VALUES or (
            # argparse takes an unambiguous prefix too (--ro for --root): skip its value
            arg.startswith("--")
            and "=" not in arg
            and any(f.startswith(arg) for f in _GLOBAL_VALUES)
        ):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return ""


def _flush_and_exit(status: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: as teardown, nothing more to say
            status = status or 120
    os._exit(status)


# The shim's own verbs, parsed without argparse (its import with gettext and locale, and
# its parser, cost ~2.5 ms a call): each flag as argparse defines it in _parser, by dest
# and kind (str, int or a switch). Anything else on the line (a help flag, an abbreviation,
# "--", a missing value) falls back to argparse, which parses it or says why not.
_Flags = dict[str, tuple[str, type | None]]
_GLOBAL: _Flags = {
    "--root": ("root", str), "--log": ("log", str), "--log-format": ("log_format", str),
    "--rootless": ("rootless", str), "--criu": ("criu", str), "--debug": ("debug", None),
    "--systemd-cgroup": ("systemd_cgroup", None),
}  # fmt: skip
_GLOBAL_DEFAULTS: dict[str, object] = {
    "root": "/run/cove-runc", "log": "", "log_format": "text", "debug": False,
    "systemd_cgroup": False, "rootless": "auto", "criu": "", "version": False,
}  # fmt: skip
_CREATE: _Flags = {
    "-b": ("bundle", str), "--bundle": ("bundle", str), "--pid-file": ("pid_file", str),
    "--console-socket": ("console_socket", str), "--pidfd-socket": ("pidfd_socket", str),
    "--no-pivot": ("no_pivot", None), "--no-new-keyring": ("no_new_keyring", None),
    "--preserve-fds": ("preserve_fds", int), "-d": ("detach", None),
    "--detach": ("detach", None), "--keep": ("keep", None),
}  # fmt: skip
_CREATE_DEFAULTS: dict[str, object] = {
    "bundle": "", "pid_file": "", "console_socket": "", "pidfd_socket": "", "no_pivot": False,
    "no_new_keyring": False, "preserve_fds": 0, "detach": False, "keep": False,
}  # fmt: skip
# verb -> (its flags, their defaults, positional names, how many may be left out)
_FAST: dict[str, tuple[_Flags, dict[str, object], tuple[str, ...], int]] = {
    "create": (_CREATE, _CREATE_DEFAULTS, ("id",), 0),
    "run": (_CREATE, _CREATE_DEFAULTS, ("id",), 0),
    "start": ({}, {}, ("id",), 0),
    "state": ({}, {}, ("id",), 0),
    "delete": ({"-f": ("force", None), "--force": ("force", None)}, {"force": False}, ("id",), 0),
    "kill": ({"-a": ("all", None), "--all": ("all", None)}, {"all": False}, ("id", "signal"), 1),
}  # fmt: skip
_OPTIONAL_DEFAULTS = {"signal": "SIGTERM"}


def _fast_args(argv: Sequence[str]) -> types.SimpleNamespace | None:
    """argparse's namespace for the common lines of the shim's verbs, or None."""
    import types

    out: dict[str, object] = dict(_GLOBAL_DEFAULTS)
    flags, i = _GLOBAL, 0

    def take(arg: str) -> bool:
        nonlocal i
        name, eq, value = arg.partition("=")
        if name not in flags:
            return False
        dest, kind = flags[name]
        if kind is None:
            if eq:
                return False
            out[dest] = True
            return True
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return False
            i += 1
            value = argv[i]
        if kind is int:
            if not value.isdigit():
                return False
            out[dest] = int(value)
        else:
            out[dest] = value
        return True

    while i < len(argv) and argv[i].startswith("-"):
        if not take(argv[i]):
            return None
        i += 1
    if i >= len(argv) or argv[i] not in _FAST or out["log_format"] not in ("text", "json"):
        return None
    verb = argv[i]
    flags, defaults, names, optional = _FAST[verb]
    out["command"] = verb
    out.update(defaults)
    positional: list[str] = []
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and arg != "-":
            if not take(arg):
                return None
        else:
            positional.append(arg)
        i += 1
    if not len(names) - optional <= len(positional) <= len(names):
        return None
    for n, name in enumerate(names):
        out[name] = positional[n] if n < len(positional) else _OPTIONAL_DEFAULTS[name]
    return types.SimpleNamespace(**out)


def _main(argv: Sequence[str]) -> int:
    fast = _fast_args(argv)
    # the fast namespace holds what argparse's would, attribute for attribute (the unit
    # test compares them), so the handlers take either
    args = (
        cast("argparse.Namespace", fast)
        if fast is not None
        else _parser(_verb(argv)).parse_args(list(argv))
    )
    if args.version:
        print(f"cove-runc version {VERSION}\ncommit: cove-{VERSION}\nspec: {SPEC_VERSION}")
        return 0
    if not args.command:
        _parser().print_help()
        return 0
    log = _Log(args.log, args.log_format, args.debug)
    from cove.errors import CoveError

    try:
        if args.systemd_cgroup:
            from cove.runtime.oci import check_systemd_cgroup

            check_systemd_cgroup()
        handler = _HANDLERS[args.command]
        return handler(args, log)
    except CoveError as e:
        return _fail(log, str(e))
    except OSError as e:
        return _fail(log, f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except Exception as e:
        if args.debug:
            raise
        return _fail(log, f"{type(e).__name__}: {e}")


def _fail(log: _Log, msg: str) -> int:
    log.write("error", msg)
    if log.path:  # runc prints the error too, after logging it
        os.write(2, (msg + "\n").encode())
    return 1


def _rt(args: argparse.Namespace) -> OciRuntime:
    from cove.runtime.oci import OciRuntime

    return OciRuntime(args.root)


def _print_json(doc: Any, indent: int | None = None) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=indent) + "\n")
    sys.stdout.flush()


# -- verbs ----------------------------------------------------------------------------


def _create(args: argparse.Namespace, log: _Log) -> int:
    rt = _rt(args)
    created = rt.create(
        args.id,
        args.bundle,
        pid_file=args.pid_file,
        console_socket=args.console_socket,
        preserve_fds=args.preserve_fds,
    )
    created.sock.close()
    log.debug(f"created {args.id}: init pid {created.pid}")
    return 0


def _run(args: argparse.Namespace, log: _Log) -> int:
    from cove.sys.terminal import forward_signals, proxy_tty

    rt = _rt(args)
    created = rt.create(
        args.id,
        args.bundle,
        pid_file=args.pid_file,
        console_socket=args.console_socket,
        preserve_fds=args.preserve_fds,
        detach=args.detach,
    )
    try:
        rt.start(args.id)
        rt.rt.wait_exec(created)
    except BaseException:
        if created.pty_master is not None:
            os.close(created.pty_master)
        rt.delete(args.id, force=True)
        raise
    if args.detach:
        return 0
    from cove.runtime.api import exit_status

    gc.enable()  # the container may run for long: collect as a long-lived process does
    try:
        with forward_signals(created.pid):
            if created.pty_master is not None:
                status = proxy_tty(created.pty_master, created.pid, interactive=True)
            else:
                status = _wait(created.pid)
    finally:
        if not args.keep:
            rt.delete(args.id, force=True)
    return exit_status(status)


def _wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except InterruptedError:
            continue


def _start(args: argparse.Namespace, log: _Log) -> int:
    _rt(args).start(args.id)
    return 0


def _state(args: argparse.Namespace, log: _Log) -> int:
    _print_json(_rt(args).state(args.id), indent=2)
    return 0


def _list(args: argparse.Namespace, log: _Log) -> int:
    states = _rt(args).containers()
    if args.quiet:
        for s in states:
            print(s["id"])
    elif args.format == "json":
        _print_json(states)
    else:
        rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
        rows += [
            [s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or "root"]
            for s in states
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _kill(args: argparse.Namespace, log: _Log) -> int:
    from cove.runtime.oci import parse_signal

    _rt(args).kill(args.id, parse_signal(args.signal), all_processes=args.all)
    return 0


def _delete(args: argparse.Namespace, log: _Log) -> int:
    _rt(args).delete(args.id, force=args.force)
    return 0


def _exec(args: argparse.Namespace, log: _Log) -> int:
    import dataclasses
    import json

    from cove.errors import InvalidSpec
    from cove.runtime.api import ContainerStartError, exit_status
    from cove.runtime.oci import write_pid_file
    from cove.spec.runtime import Process, User, from_json

    rt = _rt(args)
    if args.process:
        try:
            with open(args.process, "rb") as f:
                doc = json.load(f)
        except ValueError as e:
            raise InvalidSpec(f"process file {args.process} is not valid json: {e}") from e
        process: Process = from_json(Process, doc, "process")
    else:
        command = args.args[1:] if args.args[:1] == ["--"] else args.args
        if not command:
            raise InvalidSpec("exec: arguments must contain the command to run")
        process = dataclasses.replace(rt.base_process(args.id), args=command)
        process.terminal = args.tty
        if args.cwd:
            process.cwd = args.cwd
        process.env = [*process.env, *args.env]
        if args.user:
            uid, _, gid = args.user.partition(":")
            process.user = User(uid=int(uid), gid=int(gid or 0))
    if not process.args:
        raise InvalidSpec("exec: args must not be empty")
    if process.terminal and args.detach and not args.console_socket:
        raise InvalidSpec(
            "cannot allocate tty if cove-runc will detach without setting console socket"
        )
    created = rt.exec_process(args.id, process, preserve_fds=args.preserve_fds)
    if created.pty_master is not None and args.console_socket:
        from cove.runtime.oci import send_console

        try:
            send_console(args.console_socket, created.pty_master)
        finally:
            os.close(created.pty_master)
            created.pty_master = None
    try:
        rt.rt.wait_exec(created)
    except ContainerStartError:
        _wait(created.pid)
        raise
    if args.pid_file:
        write_pid_file(args.pid_file, created.pid)
    if args.detach:
        return 0
    from cove.sys.terminal import forward_signals, proxy_tty

    gc.enable()
    with forward_signals(created.pid):
        if created.pty_master is not None:
            status = proxy_tty(created.pty_master, created.pid, interactive=True)
        else:
            status = _wait(created.pid)
    return exit_status(status)


def _ps(args: argparse.Namespace, log: _Log) -> int:
    pids = _rt(args).pids(args.id)
    if args.format == "json":
        _print_json(pids)
        return 0
    import subprocess

    from cove.errors import HostToolFailed

    ps_args = args.ps_args[1:] if args.ps_args[:1] == ["--"] else args.ps_args
    out = subprocess.run(["ps", *(ps_args or ["-ef"])], capture_output=True, text=True)
    if out.returncode != 0:
        raise HostToolFailed(f"ps: {out.stderr.strip()}", "ps", out.returncode)
    lines = out.stdout.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise HostToolFailed("ps: no PID column in its output", "ps")
    col = header.index("PID")
    print(lines[0])
    wanted: set[int] = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in wanted:
            print(line)
    return 0


def _pause(args: argparse.Namespace, log: _Log) -> int:
    _rt(args).pause(args.id)
    return 0


def _resume(args: argparse.Namespace, log: _Log) -> int:
    _rt(args).resume(args.id)
    return 0


def _update(args: argparse.Namespace, log: _Log) -> int:
    import json

    from cove.errors import InvalidSpec
    from cove.spec.runtime import CPU, Memory, Pids, Resources, from_json

    doc: dict[str, Any] = {}
    if args.resources:
        try:
            if args.resources == "-":
                doc = json.load(sys.stdin)
            else:
                with open(args.resources) as f:
                    doc = json.load(f)
        except ValueError as e:
            raise InvalidSpec(f"resources: not valid json: {e}") from e
    res: Resources = from_json(Resources, doc, "resources")

    def num(v: str | None) -> int | None:
        if v is None:
            return None
        from cove.spec.flags import parse_size

        return int(v) if v.lstrip("-").isdigit() else parse_size(v, "size")

    if args.memory is not None or args.memory_swap is not None:
        res.memory = res.memory or Memory()
        res.memory.limit = num(args.memory) if args.memory is not None else res.memory.limit
        if args.memory_swap is not None:
            res.memory.swap = num(args.memory_swap)
    if any(
        v is not None for v in (args.cpu_shares, args.cpu_quota, args.cpu_period, args.cpuset_cpus)
    ):
        res.cpu = res.cpu or CPU()
        if args.cpu_shares is not None:
            res.cpu.shares = int(args.cpu_shares)
        if args.cpu_quota is not None:
            res.cpu.quota = int(args.cpu_quota)
        if args.cpu_period is not None:
            res.cpu.period = int(args.cpu_period)
        if args.cpuset_cpus is not None:
            res.cpu.cpus = args.cpuset_cpus
    if args.pids_limit is not None:
        res.pids = Pids(limit=int(args.pids_limit))
    res.devices = []  # runc update never changes device rules
    for warning in _rt(args).update(args.id, res):
        log.write("warning", warning)
    return 0


def _events(args: argparse.Namespace, log: _Log) -> int:
    import time

    from cove.errors import InvalidSpec

    rt = _rt(args)
    if args.stats:
        _print_json(rt.stats(args.id))
        return 0
    text = args.interval
    try:
        interval = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))
    except ValueError as e:
        raise InvalidSpec(f"invalid interval {text!r}") from e
    gc.enable()  # a stream for the container's life
    while rt.status(args.id) != "stopped":
        _print_json(rt.stats(args.id))
        time.sleep(interval)
    return 0


def _features(args: argparse.Namespace, log: _Log) -> int:
    from cove.runtime.oci import features

    _print_json(features(), indent=4)
    return 0


def _spec(args: argparse.Namespace, log: _Log) -> int:
    import json

    from cove.errors import Conflict, Unsupported
    from cove.runtime.oci import default_spec

    if args.rootless:
        raise Unsupported("cove-runc spec: --rootless is not supported")
    path = os.path.join(args.bundle or ".", "config.json")
    if os.path.exists(path):
        raise Conflict("File config.json exists. Remove it first.")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent="\t")
        f.write("\n")
    return 0


_HANDLERS = {
    "create": _create,
    "run": _run,
    "start": _start,
    "state": _state,
    "list": _list,
    "kill": _kill,
    "delete": _delete,
    "exec": _exec,
    "ps": _ps,
    "pause": _pause,
    "resume": _resume,
    "update": _update,
    "events": _events,
    "features": _features,
    "spec": _spec,
}
