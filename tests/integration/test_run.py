"""``cove run`` end to end: real namespaces, overlayfs, cgroups, seccomp, as root."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO, CoveRunner, cove_argv

PROBE = REPO / "tests" / "probe.sh"


def probe(cove: CoveRunner, *flags: str) -> dict[str, str]:
    out = cove(
        "run", "--rm", "-v", f"{PROBE}:/probe.sh:ro", *flags, "alpine:3.20", "sh", "/probe.sh"
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert values.get("probe") == "done", out
    return values


def host_ns(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


_BASELINE: set[str] = set()


def _cove_state(cid_prefix: str = "") -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        found += [line for line in f if "/containers/" in line or " overlay " in line]
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        d = ctrl / "cove"
        if d.is_dir():
            found += [str(p) for p in d.iterdir() if p.is_dir() and p.name.startswith(cid_prefix)]
    return found


@pytest.fixture(autouse=True)
def _baseline() -> None:
    """What other cove users of this machine had before the test is not the test's."""
    _BASELINE.clear()
    _BASELINE.update(_cove_state())


def leftovers(cid_prefix: str = "") -> list[str]:
    return [x for x in _cove_state(cid_prefix) if x not in _BASELINE]


def test_basic_exit_codes(cove: CoveRunner, alpine: str) -> None:
    assert cove("run", "--rm", "alpine:3.20", "cat", "/etc/alpine-release").stdout == "3.20.3\n"
    assert cove("run", "--rm", "alpine:3.20", "sh", "-c", "exit 42", check=False).returncode == 42
    missing = cove("run", "--rm", "alpine:3.20", "nosuchcmd", check=False)
    assert missing.returncode == 127
    assert missing.stderr.strip() == 'Error: exec: "nosuchcmd": executable file not found in $PATH'
    noexec = cove("run", "--rm", "alpine:3.20", "/etc/passwd", check=False)
    assert noexec.returncode == 126 and "permission denied" in noexec.stderr
    nosuch = cove("run", "--rm", "--pull", "never", "nosuch:1", "true", check=False)
    assert nosuch.returncode == 125 and "no such image" in nosuch.stderr
    bad = cove("run", "--rm", "--platform", "linux/arm64", "alpine:3.20", "true", check=False)
    assert bad.returncode == 125 and "linux/amd64" in bad.stderr
    # pid 1 ignores signals it has no handler for, so the shell survives its own SIGKILL
    assert (
        cove("run", "--rm", "alpine:3.20", "sh", "-c", "kill -9 $$; exit 5", check=False).returncode
        == 5
    )
    assert leftovers() == []


def test_isolation_seen_from_inside(cove: CoveRunner, alpine: str, tmp_path: Path) -> None:
    p = probe(cove, "--hostname", "box")
    assert p["pid"] == "1" and p["hostname"] == "box"
    for kind in ("cgroup", "ipc", "mnt", "net", "pid", "uts"):
        assert p[f"ns_{kind}"] != host_ns(kind), kind
    assert p["ns_user"] == host_ns("user")
    assert p["procs"] in ("3", "4", "5")  # the probe's own shell and its pipeline only
    assert p["ifaces"].split() == ["eth0", "lo"]  # the default bridge network
    assert p["root_mount"] == "overlay"
    assert p["CapEff"] == "00000000a80425fb" == p["CapBnd"]  # Docker's default set
    assert p["Seccomp"] == "2" and p["NoNewPrivs"] == "0"
    hostmnt = tmp_path / "hostmnt"
    hostmnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "hostonly", str(hostmnt)], check=True)
    try:
        out = cove(
            "run",
            "--rm",
            "alpine:3.20",
            "sh",
            "-c",
            f"ls /proc/{os.getpid()} 2>&1; grep -c hostonly /proc/self/mountinfo; ls /proc/self/fd",
        ).stdout.split()
    finally:
        subprocess.run(["umount", str(hostmnt)], check=True)
    assert "No such file or directory" in " ".join(out)
    assert out[-5:] == ["0", "0", "1", "2", "3"]  # no host mounts; fds: stdio and ls's own


def test_host_namespaces_shared_when_asked(cove: CoveRunner, alpine: str) -> None:
    p = probe(cove, "--pid=host", "--ipc=host", "--uts=host", "--network", "host")
    for kind in ("pid", "ipc", "uts", "net"):
        assert p[f"ns_{kind}"] == host_ns(kind), kind
    assert p["ns_mnt"] != host_ns("mnt")
    assert int(p["procs"]) > 10
    assert "lo" in p["ifaces"].split() and len(p["ifaces"].split()) > 1
    assert p["hostname"] == os.uname().nodename


def test_privileges_denied_then_lifted(cove: CoveRunner, alpine: str) -> None:
    script = (
        "mount -t tmpfs x /mnt 2>/dev/null; echo mount=$?; "
        "(echo h > /proc/sys/kernel/hostname) 2>/dev/null; echo sysctl=$?; "
        "unshare -U true 2>/dev/null; echo unshare=$?; "
        "cat /proc/kcore 2>/dev/null | head -c1 | wc -c"
    )
    out = cove("run", "--rm", "alpine:3.20", "sh", "-c", script).stdout.split()
    assert out == ["mount=1", "sysctl=1", "unshare=1", "0"]
    out = cove("run", "--rm", "--privileged", "alpine:3.20", "sh", "-c", script).stdout.split()
    assert out[:3] == ["mount=0", "sysctl=0", "unshare=0"]
    p = probe(cove, "--privileged")
    assert p["Seccomp"] == "0" and int(p["CapEff"], 16) > 0xA80425FB


def test_seccomp_profiles_and_caps(cove: CoveRunner, alpine: str, tmp_path: Path) -> None:
    profile = tmp_path / "deny-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
                ],
            }
        )
    )
    out = cove(
        "run",
        "--rm",
        "--security-opt",
        f"seccomp={profile}",
        "alpine:3.20",
        "sh",
        "-c",
        "mkdir /x 2>&1; echo rc=$?",
        check=False,
    ).stdout
    assert "Operation not permitted" in out and "rc=1" in out
    assert probe(cove, "--security-opt", "seccomp=unconfined")["Seccomp"] == "0"
    p = probe(cove, "--cap-drop", "ALL", "--cap-add", "NET_ADMIN")
    assert p["CapEff"] == "0000000000001000"
    p = probe(cove, "--cap-drop", "chown", "--security-opt", "no-new-privileges")
    assert int(p["CapEff"], 16) == 0xA80425FB & ~1 and p["NoNewPrivs"] == "1"


def test_memory_oom_is_137_and_recorded(cove: CoveRunner, alpine: str) -> None:
    proc = cove(
        "run",
        "--name",
        "oom",
        "--memory",
        "32m",
        "alpine:3.20",
        "sh",
        "-c",
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived",
        check=False,
    )
    assert proc.returncode == 137, proc.stderr
    assert "survived" not in proc.stdout
    state = json.loads(cove("container", "inspect", "oom").stdout)[0]["State"]
    assert state["OOMKilled"] is True and state["ExitCode"] == 137
    assert state["Status"] == "exited"
    cove("rm", "oom")
    assert leftovers() == []


def test_pids_and_cpu_limits(cove: CoveRunner, alpine: str) -> None:
    loop = "for i in $(seq 1 40); do sleep 2 & done; wait"
    stopped = cove(
        "run", "--rm", "--pids-limit", "16", "alpine:3.20", "sh", "-c", loop, check=False
    )
    assert stopped.returncode != 0 and "can't fork" in stopped.stderr
    assert (
        cove("run", "--rm", "--pids-limit", "64", "alpine:3.20", "sh", "-c", loop).returncode == 0
    )
    p = probe(cove, "--cpus", "0.5", "--pids-limit", "16", "--memory", "64m")
    assert p["cg_cpu_cpu_cfs_quota_us"] == "50000"
    assert p["cg_pids_pids_max"] == "16"
    assert p["cg_memory_memory_limit_in_bytes"] == str(64 << 20)
    out = cove(
        "run",
        "--rm",
        "--cpu-shares",
        "512",
        "--cpuset-cpus",
        "0",
        "alpine:3.20",
        "cat",
        "/sys/fs/cgroup/cpu/cpu.shares",
        "/sys/fs/cgroup/cpuset/cpuset.cpus",
    ).stdout
    assert out.split() == ["512", "0"]


def test_volumes_readonly_tmpfs(cove: CoveRunner, alpine: str, tmp_path: Path) -> None:
    host = tmp_path / "data"
    host.mkdir()
    (host / "in").write_text("from host\n")
    out = cove(
        "run",
        "--rm",
        "-v",
        f"{host}:/data",
        "alpine:3.20",
        "sh",
        "-c",
        "cat /data/in; echo from container > /data/out",
    ).stdout
    assert out == "from host\n" and (host / "out").read_text() == "from container\n"
    ro = cove(
        "run",
        "--rm",
        "-v",
        f"{host}:/data:ro",
        "alpine:3.20",
        "sh",
        "-c",
        "echo x > /data/new",
        check=False,
    )
    assert ro.returncode != 0 and not (host / "new").exists()
    out = cove(
        "run",
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "alpine:3.20",
        "sh",
        "-c",
        "touch /rootfile 2>/dev/null; echo root=$?; touch /tmp/f; echo tmp=$?",
    ).stdout
    assert out.split() == ["root=1", "tmp=0"]
    missing = host.parent / "made-by-v"
    bad = cove("run", "--rm", "--mount", f"type=bind,src={missing},dst=/x", "alpine:3.20", "true",
               check=False)  # fmt: skip
    assert bad.returncode == 125 and "does not exist" in bad.stderr
    # -v, unlike --mount, makes a missing host directory (as Docker does)
    cove("run", "--rm", "-v", f"{missing}:/x", "alpine:3.20", "true")
    assert missing.is_dir()


def test_user_workdir_env(cove: CoveRunner, alpine: str, tmp_path: Path) -> None:
    assert cove("run", "--rm", "-u", "nobody", "alpine:3.20", "id").stdout.strip() == (
        "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)"
    )
    ids = cove("run", "--rm", "-u", "1000:1000", "alpine:3.20", "sh", "-c", "id -u; id -g").stdout
    assert ids.split() == ["1000", "1000"]
    p = probe(cove, "-u", "nobody")
    assert p["CapEff"] == "0000000000000000" and p["Uid"].split()[0] == "65534"
    bad = cove("run", "--rm", "-u", "nosuchuser", "alpine:3.20", "true", check=False)
    assert bad.returncode == 125 and "unable to find user nosuchuser" in bad.stderr
    assert cove("run", "--rm", "-w", "/srv/app", "alpine:3.20", "pwd").stdout == "/srv/app\n"
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\nBOTH=file\n")
    out = cove(
        "run",
        "--rm",
        "-e",
        "A=b c",
        "--env-file",
        str(env_file),
        "-e",
        "BOTH=flag",
        "alpine:3.20",
        "sh",
        "-c",
        'echo "$A|$FROM_FILE|$BOTH|$HOME|$PATH"',
    ).stdout
    assert (
        out.strip()
        == "b c|1|flag|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )


def test_entrypoint_and_cmd_rules(cove: CoveRunner, alpine_tar: Path) -> None:
    cove(
        "import",
        "-c",
        'ENTRYPOINT ["echo", "ep"]',
        "-c",
        'CMD ["default"]',
        str(alpine_tar),
        "ep:1",
    )
    cove("import", "-c", 'CMD ["echo", "cmd-only"]', str(alpine_tar), "cmd:1")
    run = lambda *a: cove("run", "--rm", *a).stdout.strip()  # noqa: E731
    assert run("ep:1") == "ep default"
    assert run("ep:1", "given") == "ep given"
    assert run("--entrypoint", "echo", "ep:1") == ""  # --entrypoint resets CMD
    assert run("--entrypoint", "echo", "ep:1", "x") == "x"
    assert run("cmd:1") == "cmd-only"
    assert run("cmd:1", "echo", "replaced") == "replaced"


def test_tty_through_a_pty(cove: CoveRunner, alpine: str, cove_root: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        argv = cove_argv(cove_root, "run", "--rm", "-t", "alpine:3.20", "sh", "-c", "tty")
        os.execv(argv[0], argv)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 1)
        if r:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    lines = out.decode().split()
    assert lines[0] == "/dev/pts/0", out


def test_signals_forwarded(cove: CoveRunner, alpine: str, cove_root: Path) -> None:
    script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        cove_argv(cove_root, "run", "--rm", "alpine:3.20", "sh", "-c", script),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 3 and "got-term" in out
    assert leftovers() == []


def test_init_reaper_and_userns_refusal(cove: CoveRunner, alpine: str) -> None:
    out = cove(
        "run",
        "--rm",
        "--init",
        "alpine:3.20",
        "sh",
        "-c",
        "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$",
    ).stdout.split("\n")
    assert out[0].startswith("/sbin/cove-init -- sh -c") and out[1] != "1"
    # pytest's temporary directories are 0700: a mapped root cannot reach a bundle below them
    refused = cove("run", "--rm", "--userns=auto", "alpine:3.20", "true", check=False)
    assert refused.returncode == 125 and "searchable by others" in refused.stderr


def test_user_namespace(alpine_tar: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="cove-userns-", dir="/var/tmp"))
    root.chmod(0o711)

    def cove(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cove_argv(root, *args),
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        assert cove("import", str(alpine_tar), "alpine:3.20").returncode == 0
        proc = cove(
            "run",
            "--name",
            "ns",
            "--userns=auto",
            "-v",
            f"{PROBE}:/probe.sh:ro",
            "alpine:3.20",
            "sh",
            "-c",
            "sh /probe.sh; echo extra >> /etc/passwd && echo write-ok; ls -ln /etc/passwd",
        )
        assert proc.returncode == 0, proc.stderr
        p = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        assert p["ns_user"] != host_ns("user") and p["Uid"].split()[0] == "0"
        container, host, size = p["uid_map"].strip(" ;").split()
        assert container == "0" and int(host) >= 100000 and size == "65536"
        assert "write-ok" in proc.stdout
        assert proc.stdout.split()[-7:-5] == ["0", "0"]  # the image's files belong to its root
        [cdir] = (root / "containers").iterdir()
        copied = cdir / "upper" / "etc" / "passwd"
        assert copied.stat().st_uid == int(host)  # on the host, the mapped uid owns the change
        out = cove(
            "run",
            "--rm",
            "--uidmap",
            "0:200000:65536",
            "alpine:3.20",
            "sh",
            "-c",
            "cat /etc/alpine-release; cat /proc/self/uid_map",
        ).stdout.split()
        assert out == ["3.20.3", "0", "200000", "65536"]
        assert cove("rm", "ns").returncode == 0
        assert leftovers() == []
    finally:
        cove("system", "reset", "-f")
        shutil.rmtree(root)


def test_names_state_and_cleanup(cove: CoveRunner, alpine: str, cove_root: Path) -> None:
    cove("run", "--name", "keep", "alpine:3.20", "sh", "-c", "echo hi > /f")
    dup = cove("run", "--name", "keep", "alpine:3.20", "true", check=False)
    assert dup.returncode == 125 and "already in use" in dup.stderr
    assert "keep" in cove("ps", "-a").stdout and "keep" not in cove("ps").stdout
    bundle = json.loads((next((cove_root / "containers").iterdir()) / "config.json").read_text())
    assert bundle["ociVersion"] == "1.1.0" and bundle["process"]["args"] == [
        "sh",
        "-c",
        "echo hi > /f",
    ]
    used = cove("rmi", "alpine:3.20", check=False)
    assert used.returncode == 1 and "is using its referenced image" in used.stderr
    cove("rm", "keep")
    assert list((cove_root / "containers").iterdir()) == []
    assert list((cove_root / "runtime").iterdir()) == []
    assert cove("ps", "-aq").stdout.strip() == ""
    assert leftovers() == []
