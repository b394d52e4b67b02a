"""Detached containers end to end: the monitor, logs, exec, stop/kill/rm, reconcile after
SIGKILL anywhere, restart policies, health checks, volumes, cp, diff/commit/export."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CoveRunner, alpine_variant, cove_argv, monitors, wait_for

LOOP = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done"


def inspect(cove: CoveRunner, ref: str) -> dict:  # type: ignore[type-arg]
    doc: dict = json.loads(cove("inspect", "--type", "container", ref).stdout)[0]  # type: ignore[type-arg]
    return doc


def leftovers(root: Path) -> list[str]:
    """Anything of this root's containers that is not in `cove ps -a`."""
    found: list[str] = []
    cdir = root / "containers"
    ids = [p.name for p in cdir.iterdir()] if cdir.is_dir() else []
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        d = ctrl / "cove"
        if d.is_dir():
            found += [str(d / i) for i in ids if (d / i).exists()]
    with open("/proc/self/mountinfo") as f:
        found += [line for line in f if str(root) in line]
    found += [f"monitor {pid}" for pid in monitors(root)]
    rdir = root / "runtime"
    if rdir.is_dir():
        found += [str(p) for p in rdir.iterdir()]
    return found


@pytest.fixture
def clean(cove: CoveRunner, cove_root: Path) -> Iterator[None]:
    """Force-remove every container the test made, then prove nothing stayed behind."""
    try:
        yield
    finally:
        ids = cove("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if ids:
            cove("rm", "-f", "-v", *ids, check=False)
        for pid in monitors(cove_root):
            os.kill(pid, signal.SIGKILL)
        left = cove("ps", "-aq", check=False).stdout.split()
        assert not left, left
        assert not leftovers(cove_root), leftovers(cove_root)
        cdir = cove_root / "containers"
        assert not cdir.exists() or not list(cdir.iterdir())


def test_detached_lifecycle(cove: CoveRunner, cove_root: Path, alpine: str, clean: None) -> None:
    cid = cove("run", "-d", "--name", "loop", "alpine:3.20", "sh", "-c", LOOP).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    ps = cove("ps").stdout.splitlines()
    assert len(ps) == 2 and ps[1].startswith(cid[:12]) and " Up " in ps[1] and "loop" in ps[1]

    wait_for("output", lambda: len(cove("logs", "loop").stdout.split()) >= 4)
    tail = [int(x) for x in cove("logs", "--tail", "2", "loop").stdout.split()]
    assert len(tail) == 2 and tail[1] == tail[0] + 1
    stamped = cove("logs", "-t", "--tail", "1", "loop").stdout
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z \d+\n", stamped)
    log_file = Path(inspect(cove, "loop")["LogPath"])
    first = json.loads(log_file.read_text().splitlines()[0])
    assert first["log"] == "0\n" and first["stream"] == "stdout" and first["time"].endswith("Z")

    # logs -f streams lines written after it started
    follow = subprocess.Popen(
        cove_argv(cove_root, "logs", "-f", "--tail", "0", "loop"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        got = [int(follow.stdout.readline()) for _ in range(3)]
        assert got[1] == got[0] + 1 and got[2] == got[1] + 1
    finally:
        follow.kill()
        follow.wait()

    assert cove("exec", "loop", "hostname").stdout.strip() == cid[:12]
    pid_inside = int(cove("exec", "loop", "sh", "-c", "echo $$").stdout)
    host_pid = inspect(cove, "loop")["State"]["Pid"]
    assert pid_inside < 100 and pid_inside != host_pid
    assert cove("exec", "loop", "cat", "/proc/1/cmdline").stdout.startswith("sh\0-c\0")
    ns = cove("exec", "loop", "readlink", "/proc/self/ns/pid").stdout.strip()
    assert ns == os.readlink(f"/proc/{host_pid}/ns/pid")
    status = cove(
        "exec", "loop", "grep", "-E", "^(Seccomp|NoNewPrivs|CapEff):", "/proc/self/status"
    )
    assert "Seccomp:\t2" in status.stdout and "CapEff:\t00000000a80425fb" in status.stdout
    assert cove("exec", "loop", "sh", "-c", "exit 7", check=False).returncode == 7
    assert cove("exec", "loop", "nosuch", check=False).returncode == 127
    assert cove("exec", "-u", "nobody", "loop", "id", "-u").stdout.strip() == "65534"
    assert cove("exec", "-w", "/etc", "-e", "X=1", "loop", "sh", "-c", "echo $PWD $X").stdout == (
        "/etc 1\n"
    )
    priv = cove("exec", "--privileged", "loop", "grep", "-E", "^(Seccomp|CapEff):",
                "/proc/self/status").stdout  # fmt: skip
    assert "Seccomp:\t0" in priv and "CapEff:\t00000000a80425fb" not in priv
    cove("exec", "-d", "loop", "sh", "-c", "sleep 0.3; touch /tmp/detached")
    wait_for("exec -d", lambda: cove("exec", "loop", "test", "-e", "/tmp/detached",
                                     check=False).returncode == 0)  # fmt: skip
    assert cove("logs", "--until", "2000-01-01T00:00:00Z", "loop").stdout == ""
    assert cove("logs", "--since", "1h", "--tail", "1", "loop").stdout.strip().isdigit()
    top = cove("top", "loop").stdout
    assert "PID" in top.splitlines()[0] and "while true" in top
    stats = cove("stats", "--no-stream", "loop").stdout.splitlines()
    assert stats[0].split()[:3] == ["CONTAINER", "ID", "NAME"] and "loop" in stats[1]
    assert stats[1].split()[-1] != "0"  # PIDS: read from the container's cgroups

    # sh as pid 1 ignores SIGTERM: stop waits the grace period, then kills
    start = time.monotonic()
    cove("stop", "-t", "1", "loop")
    took = time.monotonic() - start
    assert 0.9 <= took < 6, took
    state = inspect(cove, "loop")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] in (137, 143)
    assert not state["Running"] and state["FinishedAt"] > state["StartedAt"]
    assert "Exited (137)" in cove("ps", "-a").stdout
    assert cove("ps", "-q").stdout == ""
    assert not monitors(cove_root)

    cove("rm", "loop")
    assert cove("ps", "-aq").stdout == ""
    assert not leftovers(cove_root)
    assert not (cove_root / "containers" / cid).exists()
    missing = cove("inspect", "loop", check=False)
    assert missing.returncode == 1


def test_sigkill_of_container_or_monitor_shows_in_ps(
    cove: CoveRunner, cove_root: Path, alpine: str, clean: None
) -> None:
    cove("run", "-d", "--name", "victim", "alpine:3.20", "sleep", "1000")
    pid = inspect(cove, "victim")["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for("exit recorded", lambda: "Exited (137)" in cove("ps", "-a").stdout)
    assert not monitors(cove_root)

    # a monitor killed: nothing reads, reaps or records for the container any more, so the
    # next command stops it and says why
    cove("run", "-d", "--name", "orphan", "alpine:3.20", "sh", "-c", LOOP)
    wait_for("output", lambda: cove("logs", "orphan").stdout)
    pid = inspect(cove, "orphan")["State"]["Pid"]
    (mon,) = monitors(cove_root)
    os.kill(mon, signal.SIGKILL)
    wait_for("monitor gone", lambda: not Path(f"/proc/{mon}").exists())
    assert "Exited (137)" in cove("ps", "-a", "-f", "name=orphan").stdout
    state = inspect(cove, "orphan")["State"]
    assert state["Status"] == "exited" and state["Error"] == "container monitor died"
    assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()
    assert not leftovers(cove_root), leftovers(cove_root)


CRASH_POINTS = ["create-row", "create-dirs", "create-bundle", "start-before-handoff",
                "start-handoff", "start-go"]  # fmt: skip


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_run_leaves_no_ghost(
    cove_root: Path, cove: CoveRunner, alpine: str, clean: None, point: str
) -> None:
    env = dict(os.environ, COVE_CRASH_AT=point)
    proc = subprocess.run(
        cove_argv(cove_root, "run", "-d", "--name", "c1", "alpine:3.20", "sleep", "1000"),
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc
    listed = cove("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.State}}").stdout.split("\n")
    listed = [line for line in listed if line]
    if point == "start-go":
        # the monitor had its go: the container comes up without the killed command
        wait_for("running", lambda: "running" in cove("ps", "-a", "--format", "{{.State}}").stdout)
        assert len(listed) == 1
        cid = listed[0].split()[0]
        assert cove("exec", "c1", "true").returncode == 0
    else:
        # a monitor that never got its go exits by itself; until then the start is in flight
        wait_for("rollback", lambda: cove("ps", "-aq").stdout == "", timeout=10)
        cid = ""
    cdir = cove_root / "containers"
    made = sorted(p.name for p in cdir.iterdir()) if cdir.exists() else []
    assert made == ([cid] if cid else [])
    left = leftovers(cove_root)
    if cid:
        # only the one real container's pieces remain: its monitor, and cgroups, mounts and
        # runtime state that name it; nothing of the killed command's own making
        mons = monitors(cove_root)
        assert len(mons) == 1, left
        assert sorted(left) == sorted([x for x in left if cid in x] + [f"monitor {mons[0]}"])
    else:
        assert not left, left
    # the name is free again (or held by the one real container)
    again = cove("run", "-d", "--name", "c1", "alpine:3.20", "true", check=False)
    if cid:
        assert again.returncode != 0 and '"/c1" is already in use' in again.stderr, again
    else:
        assert again.returncode == 0, again


def test_killed_rm_is_finished_by_the_next_command(
    cove_root: Path, cove: CoveRunner, alpine: str, clean: None
) -> None:
    cove("run", "-d", "--name", "c1", "alpine:3.20", "sleep", "1000")
    env = dict(os.environ, COVE_CRASH_AT="remove-marked")
    proc = subprocess.run(cove_argv(cove_root, "rm", "-f", "c1"), env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert cove("ps", "-aq").stdout == ""
    assert not leftovers(cove_root), leftovers(cove_root)


def test_parallel_detached_runs(
    cove_root: Path, cove: CoveRunner, alpine: str, clean: None
) -> None:
    procs = [
        subprocess.Popen(
            cove_argv(cove_root, "run", "-d", "alpine:3.20", "sleep", "1000"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    failed = [
        (p.returncode, err) for p, (_, err) in zip(procs, results, strict=True) if p.returncode
    ]
    assert not failed, failed
    ids = {out.strip() for out, _ in results}
    assert len(ids) == 10
    rows = cove("ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.State}}").stdout.split("\n")
    rows = [r.split() for r in rows if r]
    assert {r[0] for r in rows} == ids
    assert len({r[1] for r in rows}) == 10 and {r[2] for r in rows} == {"running"}
    assert len(monitors(cove_root)) == 10


def test_restart_on_failure_counts(
    cove: CoveRunner, cove_root: Path, alpine: str, clean: None
) -> None:
    cove("run", "-d", "--name", "flaky", "--restart", "on-failure:3", "alpine:3.20",
         "sh", "-c", "echo run; exit 3")  # fmt: skip
    wait_for("give up", lambda: not monitors(cove_root), timeout=60)
    doc = inspect(cove, "flaky")
    assert doc["RestartCount"] == 3
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 3
    assert cove("logs", "flaky").stdout == "run\n" * 4
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}


def test_restart_always_until_stop(
    cove: CoveRunner, cove_root: Path, alpine: str, clean: None
) -> None:
    cove("run", "-d", "--name", "phoenix", "--restart", "always", "alpine:3.20",
         "sh", "-c", "sleep 0.2; exit 0")  # fmt: skip
    wait_for("restarts", lambda: inspect(cove, "phoenix")["RestartCount"] >= 3, timeout=60)
    cove("stop", "-t", "1", "phoenix")
    wait_for("monitor exit", lambda: not monitors(cove_root))
    count = inspect(cove, "phoenix")["RestartCount"]
    time.sleep(1.5)
    doc = inspect(cove, "phoenix")
    assert doc["RestartCount"] == count and doc["State"]["Status"] == "exited"
    # a manual start clears the stop and runs again
    cove("start", "phoenix")
    assert inspect(cove, "phoenix")["State"]["Status"] in ("running", "restarting")


def test_health_check(cove: CoveRunner, cove_root: Path, alpine: str, clean: None) -> None:
    cove("run", "-d", "--name", "doc", "--health-cmd", "test -e /tmp/ok",
         "--health-interval", "200ms", "--health-retries", "2", "alpine:3.20",
         "sleep", "1000")  # fmt: skip
    assert inspect(cove, "doc")["State"]["Health"]["Status"] in ("starting", "unhealthy")
    wait_for("unhealthy", lambda: inspect(cove, "doc")["State"]["Health"]["Status"] == "unhealthy")
    assert "(unhealthy)" in cove("ps").stdout
    # a container without a check must not match: the filter picks, not lists
    plain = cove("run", "-d", "--name", "plain", "alpine:3.20", "sleep", "1000").stdout.strip()
    doc_id = inspect(cove, "doc")["Id"]
    assert cove("ps", "-q", "-f", "health=unhealthy").stdout.split() == [doc_id[:12]]
    assert cove("ps", "-q", "-f", "health=none").stdout.split() == [plain[:12]]
    health = inspect(cove, "doc")["State"]["Health"]
    assert health["FailingStreak"] >= 2 and health["Log"][-1]["ExitCode"] == 1
    cove("exec", "doc", "touch", "/tmp/ok")
    wait_for("healthy", lambda: inspect(cove, "doc")["State"]["Health"]["Status"] == "healthy")
    assert "(healthy)" in cove("ps").stdout
    assert cove("ps", "-q", "-f", "health=healthy").stdout.split() == [doc_id[:12]]
    assert cove("ps", "-q", "-f", "health=unhealthy").stdout == ""


def test_named_and_anonymous_volumes(
    cove: CoveRunner, cove_root: Path, alpine: str, clean: None
) -> None:
    cove("run", "--rm", "-v", "data:/data", "alpine:3.20", "sh", "-c", "echo kept > /data/f")
    assert "data" in cove("volume", "ls", "-q").stdout.split()
    assert cove("run", "--rm", "-v", "data:/data", "alpine:3.20", "cat", "/data/f").stdout == (
        "kept\n"
    )
    vol = json.loads(cove("volume", "inspect", "data").stdout)[0]
    assert Path(vol["Mountpoint"], "f").read_text() == "kept\n"
    cove("run", "-d", "--name", "user", "--mount", "type=volume,src=data,dst=/d,readonly",
         "alpine:3.20", "sleep", "1000")  # fmt: skip
    ro = cove("exec", "user", "sh", "-c", "echo x > /d/g", check=False)
    assert ro.returncode != 0 and "Read-only" in ro.stderr
    busy = cove("volume", "rm", "data", check=False)
    assert busy.returncode == 1 and "volume is in use" in busy.stderr
    # --volumes-from sees the same volume
    out = cove("run", "--rm", "--volumes-from", "user", "alpine:3.20", "cat", "/d/f").stdout
    assert out == "kept\n"
    cove("rm", "-f", "user")
    cove("volume", "rm", "data")
    assert "data" not in cove("volume", "ls", "-q").stdout.split()

    # an image VOLUME gets the image's content copied up; rm -v removes the anonymous volume
    cove("import", "--change", "VOLUME /etc/apk", str(_alpine_tar()), "withvol:1")
    cove("run", "-d", "--name", "vol", "withvol:1", "sleep", "1000")
    assert "world" in cove("exec", "vol", "ls", "/etc/apk").stdout.split()
    mounts = inspect(cove, "vol")["Mounts"]
    assert len(mounts) == 1 and mounts[0]["Type"] == "volume"
    anon = mounts[0]["Name"]
    assert anon in cove("volume", "ls", "-q").stdout.split()
    cove("rm", "-f", "-v", "vol")
    assert anon not in cove("volume", "ls", "-q").stdout.split()
    cove("volume", "create", "spare")
    assert cove("volume", "prune", "-a").stdout.startswith("Deleted Volumes:\nspare")


def _alpine_tar() -> Path:
    from helpers import ALPINE_TAR

    return ALPINE_TAR


def test_cp_is_contained(cove: CoveRunner, cove_root: Path, alpine: str, clean: None,
                         tmp_path: Path) -> None:  # fmt: skip
    marker = f"cove-cp-{secrets.token_hex(4)}"
    cove("run", "-d", "--name", "box", "alpine:3.20", "sh", "-c",
         "echo container-shadow > /etc/shadow; ln -s / /evil; sleep 1000")  # fmt: skip
    wait_for("symlink", lambda: cove("exec", "box", "test", "-L", "/evil", check=False)
             .returncode == 0)  # fmt: skip
    out = tmp_path / "shadow"
    cove("cp", "box:/evil/etc/shadow", str(out))
    assert out.read_text() == "container-shadow\n"

    src = tmp_path / "payload"
    src.write_text("payload\n")
    host_target = Path("/tmp") / marker
    assert not host_target.exists()
    cove("cp", str(src), f"box:/evil/tmp/{marker}")
    assert not host_target.exists()
    assert cove("exec", "box", "cat", f"/tmp/{marker}").stdout == "payload\n"

    # directories both ways, and a stopped container
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("a\n")
    cove("cp", str(tree), "box:/opt/")
    assert cove("exec", "box", "cat", "/opt/tree/sub/a.txt").stdout == "a\n"
    cove("stop", "-t", "0", "box")
    back = tmp_path / "back"
    cove("cp", "box:/opt/tree", str(back))
    assert (back / "sub" / "a.txt").read_text() == "a\n"
    cove("cp", str(src), "box:/evil/root/")
    assert not Path("/root/payload").exists() or Path("/root/payload").read_text() != "payload\n"
    got = tmp_path / "got"
    cove("cp", "box:/root/payload", str(got))
    assert got.read_text() == "payload\n"
    missing = cove("cp", "box:/no/such", str(tmp_path / "x"), check=False)
    assert missing.returncode != 0 and "no/such" in missing.stderr


def test_diff_commit_export(cove: CoveRunner, cove_root: Path, alpine: str, clean: None,
                            tmp_path: Path) -> None:  # fmt: skip
    cove("run", "-d", "--name", "work", "alpine:3.20", "sleep", "1000")
    cove("exec", "work", "sh", "-c", "echo v2 > /etc/motd2; rm /etc/alpine-release; mkdir /new")
    diff = cove("diff", "work").stdout.splitlines()
    assert "A /etc/motd2" in diff and "D /etc/alpine-release" in diff and "C /etc" in diff
    assert "A /new" in diff
    image_id = cove("commit", "-m", "snap", "-c", "ENV STAGE=two", "work", "snap:1").stdout.strip()
    assert image_id.startswith("sha256:")
    run = cove("run", "--rm", "snap:1", "sh", "-c",
               "cat /etc/motd2; test -e /etc/alpine-release || echo gone; echo $STAGE")  # fmt: skip
    assert run.stdout == "v2\ngone\ntwo\n"
    hist = cove("history", "snap:1").stdout
    assert "snap" in hist
    out = tmp_path / "rootfs.tar"
    cove("export", "-o", str(out), "work")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert "etc/motd2" in names and "bin/busybox" in names
    assert "etc/alpine-release" not in names and not any(".wh." in n for n in names)


def test_create_start_attach_wait_rename_pause(
    cove: CoveRunner,
    cove_root: Path,
    alpine: str,
    clean: None,
    alpine_tar: Path,
    tmp_path: Path,
) -> None:
    cid = cove(
        "create", "--name", "later", "alpine:3.20", "sh", "-c", "echo hi; echo err >&2; exit 4"
    )
    assert cove("ps", "-a", "--format", "{{.State}}").stdout.strip() == "created"
    started = cove("start", "-a", "later", check=False)
    assert started.returncode == 4 and started.stdout == "hi\n" and started.stderr == "err\n"
    assert cove("wait", "later").stdout.strip() == "4"
    assert cid.stdout.strip().startswith(cove("ps", "-aq").stdout.strip())
    cove("run", "-d", "-i", "--name", "reader", "alpine:3.20", "sh", "-c",
         "read x; echo got $x; exit 5")  # fmt: skip
    att = cove("attach", "reader", input="hello\n", check=False)
    assert att.stdout == "got hello\n" and att.returncode == 5
    cove("run", "-d", "-t", "--name", "tty", "alpine:3.20", "sh", "-c", "tty; sleep 1000")
    wait_for("tty output", lambda: cove("logs", "tty").stdout)
    assert cove("logs", "tty").stdout.strip() == "/dev/pts/0"
    cove("rm", "-f", "reader", "tty")
    cove("rename", "later", "renamed")
    assert cove("ps", "-a", "--format", "{{.Names}}").stdout.strip() == "renamed"

    cove("run", "-d", "--name", "pp", "--label", "tier=web", "alpine:3.20", "sh", "-c", LOOP)
    cove("pause", "pp")
    assert cove("ps", "--format", "{{.State}}", "-f", "name=pp").stdout.strip() == "paused"
    n = len(cove("logs", "pp").stdout.split())
    time.sleep(0.6)
    assert len(cove("logs", "pp").stdout.split()) == n
    paused = cove("exec", "pp", "true", check=False)
    assert paused.returncode != 0 and "is paused, unpause the container" in paused.stderr, paused
    cove("unpause", "pp")
    assert cove("exec", "pp", "true").returncode == 0  # and the same exec works once unpaused
    wait_for("output again", lambda: len(cove("logs", "pp").stdout.split()) > n)
    assert cove("ps", "-q", "-f", "label=tier=web").stdout.strip()
    assert cove("ps", "-q", "-f", "label=tier=db").stdout.strip() == ""
    # a container of another image (not derived from alpine:3.20) must not match
    alpine_variant(cove, alpine_tar, "variant:1", tmp_path, add=lambda t: t.file("marker", b"v"))
    other = cove("run", "-d", "--name", "other", "variant:1", "sleep", "1000").stdout.strip()
    mine = sorted(inspect(cove, c)["Id"][:12] for c in ("pp", "renamed"))
    assert sorted(cove("ps", "-aq", "-f", "ancestor=alpine:3.20").stdout.split()) == mine
    assert cove("ps", "-aq", "-f", "ancestor=variant:1").stdout.split() == [other[:12]]
    cove("rm", "-f", "other")
    tab = cove("ps", "-a", "--format", "table {{.ID}}\t{{.Names}}").stdout.splitlines()
    assert tab[0].split("   ")[0] == "CONTAINER ID" and tab[0].endswith("NAMES") and len(tab) == 3
    assert cove("ps", "-f", "name=nomatch", "--format", "{{.ID}}").stdout == ""
    both = cove("ps", "-aq", "-f", "status=exited", "-f", "status=running").stdout.split()
    assert len(both) == 2  # one key's values are ORed
    rows = [json.loads(x) for x in cove("ps", "-a", "--format", "json").stdout.splitlines()]
    assert {r["Names"] for r in rows} == {"pp", "renamed"}
    assert cove("kill", "-s", "TERM", "pp").returncode == 0  # pid 1 ignores it
    assert inspect(cove, "pp")["State"]["Running"]
    cove("kill", "pp")
    assert cove("wait", "pp").stdout.strip() == "137"
    cove("container", "prune", "-f")
    assert cove("ps", "-aq").stdout == ""


def test_detached_rm(cove: CoveRunner, cove_root: Path, alpine: str, clean: None) -> None:
    cove("run", "-d", "--rm", "-v", "/scratch", "alpine:3.20", "sh", "-c", "echo bye")
    wait_for("auto-removal", lambda: cove("ps", "-aq").stdout == "" and not monitors(cove_root))
    assert cove("volume", "ls", "-q").stdout == ""  # its anonymous volume went with it
    failed = cove("run", "-d", "--rm", "alpine:3.20", "nosuch", check=False)
    assert failed.returncode == 127 and cove("ps", "-aq").stdout == ""


def test_log_max_size(cove: CoveRunner, cove_root: Path, alpine: str, clean: None) -> None:
    cove("run", "-d", "--name", "big", "--log-opt", "max-size=2k", "--log-opt", "max-file=2",
         "alpine:3.20", "sh", "-c", "seq 1 2000; sleep 1000")  # fmt: skip
    log = Path(inspect(cove, "big")["LogPath"])
    wait_for("rotation", lambda: Path(f"{log}.1").exists())
    wait_for("last line", lambda: '"2000\\n"' in log.read_text())
    assert log.stat().st_size <= 2048 and Path(f"{log}.1").stat().st_size <= 2048
    assert not Path(f"{log}.2").exists()
    assert cove("logs", "--tail", "1", "big").stdout == "2000\n"


def test_usage_errors(cove: CoveRunner, cove_root: Path, alpine: str, clean: None) -> None:
    assert cove("stop", "nosuch", check=False).returncode == 1
    bad = cove("run", "-d", "--restart", "sometimes", "alpine:3.20", "true", check=False)
    assert bad.returncode == 125 and "restart policy" in bad.stderr
    assert cove("ps", "-aq").stdout == ""
    failed = cove("run", "-d", "--name", "nocmd", "alpine:3.20", "nosuchcmd", check=False)
    assert failed.returncode == 127 and "executable file not found" in failed.stderr
    state = inspect(cove, "nocmd")["State"]
    assert state["Status"] == "created" and state["ExitCode"] == 127
    cove("run", "-d", "--name", "dup", "alpine:3.20", "sleep", "100")
    dup = cove("run", "-d", "--name", "dup", "alpine:3.20", "true", check=False)
    assert dup.returncode == 125 and "already in use" in dup.stderr
    running = cove("rm", "dup", check=False)
    assert running.returncode == 1 and "stop the container" in running.stderr
    created = cove("exec", "nocmd", "true", check=False)
    assert created.returncode != 0 and "is not running" in created.stderr, created


def test_foreground_run_is_logged(
    cove: CoveRunner, cove_root: Path, alpine: str, clean: None
) -> None:
    run = cove("run", "--name", "fg", "alpine:3.20", "sh", "-c", "echo out; echo err >&2; exit 4",
               check=False)  # fmt: skip
    assert (run.returncode, run.stdout, run.stderr) == (4, "out\n", "err\n")
    logs = cove("logs", "fg")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    # a reader that leaves early does not change the container's fate or its log
    import shlex

    argv = cove_argv(cove_root, "run", "--name", "many", "alpine:3.20", "seq", "1", "50000")
    head = subprocess.run(f"{shlex.join(argv)} | head -1", shell=True, capture_output=True,
                          text=True)  # fmt: skip
    assert head.stdout == "1\n"
    assert cove("logs", "--tail", "1", "many").stdout == "50000\n"
