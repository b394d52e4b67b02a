"""Rootless cove (issue 21): an ordinary user runs images, builds and containers without root.

Each test makes its own users (useradd, a home under a fresh world-traversable temp dir,
their own /etc/subuid and /etc/subgid lines) and runs the real ``cove`` as them through
runuser. Afterwards every process of those users (the pause process holding the user
namespace, slirp4netns, monitors, containers) is killed, the lines and the users are removed,
and the test checks nothing is left: no process of the users' uids or subordinate ranges,
no mount naming their homes, no file of theirs in /tmp, /run, /var/tmp or /dev/shm.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import vmguest
from helpers import REPO

SUBID_FILES = ("/etc/subuid", "/etc/subgid")
RANGE = 65536
HTTP_PORT = 18081


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    subid_start: int
    procs: list[int] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.home / ".local" / "share" / "cove"

    def env(self) -> list[str]:
        return [
            f"HOME={self.home}",
            f"USER={self.name}",
            f"LOGNAME={self.name}",
            f"XDG_RUNTIME_DIR={self.home / 'run'}",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]

    def cove(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", self.name, "--", "env", "-i", *self.env(),
                sys.executable, "-m", "cove", *args]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.home)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cove {' '.join(args)} as {self.name} exited {proc.returncode}\n"
                f"stdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
            )
        return proc

    def shell(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", self.name, "--", "sh", "-c", script],
                              capture_output=True, text=True, timeout=60)  # fmt: skip


def _uid_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _owned_pids(uids: range | set[int]) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) in uids]


def _edit_subids(drop: str, add: str | None = None) -> None:
    """Rewrite /etc/subuid and /etc/subgid without ``drop``'s lines (and with ``add``),
    under a lock so two tests never interleave their edits."""
    with open("/etc/.cove-subid-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path in SUBID_FILES:
            try:
                lines = Path(path).read_text().splitlines()
            except FileNotFoundError:
                lines = []
            keep = [line for line in lines if not line.startswith(drop + ":")]
            if add:
                keep.append(add)
            tmp = Path(path + ".cove-test")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)


def _free_subid_start() -> int:
    """A range above every range already listed (so no other user's ids are ever mapped)."""
    top = 1_000_000_000
    for path in SUBID_FILES:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    top = max(top, int(parts[1]) + int(parts[2]))
    return top + RANGE * (os.getpid() % 16)


def _leftovers(users: list[User], base: Path) -> list[str]:
    found: list[str] = []
    ids: set[int] = set()
    for u in users:
        ids |= {u.uid, *range(u.subid_start, u.subid_start + RANGE)}
    found += [f"process {p}" for p in _owned_pids(ids)]
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if str(base) in line]
    for d in ("/tmp", "/run", "/var/tmp", "/dev/shm", "/run/user"):
        with contextlib.suppress(OSError):
            for name in os.listdir(d):
                with contextlib.suppress(OSError):
                    if os.lstat(os.path.join(d, name)).st_uid in ids:
                        found.append(f"file {d}/{name}")
    return found


@pytest.fixture
def make_user() -> Iterator[Callable[..., User]]:
    """``make_user(ranges=True)``: a fresh user with (or without) subordinate ids."""
    if not os.access(REPO / "cove", os.R_OK | os.X_OK) or _not_traversable(REPO):
        pytest.fail(f"{REPO} must be readable by every user for rootless cove (install.sh)")
    base = Path(tempfile.mkdtemp(prefix="cove-rootless-", dir="/tmp"))
    os.chmod(base, 0o755)
    users: list[User] = []

    def make(ranges: bool = True) -> User:
        name = f"cvr{os.getpid() % 10000}x{len(users)}"
        home = base / name
        subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh",
                        "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                       check=True, capture_output=True)  # fmt: skip
        pw = pwd.getpwnam(name)
        start = _free_subid_start() + RANGE * 16 * len(users)
        user = User(name, pw.pw_uid, pw.pw_gid, home, start)
        users.append(user)
        (home / "run").mkdir(mode=0o700)
        os.chown(home / "run", pw.pw_uid, pw.pw_gid)
        if ranges:
            _edit_subids(name, f"{name}:{start}:{RANGE}")
        return user

    try:
        yield make
    finally:
        ids: set[int] = set()
        for u in users:
            ids |= {u.uid, *range(u.subid_start, u.subid_start + RANGE)}
        for _ in range(100):  # until the kernel has reaped them (a dying process lingers)
            pids = _owned_pids(ids)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for u in users:
            _edit_subids(u.name)
            subprocess.run(["userdel", u.name], capture_output=True)
        leftovers = _leftovers(users, base)
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, f"left behind: {leftovers}"


def _not_traversable(path: Path) -> bool:
    for p in [path, *path.parents]:
        if not os.stat(p).st_mode & 0o001:
            return True
    return False


def _import_alpine(u: User, alpine_tar: Path) -> None:
    u.cove("import", "--change", 'CMD ["/bin/sh"]', str(alpine_tar), "alpine:3.20")


def _web_image(u: User) -> None:
    """FROM alpine with the host's static busybox (its httpd) and a USER."""
    ctx = u.home / "web"
    ctx.mkdir()
    shutil.copy("/bin/busybox", ctx / "busybox-static")
    (ctx / "Dockerfile").write_text(
        "FROM alpine:3.20\n"
        "COPY busybox-static /bin/busybox-static\n"
        "RUN mkdir /www && echo hello-rootless > /www/index.html && adduser -D -u 1500 app\n"
        "USER app\n"
    )
    subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(ctx)], check=True)
    u.cove("build", "-q", "-t", "web:1", str(ctx))


def test_missing_ranges_name_the_line_to_add(make_user: Callable[..., User]) -> None:
    u = make_user(ranges=False)
    proc = u.cove("images", check=False)
    assert proc.returncode == 125, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f'add "{u.name}:' in lines[0] and "/etc/subuid" in lines[0], lines[0]
    assert not _owned_pids({u.uid}), "a failed start left a process"
    # positive control: with the line the same command works
    _edit_subids(u.name, f"{u.name}:{u.subid_start}:{RANGE}")
    assert u.cove("images").returncode == 0


def test_run_id_release_and_volume_ownership(
    make_user: Callable[..., User], alpine_tar: Path
) -> None:
    u = make_user()
    _import_alpine(u, alpine_tar)
    out = u.cove("run", "--rm", "alpine:3.20", "sh", "-c",
                 "id -u; cat /etc/alpine-release; cat /proc/self/uid_map").stdout  # fmt: skip
    lines = out.split("\n")
    assert lines[0] == "0" and lines[1] == "3.20.3", out
    # the container's root is the user outside, the rest its subordinate range
    maps = [line.split() for line in lines[2:] if line.strip()]
    assert ["0", str(u.uid), "1"] in maps, maps
    assert ["1", str(u.subid_start), str(RANGE)] in maps, maps
    vol = u.home / "vol"
    vol.mkdir()
    os.chown(vol, u.uid, u.gid)
    u.cove("run", "--rm", "-v", f"{vol}:/data", "alpine:3.20", "sh", "-c",
           "echo hi > /data/root-file && echo x > /data/other && "
           "chown 1234:1234 /data/other")  # fmt: skip
    st = os.stat(vol / "root-file")
    assert (st.st_uid, st.st_gid) == (u.uid, u.gid)
    st = os.stat(vol / "other")  # container uid 1234 is subordinate id start + 1233
    assert (st.st_uid, st.st_gid) == (u.subid_start + 1233, u.subid_start + 1233)
    # a named volume lives in the user's own root, owned by the user
    u.cove("run", "--rm", "-v", "data:/data", "alpine:3.20", "sh", "-c", "echo v > /data/f")
    found = list(u.root.glob("volumes/*/_data/f"))
    assert found and os.stat(found[0]).st_uid == u.uid, found
    # nothing of the user's went to the system root
    assert all(os.stat(p).st_uid == u.uid for p in (u.root, u.root / "state.db"))


def test_build_user_and_layers(make_user: Callable[..., User], alpine_tar: Path) -> None:
    u = make_user()
    # the shared Dockerfile (FROM scratch, ADD the minirootfs), with the local tarball
    ctx = u.home / "alpine"
    ctx.mkdir()
    text = (Path(alpine_tar).parent / "Dockerfile").read_text()
    (ctx / "Dockerfile").write_text(text)
    shutil.copy(alpine_tar, ctx / alpine_tar.name)
    subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(ctx)], check=True)
    u.cove("build", "-q", "-t", "alpine:3.20", str(ctx))
    assert u.cove("run", "--rm", "alpine:3.20", "cat", "/etc/alpine-release").stdout == "3.20.3\n"
    # whiteouts and an opaque directory in a rootless build's layers
    ctx2 = u.home / "wh"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text(
        "FROM alpine:3.20\n"
        "RUN mkdir -p /d/sub && touch /d/a /d/sub/b /gone\n"
        "RUN rm /gone /etc/motd && rm -rf /d && mkdir /d && touch /d/new\n"
    )
    subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(ctx2)], check=True)
    u.cove("build", "-q", "-t", "wh:1", str(ctx2))
    out = u.cove("run", "--rm", "wh:1", "sh", "-c", "ls /d; ls /gone /etc/motd 2>&1; "
                 "ls /etc/apk/world").stdout  # fmt: skip
    assert out.split("\n")[0] == "new", out
    assert "/gone: No such file" in out and "/etc/motd: No such file" in out, out
    assert "/etc/apk/world" in out, out  # positive control: a file no layer removed
    # an app with USER
    _web_image(u)
    assert u.cove("run", "--rm", "web:1", "id", "-u").stdout == "1500\n"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def _poll(url: str, attempts: int = 100) -> str:
    for _ in range(attempts):  # readiness of httpd, not a timing assertion
        with contextlib.suppress(OSError):
            return _get(url)
        time.sleep(0.1)
    return _get(url)


def test_detached_port_exec_logs_stop_rm(make_user: Callable[..., User], alpine_tar: Path) -> None:
    u = make_user()
    _import_alpine(u, alpine_tar)
    _web_image(u)
    u.cove("run", "-d", "--name", "web", "-p", f"{HTTP_PORT}:8080", "web:1",
           "/bin/busybox-static", "httpd", "-f", "-v", "-p", "8080", "-h", "/www")  # fmt: skip
    assert _poll(f"http://127.0.0.1:{HTTP_PORT}/") == "hello-rootless\n"
    assert u.cove("exec", "web", "cat", "/www/index.html").stdout == "hello-rootless\n"
    assert u.cove("exec", "web", "id", "-u").stdout == "1500\n"
    assert "response:200" in u.cove("logs", "web").stderr + u.cove("logs", "web").stdout
    ps = u.cove("ps").stdout
    assert "web" in ps and f"{HTTP_PORT}->8080" in ps, ps
    u.cove("stop", "web")
    assert "web" not in u.cove("ps").stdout
    u.cove("rm", "web")
    assert "web" not in u.cove("ps", "-a").stdout
    with pytest.raises(OSError):  # the forward went with the container
        _get(f"http://127.0.0.1:{HTTP_PORT}/")


def test_user_network_by_name(make_user: Callable[..., User], alpine_tar: Path) -> None:
    u = make_user()
    _import_alpine(u, alpine_tar)
    _web_image(u)
    u.cove("network", "create", "unet")
    u.cove("run", "-d", "--name", "srv", "--network", "unet", "web:1",
           "/bin/busybox-static", "httpd", "-f", "-p", "8080", "-h", "/www")  # fmt: skip
    fetch = "for i in $(seq 50); do wget -qO- http://srv:8080/ && exit 0; sleep 0.1; done; exit 1"
    out = u.cove("run", "--rm", "--network", "unet", "alpine:3.20", "sh", "-c", fetch)
    assert out.stdout == "hello-rootless\n"
    # negative: the name means nothing on the default network
    other = u.cove("run", "--rm", "alpine:3.20", "wget", "-qO-", "-T", "2", "http://srv:8080/",
                   check=False)  # fmt: skip
    assert other.returncode != 0 and "hello-rootless" not in other.stdout
    # the user's bridges are in cove's rootless namespace, never on the host
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "veth" + u.cove("inspect", "-f", "{{.Id}}", "srv").stdout[:8] not in host_links
    u.cove("rm", "-f", "srv")
    u.cove("network", "rm", "unet")


def test_second_user_sees_nothing(make_user: Callable[..., User], alpine_tar: Path) -> None:
    a, b = make_user(), make_user()
    _import_alpine(a, alpine_tar)
    a.cove("run", "-d", "--name", "a-top", "alpine:3.20", "sleep", "300")
    a.cove("network", "create", "a-net")
    assert "a-top" in a.cove("ps").stdout  # positive control
    assert "alpine" in a.cove("images").stdout
    assert "a-net" in a.cove("network", "ls").stdout
    assert "a-top" not in b.cove("ps", "-a").stdout
    assert "alpine" not in b.cove("images").stdout
    assert "a-net" not in b.cove("network", "ls").stdout
    assert b.cove("stop", "a-top", check=False).returncode != 0
    # b cannot read a's root at all
    assert b.shell(f"ls {a.root}").returncode != 0
    assert a.shell(f"ls {a.root}").returncode == 0
    a.cove("rm", "-f", "a-top")


def test_limits_warning_without_delegation(
    make_user: Callable[..., User], alpine_tar: Path
) -> None:
    u = make_user()
    _import_alpine(u, alpine_tar)
    with open("/proc/self/mountinfo") as f:
        v1 = any(re.search(r" - cgroup ", line) for line in f)
    limited = u.cove("run", "--rm", "--memory", "64m", "alpine:3.20", "true")
    plain = u.cove("run", "--rm", "alpine:3.20", "true")
    warned = [x for x in limited.stderr.splitlines() if "limits are ignored" in x]
    assert "limits are ignored" not in plain.stderr  # control: no limits, no warning
    if v1:  # v1 or hybrid: never delegated
        assert len(warned) == 1, limited.stderr


def test_keep_id(make_user: Callable[..., User], alpine_tar: Path) -> None:
    u = make_user()
    _import_alpine(u, alpine_tar)
    vol = u.home / "kvol"
    vol.mkdir()
    os.chown(vol, u.uid, u.gid)
    script = ("id -u; id -g; id -un; echo $HOME; stat -c %u:%g /etc/passwd /bin/busybox; "
              "cat /proc/self/uid_map; echo k > /data/kept")  # fmt: skip
    out = u.cove("run", "--rm", "--userns=keep-id", "-v", f"{vol}:/data", "alpine:3.20",
                 "sh", "-c", script).stdout.split("\n")  # fmt: skip
    assert out[:4] == [str(u.uid), str(u.gid), u.name, str(u.home)], out
    # the image's files keep their owners inside (the shifted copies of the layers)
    assert out[4:6] == ["0:0", "0:0"], out
    maps = [line.split() for line in out[6:] if line.strip()]
    assert ["0", "1", str(u.uid)] in maps and [str(u.uid), "0", "1"] in maps, maps
    st = os.stat(vol / "kept")
    assert (st.st_uid, st.st_gid) == (u.uid, u.gid)
    # control: without keep-id the same write is the container's root, also the user, but
    # the process is uid 0 inside
    out2 = u.cove("run", "--rm", "-v", f"{vol}:/data", "alpine:3.20", "sh", "-c",
                  "id -u; echo r > /data/root").stdout  # fmt: skip
    assert out2 == "0\n" and os.stat(vol / "root").st_uid == u.uid
    # keep-id:uid=N,gid=N and an explicit --user, and keep-id refused as root
    out3 = u.cove("run", "--rm", "--userns=keep-id:uid=1234,gid=1234", "-v", f"{vol}:/data",
                  "alpine:3.20", "sh", "-c", "id -u; echo n > /data/n").stdout  # fmt: skip
    assert out3 == "1234\n" and os.stat(vol / "n").st_uid == u.uid
    assert u.cove("run", "--rm", "--userns=keep-id", "--user", "0", "alpine:3.20",
                  "id", "-u").stdout == "0\n"  # fmt: skip
    # detached, exec joins its namespace as the kept user
    u.cove("run", "-d", "--name", "kept", "--userns=keep-id", "alpine:3.20", "sleep", "300")
    assert u.cove("exec", "kept", "id", "-u").stdout == f"{u.uid}\n"
    u.cove("rm", "-f", "kept")
    # the shifted copies of the layers live in the user's root and go with the image
    assert list(u.root.glob("idmapped/*/*")), "no shifted layer copies"
    u.cove("rmi", "alpine:3.20")
    assert not list(u.root.glob("idmapped/*/*"))


def _user_kernel(u: User) -> tuple[vmguest.Kernel, Path]:
    """The guest kernel (a copy the user owns, where ``cove vm kernel fetch`` puts it in the
    user's root) and a busybox initramfs that prints the marker."""
    k = vmguest.test_kernel()
    initrd = vmguest.build_initramfs(u.home / "initrd.gz", k, vmguest.guest_init())
    dest = u.root / "kernels" / k.release
    dest.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", k.dir, str(dest)], check=True)
    subprocess.run(["chown", "-R", f"{u.uid}:{u.gid}", str(u.home / ".local"), str(initrd)],
                   check=True)  # fmt: skip
    return vmguest.Kernel(k.release, str(dest)), initrd


def _vm_log(u: User, name: str, text: str) -> str:
    log = ""
    for _ in range(600):  # readiness of a TCG boot, not a timing assertion
        log = u.cove("vm", "logs", name).stdout
        if text in log:
            return log
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared in the log of vm {name}:\n{log[-3000:]}")


def test_vm_create_start_and_run_vm(make_user: Callable[..., User], alpine_tar: Path) -> None:
    u = make_user()
    kernel, initrd = _user_kernel(u)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    u.cove("vm", "create", "uvm", "--cpus", "1", "--memory", "256M", "--kernel",
           kernel.vmlinuz, "--initrd", str(initrd), "--append",
           f"{vmguest.CMDLINE} cove.dhcp=1", "-p", f"127.0.0.1:{port}:80")  # fmt: skip
    u.cove("vm", "start", "uvm")
    _vm_log(u, "uvm", vmguest.MARKER)
    # user-mode networking: the published port reaches the guest's httpd
    assert vmguest.MARKER in _poll(f"http://127.0.0.1:{port}/")
    info = json.loads(u.cove("vm", "inspect", "uvm").stdout)[0]
    qemu = info["State"]["Pid"]
    assert _uid_of(str(qemu)) == u.uid  # QEMU runs as the user, no -runas ...
    with open(f"/proc/{qemu}/status") as f:  # ... with no capability in its namespace
        caps = dict(line.split(":\t") for line in f.read().splitlines() if line.startswith("Cap"))
    assert {caps[k].strip() for k in ("CapEff", "CapPrm", "CapBnd")} == {"0" * 16}, caps
    # its sockets in the user's runtime directory, nothing in /run/cove-vm
    assert all(p.startswith(str(u.home)) for p in info["Paths"].values()), info["Paths"]
    kvm = u.shell("test -r /dev/kvm -a -w /dev/kvm").returncode == 0
    if not kvm:  # TCG always; KVM only where the user may open /dev/kvm
        assert info["Accelerator"]["Name"] == "tcg", info["Accelerator"]
    u.cove("vm", "rm", "-f", "uvm")
    assert "uvm" not in u.cove("vm", "ls").stdout
    # a cove network needs a tap: refused rootless, naming the way out
    u.cove("network", "create", "vnet")
    bad = u.cove("vm", "create", "tapvm", "--kernel", kernel.vmlinuz, "--initrd", str(initrd),
                 "--network", "vnet", check=False)  # fmt: skip
    assert bad.returncode != 0 and "--network user" in bad.stderr, bad
    assert "tapvm" not in u.cove("vm", "ls").stdout
    # run --vm: the command's output, in the VM (its own kernel)
    _import_alpine(u, alpine_tar)
    out = u.cove("run", "--vm", "--rm", "alpine:3.20", "sh", "-c",
                 "cat /etc/alpine-release; uname -r", timeout=300).stdout  # fmt: skip
    assert out == f"3.20.3\n{kernel.release}\n", out
    # a volume shared over virtiofsd, which runs as the user: the guest's file is hers
    share = u.home / "vmshare"
    share.mkdir()
    os.chown(share, u.uid, u.gid)
    u.cove("run", "--vm", "--rm", "-v", f"{share}:/data", "alpine:3.20", "sh", "-c",
           "echo from-vm > /data/f", timeout=300)  # fmt: skip
    assert (share / "f").read_text() == "from-vm\n"
    assert os.stat(share / "f").st_uid == u.uid
