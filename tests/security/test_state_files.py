"""The state root is private to root (issue 15).

Attack: a local unprivileged account (nobody) reads a container's ``-e PASSWORD=...`` from
state.db, config.json or the json log, a secret COPYed by a build from the layers or the build
cache, a volume's files, connects to an attach socket, or runs a setuid binary a container
planted in its upper dir (the CVE-2021-41091 class). Every path of the root is listed by
root and then tried by nobody.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CoveRunner, as_user, cove_argv

# the host's (static) busybox: a setuid copy planted in an upper dir runs on the host
HOST_BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@pytest.fixture
def public_root() -> Iterator[tuple[Path, CoveRunner]]:
    """A state root whose parents every account may traverse (pytest's tmp_path is 0700,
    which would hide the root from nobody whatever cove does)."""
    top = Path(tempfile.mkdtemp(prefix="cove-private-", dir="/tmp"))
    top.chmod(0o755)
    root = top / "root"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cove_argv(root, *args), capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"cove {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    try:
        yield root, run
    finally:
        if (root / "state.db").exists():
            run("system", "reset", "-f", check=False)
        shutil.rmtree(top, ignore_errors=True)


def _populate(root: Path, cove: CoveRunner, alpine_tar: Path, secret: str) -> Path:
    """Containers (running, stopped), a volume, an image, a build, logs, all holding
    ``secret``; returns the host path of a setuid busybox the running container planted."""
    if not os.path.exists(HOST_BUSYBOX):
        pytest.skip("needs the host's busybox (Debian package busybox-static)")
    cove("import", "--change", 'CMD ["/bin/sh"]', str(alpine_tar), "alpine:3.20")
    cove("volume", "create", "vol")
    plant = (
        "cp /hostbb /suid && chmod 4755 /suid && echo $PASSWORD > /data/secret && "
        "chmod 644 /data/secret && echo $PASSWORD && echo ready && sleep 1000"
    )
    cid = cove("run", "-d", "--name", "running", "-e", f"PASSWORD={secret}", "-v", "vol:/data",
               "-v", f"{HOST_BUSYBOX}:/hostbb:ro", "alpine:3.20", "sh", "-c", plant
               ).stdout.strip()  # fmt: skip
    for _ in range(200):
        if "ready" in cove("logs", "running").stdout:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    cove("run", "--name", "stopped", "-e", f"PASSWORD={secret}", "alpine:3.20",
         "sh", "-c", "echo $PASSWORD")  # fmt: skip
    ctx = root.parent / "ctx"
    ctx.mkdir()
    (ctx / "secret.txt").write_text(secret + "\n")
    (ctx / "Dockerfile").write_text(
        "FROM alpine:3.20\nCOPY secret.txt /secret.txt\nRUN cat /secret.txt > /copy.txt\n"
    )
    cove("build", "-t", "built:1", str(ctx))
    shutil.rmtree(ctx)
    suid = root / "containers" / cid / "upper" / "suid"
    assert suid.stat().st_mode & stat.S_ISUID, "the container could not plant its setuid file"
    return suid


def _connect(path: str) -> None:
    """Connect to a unix socket whatever its path's length (through an fd of its dir)."""
    dfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(f"/proc/self/fd/{dfd}/{os.path.basename(path)}")
    finally:
        os.close(dfd)


def _probe(paths: list[str], secret: str, suid: str) -> dict[str, list[str]]:
    """Runs as nobody: every path opened (or listed, or connected to); what worked."""
    opened, leaked, connected = [], [], []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        try:
            if stat.S_ISSOCK(st.st_mode):
                _connect(path)
                connected.append(path)
            elif stat.S_ISDIR(st.st_mode):
                os.listdir(path)
                opened.append(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    data = f.read()
                opened.append(path)
                if secret.encode() in data:
                    leaked.append(path)
        except OSError:
            continue
    ran = []
    try:
        subprocess.run([suid, "true"], check=False, capture_output=True, timeout=30)
        ran.append(suid)
    except OSError as e:
        if not isinstance(e, PermissionError):
            raise
    return {"opened": opened, "leaked": leaked, "connected": connected, "ran": ran}


def _tree(root: Path) -> list[str]:
    out = [str(root)]
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.join(dirpath, n) for n in [*dirnames, *filenames]]
    return out


def _is_content(rel: tuple[str, ...]) -> bool:
    """Image and container content, whose modes are the image's (not cove's to change)."""
    return (
        (len(rel) >= 2 and rel[0] == "layers" and not rel[1].endswith(".json"))
        or (len(rel) >= 4 and rel[0] == "containers" and rel[2] in ("upper", "work"))
        or (len(rel) >= 4 and rel[0] == "volumes" and rel[2] == "_data")
    )


def test_nobody_finds_nothing_in_the_root(
    public_root: tuple[Path, CoveRunner], alpine_tar: Path
) -> None:
    root, cove = public_root
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    suid = _populate(root, cove, alpine_tar, secret)
    paths = _tree(root)
    got = as_user(lambda: _probe(paths, secret, str(suid)))
    assert got["leaked"] == [], got["leaked"]
    assert got["ran"] == [], "nobody ran a setuid binary planted in a container's upper dir"
    assert got["connected"] == [], got["connected"]
    assert got["opened"] == [], got["opened"][:20]

    # positive control: root reads it all, and the containers still work
    found = [p for p in paths if os.path.isfile(p) and secret.encode() in Path(p).read_bytes()]
    assert any(p.endswith("config.json") for p in found)
    assert any(p.endswith("-json.log") for p in found)
    assert any(p.endswith("state.db") or "state.db-" in p for p in found)
    assert secret in cove("logs", "running").stdout
    assert secret in cove("logs", "stopped").stdout
    assert cove("exec", "running", "cat", "/data/secret").stdout.strip() == secret
    assert cove("exec", "-u", "nobody", "running", "cat", "/etc/hosts").returncode == 0
    built = cove("run", "--rm", "-u", "nobody", "built:1", "cat", "/copy.txt").stdout
    assert built.strip() == secret
    [sock] = [p for p in paths if p.endswith("attach.sock")]
    _connect(sock)  # root reaches the attach socket
    cove("start", "-a", "stopped")


def test_an_old_root_is_tightened(public_root: tuple[Path, CoveRunner], alpine_tar: Path) -> None:
    root, cove = public_root
    secret = f"s3cr3t-{secrets.token_hex(8)}"
    suid = _populate(root, cove, alpine_tar, secret)
    cove("stop", "-t", "0", "running")
    # what an older cove left: 0755 directories and 0644 files (contents keep their modes)
    for path in _tree(root):
        rel = Path(path).relative_to(root).parts
        if _is_content(rel):
            continue
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            os.chmod(path, 0o755)
        elif stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_ISUID:
            os.chmod(path, 0o644)
    for marker in root.glob(".private-*"):
        marker.unlink()
    paths = _tree(root)
    loose = as_user(lambda: _probe(paths, secret, str(suid)))
    assert loose["leaked"] and loose["ran"]  # the attack works on the loosened root

    cove("ps", "-a")  # any command tightens the root once
    got = as_user(lambda: _probe(_tree(root), secret, str(suid)))  # nobody sees none of it
    assert got == {"opened": [], "leaked": [], "connected": [], "ran": []}, got
    # positive control: the containers still work after the tightening
    cove("start", "running")
    assert cove("exec", "-u", "nobody", "running", "cat", "/etc/hosts").returncode == 0
    assert secret in cove("start", "-a", "stopped").stdout
