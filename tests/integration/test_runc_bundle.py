"""cove-runc on an OCI bundle, called as runc is (issue 18): the lifecycle, run, exec, ps,
pause/resume, update, events, hooks at their points, and bad input with runc's exit code
and a JSON log line. Each test's containers live under their own --root and cgroup tree,
removed at the end pass or fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import COVE_RUNC, alpine_bundle, remove_cgroup_tree

SLEEPER = ["sh", "-c", "echo hello from $(cat /etc/alpine-release); exec sleep 1000"]


@dataclass
class Runc:
    root: Path
    log: Path
    tmp: Path
    cgroup: str  # the top-level cgroup this test's containers go under

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(COVE_RUNC), "--root", str(self.root), "--log", str(self.log)]
        argv += ["--log-format", "json", *args]
        # files, not pipes: a created container keeps create's stdio, and a pipe would
        # not reach EOF until it exits
        out, err = self.tmp / "out.txt", self.tmp / "err.txt"
        with out.open("w+") as o, err.open("w+") as e:
            kw.setdefault("stdout", o)
            proc = subprocess.run(argv, stderr=e, text=True, input=input, timeout=60, **kw)
            o.seek(0)
            e.seek(0)
            proc.stdout, proc.stderr = o.read(), e.read()
        if check and proc.returncode != 0:
            raise AssertionError(f"{args}: rc {proc.returncode}: {proc.stderr}")
        return proc

    def bundle(self, name: str, args: list[str], **extra: Any) -> Path:
        return alpine_bundle(self.tmp / name, args, f"/{self.cgroup}/{name}", **extra)

    def state(self, cid: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self("state", cid).stdout)
        return doc

    def wait_status(self, cid: str, want: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            doc = self.state(cid)
            if doc["status"] == want or time.monotonic() > deadline:
                return doc
            time.sleep(0.05)

    def last_error(self) -> dict[str, Any]:
        lines = [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]
        errors = [x for x in lines if x["level"] == "error"]
        assert errors, f"no error line in {self.log}"
        return errors[-1]

    def cgroup_dir(self, ctrl: str, name: str) -> Path:
        """The container's directory for ``ctrl``: v1's where the controller is a v1 one
        (the hybrid layout), else the cgroup2 tree's."""
        if v1(ctrl):
            return Path("/sys/fs/cgroup") / ctrl / self.cgroup / name
        unified = Path("/sys/fs/cgroup/unified")
        return (unified if unified.is_dir() else Path("/sys/fs/cgroup")) / self.cgroup / name


def v1(ctrl: str) -> bool:
    return (Path("/sys/fs/cgroup") / ctrl / "cgroup.procs").exists()


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runc]:
    r = Runc(tmp_path / "state", tmp_path / "log.json", tmp_path, f"cove-runc-test-{os.getpid()}")
    try:
        yield r
    finally:
        for doc in json.loads(r("list", "--format", "json", check=False).stdout or "[]"):
            r("delete", "--force", doc["id"], check=False)
        left = r("list", "-q", check=False).stdout.split()
        remove_cgroup_tree(r.cgroup)  # the parent directories: ours, whatever happened
        assert not left, f"containers left: {left}"


def test_lifecycle_create_start_kill_delete(runc: Runc) -> None:
    bundle = runc.bundle("life", SLEEPER, annotations={"org.example.k": "v"})
    out = runc.tmp / "stdout"
    pid_file = runc.tmp / "init.pid"
    # create under a child subreaper (as containerd's shim and conmon are): the init must
    # become the subreaper's child, not stay a child of a cove process
    probe = runc.tmp / "parent.json"
    script = (
        "import ctypes, json, os, subprocess, sys\n"
        "ctypes.CDLL(None, use_errno=True).prctl(36, 1)\n"  # PR_SET_CHILD_SUBREAPER
        "with open(sys.argv[2], 'wb') as o:\n"
        "    rc = subprocess.run(sys.argv[3:], stdout=o).returncode\n"
        "pid = int(open(sys.argv[4 + sys.argv[3:].index('--pid-file')]).read())\n"
        "ppid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "json.dump({'rc': rc, 'me': os.getpid(), 'ppid': ppid}, open(sys.argv[1], 'w'))\n"
    )
    argv = [str(COVE_RUNC), "--root", str(runc.root), "create", "--bundle", str(bundle)]
    argv += ["--pid-file", str(pid_file), "life"]
    subprocess.run([sys.executable, "-c", script, str(probe), str(out), *argv], check=True,
                   timeout=60)  # fmt: skip
    seen = json.loads(probe.read_text())
    assert seen["rc"] == 0 and seen["ppid"] == seen["me"], seen

    state = runc.state("life")
    pid = int(pid_file.read_text())
    assert state["status"] == "created" and state["pid"] == pid
    assert state["id"] == "life" and state["bundle"] == str(bundle)
    assert state["rootfs"] == str(bundle / "rootfs")
    assert state["annotations"] == {"org.example.k": "v"}
    assert state["ociVersion"] and state["created"].endswith("Z") and "owner" in state
    assert out.read_text() == ""  # waiting before the user process
    assert str(pid) in (runc.cgroup_dir("pids", "life") / "cgroup.procs").read_text().split()

    runc("start", "life")
    assert runc.wait_status("life", "running")["status"] == "running"
    deadline = time.monotonic() + 20
    while "hello" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    # stdout passed through from create's fd 1 to the container's process
    assert out.read_text() == "hello from 3.20.3\n"
    listed = json.loads(runc("list", "--format", "json").stdout)
    assert [(d["id"], d["status"]) for d in listed] == [("life", "running")]
    assert "life" in runc("list").stdout

    start_again = runc("start", "life", check=False)
    assert start_again.returncode == 1 and "running" in runc.last_error()["msg"]
    refused = runc("delete", "life", check=False)  # running, not forced: refused
    assert refused.returncode == 1 and "not stopped" in runc.last_error()["msg"]

    runc("kill", "life", "9")  # numeric, as containerd's shim sends it
    assert runc.wait_status("life", "stopped")["status"] == "stopped"
    assert runc.state("life")["pid"] == 0
    again = runc("kill", "life", "KILL", check=False)
    assert again.returncode == 1 and "container not running" in runc.last_error()["msg"]

    runc("delete", "life")
    gone = runc("state", "life", check=False)
    assert gone.returncode == 1 and "does not exist" in runc.last_error()["msg"]
    assert not runc.cgroup_dir("pids", "life").exists()
    assert not (runc.root / "life").exists()


def test_kill_by_name_and_all(runc: Runc) -> None:
    bundle = runc.bundle("sig", ["sh", "-c", "trap 'exit 7' USR1; sleep 1000 & wait"])
    runc("run", "--detach", "--bundle", str(bundle), "sig", stdout=subprocess.DEVNULL)
    assert runc.state("sig")["status"] == "running"
    runc("kill", "sig", "SIGUSR1")  # a name, as runtime-tools sends it (USR1 alone works too)
    assert runc.wait_status("sig", "stopped")["status"] == "stopped"
    runc("delete", "sig")

    # the init catches USR2 and lives on; its two sleeps take the default action and die
    script = "trap true USR2; sleep 1000 & sleep 1001 & while :; do wait; sleep 0.2; done"
    many = runc.bundle("all", ["sh", "-c", script])
    runc("run", "--detach", "--bundle", str(many), "all", stdout=subprocess.DEVNULL)
    init = runc.state("all")["pid"]

    def sleeps() -> set[int]:
        pids = json.loads(runc("ps", "--format", "json", "all").stdout)
        return {
            p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep\x00100")
        }

    deadline = time.monotonic() + 20
    while len(before := sleeps()) < 2:
        assert time.monotonic() < deadline, "the two sleeps did not start"
        time.sleep(0.05)
    runc("kill", "--all", "all", "USR2")  # every process of the cgroup, not only the init
    deadline = time.monotonic() + 20
    while before & sleeps():
        assert time.monotonic() < deadline, "kill --all missed the sleeps"
        time.sleep(0.05)
    assert runc.state("all")["status"] == "running" and runc.state("all")["pid"] == init
    runc("kill", "all", "9")
    assert runc.wait_status("all", "stopped")["status"] == "stopped"
    runc("delete", "all")


def test_run_prints_and_exits_with_the_status(runc: Runc) -> None:
    bundle = runc.bundle("pr", ["sh", "-c", "cat /etc/alpine-release; echo err >&2; exit 3"])
    proc = runc("run", "--bundle", str(bundle), "pr", check=False)
    assert proc.stdout == "3.20.3\n" and proc.stderr == "err\n" and proc.returncode == 3
    assert runc("list", "-q").stdout.split() == []  # run deletes what it ran
    assert not runc.cgroup_dir("pids", "pr").exists()


def test_exec_ps_pause_update_events(runc: Runc) -> None:
    bundle = runc.bundle("ex", SLEEPER)
    runc("run", "-d", "--bundle", str(bundle), "ex", stdout=subprocess.DEVNULL)
    init_pid = runc.state("ex")["pid"]

    # exec with arguments: in the container's root, with the config's environment
    proc = runc("exec", "ex", "sh", "-c", 'cat /etc/alpine-release; echo "$PATH"; exit 4',
                check=False)  # fmt: skip
    assert proc.returncode == 4
    assert proc.stdout.splitlines() == [
        "3.20.3",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    # exec --process --detach --pid-file, as the shim calls it
    process = {"args": ["sleep", "999"], "cwd": "/tmp", "env": ["PATH=/bin:/usr/bin"],
               "user": {"uid": 0, "gid": 0}}  # fmt: skip
    pfile = runc.tmp / "process.json"
    pfile.write_text(json.dumps(process))
    epid_file = runc.tmp / "exec.pid"
    runc("exec", "--process", str(pfile), "--detach", "--pid-file", str(epid_file), "ex")
    epid = int(epid_file.read_text())
    assert Path(f"/proc/{epid}/cmdline").read_bytes() == b"sleep\x00999\x00"
    assert os.readlink(f"/proc/{epid}/ns/pid") == os.readlink(f"/proc/{init_pid}/ns/pid")

    pids = json.loads(runc("ps", "--format", "json", "ex").stdout)
    assert init_pid in pids and epid in pids
    table = runc("ps", "ex").stdout.splitlines()
    assert "PID" in table[0].split() and any(f" {epid} " in f" {line} " for line in table[1:])

    runc("pause", "ex")
    assert runc.state("ex")["status"] == "paused"
    frozen = runc.cgroup_dir("freezer", "ex")
    if v1("freezer"):
        assert (frozen / "freezer.state").read_text().strip() == "FROZEN"
    else:
        assert (frozen / "cgroup.freeze").read_text().strip() == "1"
    refused = runc("exec", "ex", "true", check=False)
    assert refused.returncode == 1 and "paused" in runc.last_error()["msg"]
    runc("resume", "ex")
    assert runc.state("ex")["status"] == "running"
    assert runc("exec", "ex", "true").returncode == 0  # positive control for the refusal

    # update from stdin: the cgroup files change and the container sees it in its cgroupfs
    runc("update", "--resources", "-", "ex",
         input=json.dumps({"memory": {"limit": 96 << 20}, "pids": {"limit": 42}}))  # fmt: skip
    assert (runc.cgroup_dir("pids", "ex") / "pids.max").read_text().strip() == "42"
    memdir = runc.cgroup_dir("memory", "ex")
    mem_file = "memory.limit_in_bytes" if v1("memory") else "memory.max"
    assert (memdir / mem_file).read_text().strip() == str(96 << 20)
    inside = runc(
        "exec",
        "ex",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    )
    assert inside.stdout.strip() == "42"  # fmt: skip
    # and from a file, with runc's single flags
    rfile = runc.tmp / "res.json"
    rfile.write_text(json.dumps({"pids": {"limit": 50}}))
    runc("update", "--resources", str(rfile), "ex")
    assert (runc.cgroup_dir("pids", "ex") / "pids.max").read_text().strip() == "50"
    runc("update", "--pids-limit", "60", "ex")
    assert (runc.cgroup_dir("pids", "ex") / "pids.max").read_text().strip() == "60"

    event = json.loads(runc("events", "--stats", "ex").stdout)
    assert event["type"] == "stats" and event["id"] == "ex"
    assert event["data"]["pids"]["current"] >= 2  # the init and the detached exec
    assert event["data"]["memory"]["usage"]["limit"] == 96 << 20
    runc("delete", "--force", "ex")
    assert not runc.cgroup_dir("pids", "ex").exists()


def test_exec_preserve_fds(runc: Runc) -> None:
    """``exec --preserve-fds N``: the caller's fds 3..3+N-1 reach the exec'd process, as
    runc passes them; without the flag (and beyond N) they do not."""
    bundle = runc.bundle("pf", SLEEPER)
    runc("run", "-d", "--bundle", str(bundle), "pf", stdout=subprocess.DEVNULL)
    (runc.tmp / "three").write_text("on fd 3\n")
    (runc.tmp / "four").write_text("on fd 4\n")
    # the caller holds the files on fds 3 and 4 (a shell sets them up, then execs cove-runc)
    opener = 'exec 3<"$1" 4<"$2"; shift 2; exec "$@"'
    script = "for fd in 3 4; do [ -e /proc/self/fd/$fd ] && cat <&$fd || echo no $fd; done"

    def exec_with(*args: str) -> list[str]:
        argv = ["sh", "-c", opener, "sh", str(runc.tmp / "three"), str(runc.tmp / "four")]
        argv += [str(COVE_RUNC), "--root", str(runc.root), "exec", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    assert exec_with("--preserve-fds", "2", "pf", "sh", "-c", script) == ["on fd 3", "on fd 4"]
    assert exec_with("--preserve-fds", "1", "pf", "sh", "-c", script) == ["on fd 3", "no 4"]
    # control: without the flag the caller's fds stay out
    assert exec_with("pf", "sh", "-c", script) == ["no 3", "no 4"]
    # the --process form (the shim's) passes them too
    pfile = runc.tmp / "process.json"
    pfile.write_text(json.dumps({"args": ["sh", "-c", script], "cwd": "/",
                                 "user": {"uid": 0, "gid": 0}}))  # fmt: skip
    assert exec_with("--process", str(pfile), "--preserve-fds", "1", "pf") == ["on fd 3", "no 4"]
    runc("delete", "--force", "pf")


HOOKS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
         "poststop")  # fmt: skip


def _hooks_config(out: Path, timeout: int = 10, sleep: int = 0) -> dict[str, Any]:
    """Each hook appends its kind and its stdin (the state) to one file; startContainer
    runs in the container and writes through a bind mount of that file's directory."""

    def hook(kind: str) -> dict[str, Any]:
        where = "/hookout" if kind == "startContainer" else str(out)
        # each hook also records whether it sees the Alpine root (the container's) or not
        script = (
            f"sleep {sleep}; state=$(cat); "
            f"root=$(cat /etc/alpine-release 2>/dev/null || echo host); "
            f'printf "%s\\t%s\\t%s\\n" {kind} "$root" "$state" >> {where}/hooks.log'
        )
        return {"path": "/bin/sh", "args": ["sh", "-c", script], "timeout": timeout}

    return {"hooks": {k: [hook(k)] for k in HOOKS}}


def _hook_lines(out: Path) -> list[tuple[str, str, dict[str, Any]]]:
    log = out / "hooks.log"
    if not log.exists():
        return []
    rows = [line.split("\t", 2) for line in log.read_text().splitlines()]
    return [(kind, root, json.loads(state)) for kind, root, state in rows]


def test_hooks_run_at_their_points_with_the_state(runc: Runc) -> None:
    out = runc.tmp / "hookout"
    out.mkdir()
    mounts_extra = {"destination": "/hookout", "type": "bind", "source": str(out),
                    "options": ["rbind", "rw"]}  # fmt: skip
    bundle = runc.bundle("hk", SLEEPER, **_hooks_config(out))
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"].append(mounts_extra)
    (bundle / "config.json").write_text(json.dumps(config))

    runc("create", "--bundle", str(bundle), "hk", stdout=subprocess.DEVNULL)
    pid = runc.state("hk")["pid"]
    rows = _hook_lines(out)
    assert [r[0] for r in rows] == ["prestart", "createRuntime", "createContainer"]
    for _kind, root, state in rows:
        assert state["id"] == "hk" and state["pid"] == pid and state["bundle"] == str(bundle)
        assert state["status"] == "creating"
        # the runtime's namespace for the first two; createContainer runs before pivot_root
        assert root == "host"

    runc("start", "hk")
    rows = _hook_lines(out)
    assert [r[0] for r in rows][3:] == ["startContainer", "poststart"]
    assert rows[3][1] == "3.20.3"  # startContainer: in the container
    assert rows[4][1] == "host" and rows[4][2]["status"] == "running"
    assert rows[3][2]["pid"] == pid and rows[4][2]["pid"] == pid

    runc("kill", "hk", "KILL")
    runc.wait_status("hk", "stopped")
    assert len(_hook_lines(out)) == 5  # poststop waits for delete
    runc("delete", "hk")
    rows = _hook_lines(out)
    assert [r[0] for r in rows] == list(HOOKS)
    assert rows[5][1] == "host" and rows[5][2]["status"] == "stopped" and rows[5][2]["id"] == "hk"


def test_hook_timeout_fails_create(runc: Runc) -> None:
    out = runc.tmp / "slow"
    out.mkdir()
    config = _hooks_config(out, timeout=1, sleep=30)
    only = {"createRuntime": config["hooks"]["createRuntime"]}
    bundle = runc.bundle("slow", SLEEPER, hooks=only)
    proc = runc("create", "--bundle", str(bundle), "slow", check=False)
    assert proc.returncode == 1
    assert "timeout" in runc.last_error()["msg"] and "createRuntime" in runc.last_error()["msg"]
    assert runc("list", "-q").stdout.split() == []
    assert not runc.cgroup_dir("pids", "slow").exists()
    # positive control: the same hook within its timeout lets create succeed
    ok = runc.bundle(
        "quick", SLEEPER, hooks={"createRuntime": _hooks_config(out)["hooks"]["createRuntime"]}
    )
    runc("create", "--bundle", str(ok), "quick")
    assert runc.state("quick")["status"] == "created"
    runc("delete", "quick")


def test_bad_input_exit_codes_and_json_log(runc: Runc) -> None:
    good = runc.bundle("good", SLEEPER)
    bad = runc.tmp / "badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    cases: list[tuple[list[str], str]] = [
        (["create", "--bundle", str(runc.tmp / "missing"), "m1"], "does not exist"),
        (["create", "--bundle", str(bad), "m2"], "not valid json"),
        (["state", "nosuch"], "does not exist"),
        (["kill", "nosuch", "KILL"], "does not exist"),
        (["start", "nosuch"], "does not exist"),
        (["delete", "nosuch"], "does not exist"),
        (["--systemd-cgroup", "create", "--bundle", str(good), "m3"], "systemd-cgroup"),
    ]
    for args, words in cases:
        proc = runc(*args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        err = runc.last_error()
        assert words in err["msg"], (args, err)
        assert err["time"] and proc.stderr.strip() == err["msg"]
    # positive control with the same root and log: the good bundle creates, then its id is taken
    runc("create", "--bundle", str(good), "good", stdout=subprocess.DEVNULL)
    assert runc.state("good")["status"] == "created"
    taken = runc("create", "--bundle", str(good), "good", check=False)
    assert taken.returncode == 1 and "exists" in runc.last_error()["msg"]
    assert runc.state("good")["status"] == "created"  # the holder is untouched
    runc("delete", "good")  # a created container deletes without --force, as runc
    assert runc("delete", "--force", "good").returncode == 0  # forced delete of nothing: ok


def test_version_features_spec(runc: Runc) -> None:
    lines = runc("--version").stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("cove-runc version ")
    assert lines[1].startswith("commit: ") and lines[2] == "spec: 1.1.0"
    feats = json.loads(runc("features").stdout)
    assert feats["ociVersionMax"] == "1.1.0" and "createRuntime" in feats["hooks"]
    assert "pid" in feats["linux"]["namespaces"] and feats["linux"]["cgroup"]["systemd"] is False
    where = runc.tmp / "sp"
    where.mkdir()
    runc("spec", "--bundle", str(where))
    assert json.loads((where / "config.json").read_text())["process"]["args"] == ["sh"]
    again = runc("spec", "--bundle", str(where), check=False)
    assert again.returncode == 1 and "exists" in runc.last_error()["msg"]
