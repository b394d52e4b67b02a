"""cove-runc is a lean face: what its run path imports, and the cgroup head start's helper.

The shim runs ``cove-runc`` for every create, start, state, kill and delete, so its
import path must load only cove/runc, cove/runtime and what they need: no image store,
no state database, no engine or CLI, and no stdlib module that the runtime does not use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, loaded_after

# what `cove-runc run` imports (bench/runtime.py times the same list)
RUN_PATH = ("cove.runc", "cove.runtime.oci", "cove.runtime.init", "cove.sys.terminal")
# none of these may load on it: cove's other layers, and stdlib weight it does not use
FORBIDDEN_PREFIXES = (
    "cove.image", "cove.state", "cove.engine", "cove.containers", "cove.cli", "cove.api",
    "cove.network", "cove.registry", "cove.bundle", "cove.vm", "cove.build", "cove.monitor",
)  # fmt: skip
FORBIDDEN = ("sqlite3", "shutil", "subprocess", "threading", "tarfile", "hashlib", "bz2", "lzma",
             "tempfile", "random")  # fmt: skip


def test_run_path_imports_stay_lean() -> None:
    # the shim's run line is parsed without argparse; the seccomp module is loaded too (a
    # spec with a profile loads it; cove run's always have one)
    code = f"import {', '.join(RUN_PATH)}, cove.runtime.seccomp; import cove.runc; "
    line = ["--root", "/r", "run", "--bundle", "/b", "id"]
    mods, _ = loaded_after(code + f"assert cove.runc._fast_args({line!r}) is not None")
    # positive control: the probe sees what the path does load
    assert {"cove.runtime.api", "cove.runtime.cgroups", "cove.sys.syscalls", "socket"} <= mods
    bad = sorted(m for m in mods if m.startswith(FORBIDDEN_PREFIXES) or m in FORBIDDEN)
    assert bad == [], f"cove-runc's run path imports {bad}"
    assert "argparse" not in mods
    # a line only argparse parses still keeps shutil (argparse's own width probe) away
    mods, _ = loaded_after(code + "cove.runc._parser('exec')")
    assert "argparse" in mods
    bad = sorted(m for m in mods if m.startswith(FORBIDDEN_PREFIXES) or m in FORBIDDEN)
    assert bad == [], f"cove-runc's argparse path imports {bad}"


def test_probe_catches_a_forbidden_import() -> None:
    """Control: the same probe reports a forbidden module when the code loads one."""
    mods, _ = loaded_after("import cove.runc, shutil, sqlite3")
    assert {"shutil", "sqlite3"} <= mods


def test_cgwarm_imports_nothing_heavy() -> None:
    """cove-runc imports cgwarm before anything else: it must cost nothing to load."""
    mods, _ = loaded_after("import cove.runtime.cgwarm")
    assert "cove.runtime.cgwarm" in mods  # control: the probe sees the module itself
    assert mods <= {"cove", "cove.runtime", "cove.runtime.cgwarm", "select", "__future__"}, mods


def test_own_procs_file_prefers_cgroup2(tmp_path: Path) -> None:
    from cove.runtime.cgwarm import own_procs_file

    base = tmp_path / "cg"
    for d in ("unified/a/b", "pids/a/b"):
        (base / d).mkdir(parents=True)
        (base / d / "cgroup.procs").write_text("")
    proc = tmp_path / "cgroup"
    proc.write_text("2:pids:/a/b\n1:name=systemd:/a/b\n0::/a/b\n")
    assert own_procs_file(str(proc), str(base)) == str(base / "unified/a/b/cgroup.procs")
    # no cgroup2 directory: the v1 hierarchy mounted by controller name
    (base / "unified/a/b/cgroup.procs").unlink()
    assert own_procs_file(str(proc), str(base)) == str(base / "pids/a/b/cgroup.procs")
    # named hierarchies (name=systemd) are not guessed at, nor are missing files
    proc.write_text("1:name=systemd:/a/b\n0::/elsewhere\n")
    assert own_procs_file(str(proc), str(base)) == ""
    assert own_procs_file(str(tmp_path / "missing"), str(base)) == ""


def test_cgwarm_helper_holds_no_caller_fd_and_is_reaped(tmp_path: Path) -> None:
    """The helper writes to the file it is given until stopped, keeps none of the
    caller's fds (a reader of the caller's stdout pipe must see EOF when the caller
    exits, not when the helper does), and is reaped by stop()."""
    target = tmp_path / "procs"
    target.write_text("")
    probe = textwrap.dedent(f"""
        import json, os, time
        from cove.runtime import cgwarm
        marker = os.open({str(tmp_path)!r}, os.O_RDONLY)  # a caller's fd
        assert cgwarm.start({str(target)!r})
        pid = cgwarm._running[0]
        # until the helper is in its loop (two writes through): its fds are final by then
        deadline = time.monotonic() + 10
        while len(open({str(target)!r}).read()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

        def fds(where):
            out = []
            for n in os.listdir(where):
                try:
                    out.append(os.readlink(f"{{where}}/{{n}}"))
                except FileNotFoundError:  # listdir's own fd, closed by now
                    pass
            return sorted(out)

        theirs, mine = fds(f"/proc/{{pid}}/fd"), fds("/proc/self/fd")
        cgwarm.stop()
        try:
            os.waitpid(pid, os.WNOHANG)
            reaped = False
        except ChildProcessError:
            reaped = True
        print(json.dumps({{"theirs": theirs, "mine": mine, "reaped": reaped,
                           "running": cgwarm.running()}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    # control: the caller itself holds the marker directory and its stdio
    assert str(tmp_path) in doc["mine"]
    assert str(tmp_path) not in doc["theirs"]
    # the helper holds its target and its pipe, nothing else (no stdio either)
    assert str(target) in doc["theirs"]
    assert len(doc["theirs"]) == 2, doc["theirs"]
    assert doc["reaped"] and not doc["running"]
    assert set(target.read_text()) == {"0"} and len(target.read_text()) >= 2


def test_verb_word_skips_global_flags() -> None:
    from cove.runc import _verb

    assert _verb(["--root", "/run/x", "--log", "run", "create", "id"]) == "create"
    assert _verb(["--debug", "run", "--bundle", "b", "id"]) == "run"
    assert _verb(["--log-format", "json", "state", "id"]) == "state"
    assert _verb(["--version"]) == ""


def test_cgwarm_start_without_a_cgroup_is_a_no_op() -> None:
    from cove.runtime import cgwarm

    assert cgwarm.start(procs="") is False
    assert not cgwarm.running()
    cgwarm.stop()  # nothing to stop: no error


PARSE_CASES = [
    ["--root", "/x", "run", "--bundle", "/b", "id"],
    ["--root", "/x", "create", "--bundle", "/b", "--pid-file", "p", "--console-socket", "s", "id"],
    ["--log", "/l", "--log-format", "json", "state", "id"],
    ["kill", "id", "KILL"], ["kill", "--all", "id", "9"], ["delete", "--force", "id"],
    ["exec", "--process", "p.json", "--detach", "--pid-file", "x", "id"],
    ["exec", "-t", "id", "sh", "-c", "echo hi"], ["ps", "--format", "json", "id"],
    ["update", "--resources", "-", "id"], ["events", "--stats", "id"], ["features"],
    ["spec", "--bundle", "b"], ["list", "--format", "json"],
    ["--cri", "run", "run", "-d", "-b", "/b", "id"],  # a prefix of a global flag, its value a verb
    ["--root=/x", "start", "id"], ["--debug", "--systemd-cgroup", "pause", "id"],
    ["run", "id", "--bundle", "/b"], ["--log-f", "json", "state", "x"],
]  # fmt: skip


def test_one_verb_parser_parses_as_the_full_one() -> None:
    """main builds only the named verb's subparser: every command line parses to the
    same arguments as with all fifteen built."""
    from cove.runc import _parser, _verb

    for argv in PARSE_CASES:
        full, lean = _parser().parse_args(argv), _parser(_verb(argv)).parse_args(argv)
        assert vars(full) == vars(lean), argv
    # control: the one-verb parser really leaves the others out
    with pytest.raises(SystemExit):
        _parser("run").parse_args(["state", "x"])
    assert _parser("").parse_args(["state", "x"]).command == "state"


SHIM_LINES = [
    ["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b",
     "--pid-file", "/p", "--console-socket", "/s", "--no-pivot", "--no-new-keyring",
     "--preserve-fds", "2", "-d", "--keep", "cid"],
    ["state", "x"], ["start", "x"], ["delete", "x"], ["kill", "x"], ["kill", "x", "SIGKILL"],
    ["kill", "-a", "x", "9"], ["--debug", "run", "-b", "/b", "x"], ["run", "--bundle=/b", "x"],
    ["--root=/r", "--systemd-cgroup", "delete", "-f", "x"],
    ["--rootless", "false", "--criu", "c", "state", "x"],
]  # fmt: skip
NOT_FAST = [
    ["run"], ["run", "a", "b"], ["kill"], ["--log-format", "xml", "state", "x"],
    ["state", "x", "--help"], ["--bun", "x"], ["run", "--bundle"], ["kill", "x", "-9"],
    ["run", "--preserve-fds", "x", "id"], ["--version"], ["exec", "x", "sh"],
]  # fmt: skip


def test_fast_parse_equals_argparse_or_defers() -> None:
    """The shim's verbs parse without argparse to exactly argparse's namespace; any line
    the fast path does not know is left to argparse (None), never guessed at."""
    from cove.runc import _fast_args, _parser

    for argv in SHIM_LINES:
        fast = _fast_args(argv)
        assert fast is not None, argv  # control: the shim's lines do take the fast path
        assert vars(fast) == vars(_parser().parse_args(argv)), argv
    for argv in PARSE_CASES:
        fast = _fast_args(argv)
        if fast is not None:
            assert vars(fast) == vars(_parser().parse_args(argv)), argv
    for argv in NOT_FAST:
        assert _fast_args(argv) is None, argv
