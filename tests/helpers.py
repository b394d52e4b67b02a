"""The one module of shared test helpers (fixtures stay in conftest.py and the plugins).

- paths of the repo and the shared Alpine rootfs, ``cove_argv`` and the ``CoveRunner`` type;
- ``TarBuilder`` and ``oci_layout``: tar archives and OCI layouts entry by entry, hostile
  ones included;
- hostile images made from the shared Alpine rootfs (``alpine_variant``), so each attack's
  payload is in its test, not in the repo, and the host-side probes the tests share
  (``monitors``, ``host_submount``, ...).

Registry servers (``registries.py``) and the VM guest builder (``vmguest.py``) are tools of
their own, used as they are.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("COVE_SHARED", REPO.parent / "shared"))
ALPINE_DIR = SHARED / "images" / "alpine-3.20"
ALPINE_TAR = ALPINE_DIR / "alpine-minirootfs-3.20.3-x86_64.tar.gz"

CoveRunner = Callable[..., subprocess.CompletedProcess[str]]


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
    """Poll ``fn`` every 0.1 s until it returns something true (returned), or fail naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def loaded_after(code: str, after: str = "result = None") -> tuple[set[str], Any]:
    """The modules a fresh interpreter holds after running ``code`` (beyond its bare
    start-up), and the ``result`` that ``after`` sets, run once they are counted (its own
    imports are not): the import-weight tests' probe."""
    probe = (
        "import json, sys\nbefore = set(sys.modules)\n"
        + textwrap.dedent(code)
        + "\nmods = sorted(set(sys.modules) - before)\n"
        + textwrap.dedent(after)
        + "\nprint(json.dumps([mods, result]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    mods, result = json.loads(out.stdout.strip().splitlines()[-1])
    return set(mods), result


def cove_argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cove", "--root", str(root), *args]


def _verified(path: Path, sums: Path) -> Path:
    want = {
        line.split()[1]: line.split()[0] for line in sums.read_text().splitlines() if line.strip()
    }[path.name]
    got = hashlib.sha512(path.read_bytes()).hexdigest()
    assert got == want, f"{path} does not match {sums}"
    return path


# -- tar archives and OCI layouts ------------------------------------------------------------


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def _info(self, name: str, kind: bytes, mode: int, **kw: Any) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = 1_700_000_000
        for k, v in kw.items():
            setattr(info, k, v)
        return info

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> TarBuilder:
        info = self._info(name, tarfile.REGTYPE, mode, size=len(data), **kw)
        self.tar.addfile(info, io.BytesIO(data))
        return self

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> TarBuilder:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def symlink(self, name: str, target: str) -> TarBuilder:
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target))
        return self

    def hardlink(self, name: str, target: str) -> TarBuilder:
        self.tar.addfile(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target))
        return self

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o666) -> TarBuilder:
        info = self._info(name, tarfile.CHRTYPE, mode, devmajor=major, devminor=minor)
        self.tar.addfile(info)
        return self

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()

    def write(self, path: Path, *, gz: bool = False) -> Path:
        data = self.bytes()
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        return path


def tree_listing(root: Path) -> list[tuple[Any, ...]]:
    """Everything below ``root`` as comparable rows: path, type and mode, owner, mtime,
    size, content digest or symlink target or device numbers, xattrs, and which paths share
    an inode (hard links)."""
    rows: list[tuple[Any, ...]] = []
    inodes: dict[int, str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in [*sorted(dirs), *sorted(files)]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            what: Any = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                  for k in os.listxattr(path, follow_symlinks=False)))  # fmt: skip
            link = inodes.setdefault(st.st_ino, rel) if not stat.S_ISDIR(st.st_mode) else rel
            rows.append((rel, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                         st.st_size if not stat.S_ISDIR(st.st_mode) else 0, what, xattrs,
                         link))  # fmt: skip
    return rows


def sha256_digest(data: bytes) -> str:
    """The OCI digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(path: Path, layers: list[bytes], name: str, config_extra: Any = None) -> str:
    """Write an OCI layout with gzip layers made from the given tars; return the manifest digest."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = sha256_digest(data)
        (blobs / d.split(":")[1]).write_bytes(data)
        return d

    layer_descs = []
    for tar in layers:
        gz = gzip.compress(tar, mtime=0)
        layer_descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(gz),
                "size": len(gz),
            }
        )
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": config_extra or {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in layers]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
            for i in range(len(layers))
        ],
    }
    cfg = json.dumps(config).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(cfg),
                "size": len(cfg),
            },
            "layers": layer_descs,
        }
    ).encode()
    mdigest = put(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return mdigest


# -- hostile images and host-side probes --------------------------------------------------


def alpine_variant(
    cove: CoveRunner,
    alpine_tar: Path,
    ref: str,
    tmp_path: Path,
    *,
    drop: Iterable[str] = (),
    add: Callable[[TarBuilder], object] | None = None,
    change: Iterable[str] = ('CMD ["/bin/sh"]',),
) -> str:
    """Import Alpine with the entries under ``drop`` removed and ``add``'s entries appended
    (later entries win on import); returns the image id."""
    gone = [p.strip("/") for p in drop]
    out = TarBuilder()
    with tarfile.open(alpine_tar, "r:gz") as src:
        for info in src:
            name = info.name.removeprefix("./").rstrip("/")
            if any(name == g or name.startswith(g + "/") for g in gone):
                continue
            data = src.extractfile(info) if info.isfile() else None
            out.tar.addfile(info, io.BytesIO(data.read()) if data else None)
    if add is not None:
        add(out)
    path = tmp_path / f"{ref.replace(':', '_').replace('/', '_')}.tar.gz"
    path.write_bytes(gzip.compress(out.bytes(), mtime=0))
    args = ["import"]
    for c in change:
        args += ["--change", c]
    return cove(*args, str(path), ref).stdout.strip()


@contextlib.contextmanager
def host_submount(path: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted on the host directory ``path`` for the block, unmounted after
    (lazily, so a process still inside cannot keep it), pass or fail."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "cove-test", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# --------------------------------------------------------------------------------------------
# Hostile registries: an http.server on 127.0.0.1 whose every answer the test writes


@dataclass
class Seen:
    """One request a :class:`FakeServer` received."""

    method: str
    path: str
    headers: dict[str, str]


Reply = Callable[[BaseHTTPRequestHandler], None]


class FakeServer:
    """HTTP on 127.0.0.1 (a thread): every request is recorded in ``seen``, then answered by
    ``app(handler)``; ``sent`` counts the body bytes :func:`stream` managed to write."""

    def __init__(self, app: Reply) -> None:
        self.app = app
        self.seen: list[Seen] = []
        self.sent = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                self.connection.settimeout(60)
                with server.lock:
                    server.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.app(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)  # fmt: skip
        self.thread.start()

    def requests(self, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@contextlib.contextmanager
def fake_servers() -> Iterator[Callable[[Reply], FakeServer]]:
    """Start :class:`FakeServer` s; all are stopped on the way out, pass or fail."""
    started: list[FakeServer] = []

    def start(app: Reply) -> FakeServer:
        started.append(FakeServer(app))
        return started[-1]

    try:
        yield start
    finally:
        for s in started:
            s.stop()


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:  # fmt: skip
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def stream(
    server: FakeServer,
    h: BaseHTTPRequestHandler,
    total: int,
    *,
    content_type: str = "application/octet-stream",
    declare: bool = True,
) -> None:
    """Answer 200 with ``total`` bytes of spaces written 64 KiB at a time (never held in
    memory), with or without a Content-Length; a client hanging up ends it."""
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    if declare:
        h.send_header("Content-Length", str(total))
    else:
        h.send_header("Connection", "close")
        h.close_connection = True
    h.end_headers()
    chunk = b" " * 65536
    try:
        while server.sent < total:
            h.wfile.write(chunk)
            server.sent += len(chunk)
    except OSError:
        h.close_connection = True


@dataclass
class TinyImage:
    """A one-layer image as a registry serves it: manifest bytes and blobs by digest."""

    manifest: bytes
    blobs: dict[str, bytes]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def config_digest(self) -> str:
        return str(json.loads(self.manifest)["config"]["digest"])


def layered_image(
    tars: list[bytes],
    *,
    cmd: list[str] | None = None,
    diff_ids: list[str] | None = None,
    compresslevel: int = 1,
) -> TinyImage:
    """An image of gzip layers ``tars`` (bottom first); ``diff_ids`` overrides the config's."""
    blobs = [gzip.compress(t, mtime=0, compresslevel=compresslevel) for t in tars]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256_digest(t) for t in tars]},
    }).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256_digest(b), "size": len(b)} for b in blobs],
    }).encode()  # fmt: skip
    return TinyImage(
        manifest, {sha256_digest(config): config, **{sha256_digest(b): b for b in blobs}}
    )


def tiny_image() -> TinyImage:
    """One layer holding /hello, its command."""
    return layered_image([TarBuilder().file("hello", b"hi\n").bytes()], cmd=["/hello"],
                         compresslevel=9)  # fmt: skip


def serve_image(img: TinyImage, h: BaseHTTPRequestHandler, *,
                digest_header: str | None = None) -> bool:  # fmt: skip
    """Answer a manifest or blob GET/HEAD of ``img`` (for any repository or reference);
    False when the request is for something else."""
    path = h.path.split("?")[0]
    if path == "/v2/":
        reply(h, 200, b"{}")
        return True
    if "/manifests/" in path:
        reply(h, 200, img.manifest, {
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": digest_header or img.digest})  # fmt: skip
        return True
    if "/blobs/" in path and path.rsplit("/", 1)[1] in img.blobs:
        reply(h, 200, img.blobs[path.rsplit("/", 1)[1]])
        return True
    return False


# --------------------------------------------------------------------------------------------
# Static x86_64 programs: Alpine's minirootfs has no perl or python to make raw syscalls with


def static_elf(text: bytes) -> bytes:
    """A minimal static ELF64 x86_64 executable: one read+execute PT_LOAD of the whole file,
    entry right after the two headers, at ``text`` (position-independent code)."""
    import struct

    base, ehsize, phsize = 0x400000, 64, 56
    size = ehsize + phsize + len(text)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, version 1, SysV
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, base + ehsize + phsize, ehsize,
                       0, 0, ehsize, phsize, 1, 0, 0, 0)  # fmt: skip  # ET_EXEC, EM_X86_64
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)  # PT_LOAD, R+X
    return ehdr + phdr + text


# tiocsti_probe's exit status: one bit per thing it managed
STI_OPENED_TTY = 1  # open("/dev/tty") succeeded: the process has a controlling terminal
STI_VIA_TTY = 2  # ioctl(TIOCSTI) pushed every byte through that /dev/tty
STI_VIA_FD0, STI_VIA_FD1, STI_VIA_FD2 = 4, 8, 16  # ... through its stdin, stdout, stderr
STI_TTY_ENXIO = 32  # open("/dev/tty") failed with ENXIO (no controlling terminal)

# r13 collects the bits; sti(edi=fd) pushes each byte of the message with
# ioctl(fd, TIOCSTI, &byte) and returns 0 when every one went in
_TIOCSTI_TEXT = bytes.fromhex(
    "45 31 ed"  # 00: xor r13d,r13d
    "b8 02 00 00 00"  # 03: mov eax,2                       SYS_open
    "48 8d 3d 98 00 00 00"  # 08: lea rdi,[rip+0x98]       "/dev/tty" at a7
    "be 02 08 00 00"  # 0f: mov esi,0x802                   O_RDWR|O_NONBLOCK
    "31 d2"  # 14: xor edx,edx
    "0f 05"  # 16: syscall
    "48 85 c0"  # 18: test rax,rax
    "78 15"  # 1b: js 32                                    open failed
    "41 83 cd 01"  # 1d: or r13d,STI_OPENED_TTY
    "89 c7"  # 21: mov edi,eax
    "e8 51 00 00 00"  # 23: call sti
    "85 c0"  # 28: test eax,eax
    "75 10"  # 2a: jne 3c
    "41 83 cd 02"  # 2c: or r13d,STI_VIA_TTY
    "eb 0a"  # 30: jmp 3c
    "48 83 f8 fa"  # 32: cmp rax,-ENXIO
    "75 04"  # 36: jne 3c
    "41 83 cd 20"  # 38: or r13d,STI_TTY_ENXIO
    "31 ff"  # 3c: xor edi,edi                              fd 0
    "e8 36 00 00 00"  # 3e: call sti
    "85 c0"  # 43: test eax,eax
    "75 04"  # 45: jne 4b
    "41 83 cd 04"  # 47: or r13d,STI_VIA_FD0
    "bf 01 00 00 00"  # 4b: mov edi,1                       fd 1
    "e8 24 00 00 00"  # 50: call sti
    "85 c0"  # 55: test eax,eax
    "75 04"  # 57: jne 5d
    "41 83 cd 08"  # 59: or r13d,STI_VIA_FD1
    "bf 02 00 00 00"  # 5d: mov edi,2                       fd 2
    "e8 12 00 00 00"  # 62: call sti
    "85 c0"  # 67: test eax,eax
    "75 04"  # 69: jne 6f
    "41 83 cd 10"  # 6b: or r13d,STI_VIA_FD2
    "44 89 ef"  # 6f: mov edi,r13d
    "b8 3c 00 00 00"  # 72: mov eax,60                      SYS_exit(r13d)
    "0f 05"  # 77: syscall
    "41 89 fe"  # 79: sti: mov r14d,edi
    "4c 8d 3d 2d 00 00 00"  # 7c: lea r15,[rip+0x2d]       the message at b0
    "41 0f b6 07"  # 83: movzx eax,BYTE PTR [r15]
    "85 c0"  # 87: test eax,eax
    "74 1b"  # 89: je a6                                    NUL: done, eax = 0
    "44 89 f7"  # 8b: mov edi,r14d
    "be 12 54 00 00"  # 8e: mov esi,0x5412                  TIOCSTI
    "4c 89 fa"  # 93: mov rdx,r15
    "b8 10 00 00 00"  # 96: mov eax,16                      SYS_ioctl
    "0f 05"  # 9b: syscall
    "85 c0"  # 9d: test eax,eax
    "75 05"  # 9f: jne a6                                   refused: eax = -errno
    "49 ff c7"  # a1: inc r15
    "eb dd"  # a4: jmp 83
    "c3"  # a6: ret
)


def tiocsti_probe(message: bytes) -> bytes:
    """A static program that opens /dev/tty and pushes ``message`` into the terminal's input
    queue with TIOCSTI through it and through fds 0, 1 and 2, as typed keystrokes; its exit
    status is the ``STI_*`` bits of what it managed."""
    assert b"\0" not in message
    return static_elf(_TIOCSTI_TEXT + b"/dev/tty\0" + message + b"\0")


# --------------------------------------------------------------------------------------------
# One raw syscall, its errno as the exit status


def syscall_probe(nr: int, *args: int) -> bytes:
    """A static program that makes syscall ``nr`` with up to four arguments and exits with
    the errno it got (0 when the call succeeded; a successful clone's child exits 0 too)."""
    import struct

    if len(args) > 4:
        raise ValueError("at most four syscall arguments")
    regs = (b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba")  # mov rdi/rsi/rdx/r10, imm64
    text = b"\x48\xb8" + struct.pack("<Q", nr)  # mov rax, nr
    for reg, value in zip(regs, args, strict=False):
        text += reg + struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF)
    text += (
        b"\x0f\x05"  # syscall
        b"\x31\xff"  # xor edi, edi
        b"\x48\x85\xc0"  # test rax, rax
        b"\x79\x06"  # jns exit
        b"\x48\x89\xc7"  # mov rdi, rax
        b"\x48\xf7\xdf"  # neg rdi              -errno -> errno
        b"\xb8\x3c\x00\x00\x00"  # exit: mov eax, 60   SYS_exit(edi)
        b"\x0f\x05"  # syscall
    )
    return static_elf(text)


def as_user(fn: Callable[[], Any], uid: int = 65534, gid: int = 65534) -> Any:
    """``fn()`` in a forked child with no supplementary groups, then gid and uid ``uid``
    (nobody by default): what a local unprivileged account can do. Returns fn's result
    (JSON-able); an exception in the child fails the test."""
    import os

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        os.close(r)
        code = 0
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            out = json.dumps({"ok": fn()})
        except BaseException as e:
            out, code = json.dumps({"error": repr(e)}), 1
        with os.fdopen(w, "w") as f:
            f.write(out)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    msg = json.loads(data)
    if "error" in msg:
        raise AssertionError(f"as uid {uid}: {msg['error']}")
    return msg["ok"]


def in_chroot_argv(newroot: Path, argv: list[str]) -> list[str]:
    """``argv`` run as build systems run cove: chrooted into ``newroot``, a recursive bind
    of the host's / (so every path is what it is on the host), in a mount namespace of its
    own. Slave propagation: nothing mounted there reaches the host, and the host's unmounts
    reach it; the namespace goes when its last process (a detached container's monitor
    included) exits."""
    script = 'mount --rbind / "$0" && exec chroot "$0" "$@"'
    return ["unshare", "-m", "--propagation", "slave", "sh", "-c", script, str(newroot), *argv]


# --------------------------------------------------------------------------------------------
# Load: concurrent cove commands while a killer SIGKILLs random cove processes (issue 22),
# and the leak checker that looks at the kernel afterwards. bench/soak.py runs the same longer.


def _cgroup_mounts() -> list[str]:
    """Every cgroup hierarchy's mount point (v1 controllers, named ones, the unified tree)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                out.append(fields[4])
    return out


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _pids() -> list[int]:
    import os

    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def root_processes(root: Path) -> list[tuple[int, list[str]]]:
    """Processes whose command line names this state root: cove commands (``--root R``),
    their helpers, monitors (``root=R``), DNS responders (``R/networks/...``), QEMU."""
    import os

    r = str(root)
    out = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        argv = _argv(pid)
        if any(a == r or a == f"root={r}" or a.startswith(r + "/") or f"{r}/" in a for a in argv):
            out.append((pid, argv))
    return out


@dataclass
class HostSnapshot:
    """What a soak may leave: cgroups under cove/, veths, network namespaces held by
    processes, and mounts (each as a printable string)."""

    cgroups: set[str]
    veths: set[str]
    netns: set[str]
    mounts: set[str]


def host_snapshot() -> HostSnapshot:
    import os

    cgroups = set()
    for mnt in _cgroup_mounts():
        d = Path(mnt) / "cove"
        if d.is_dir():
            cgroups |= {str(p) for p in d.iterdir() if p.is_dir()}
    links = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    veths = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line}
    netns = set()
    for pid in _pids():
        with contextlib.suppress(OSError):
            netns.add(os.readlink(f"/proc/{pid}/ns/net"))
    with open("/proc/self/mountinfo") as f:
        mounts = {" ".join(line.split()[3:5]) for line in f}
    return HostSnapshot(cgroups, veths, netns, mounts)


def host_leaks(before: HostSnapshot, root: Path, *, networks_stay: bool = False) -> list[str]:
    """Everything that is there now and was not in ``before``, plus mounts and processes of
    ``root`` (a cove command, monitor, DNS responder or QEMU still running). With
    ``networks_stay`` the networks' DNS responders are not counted."""
    now = host_snapshot()
    found = [f"cgroup {c}" for c in sorted(now.cgroups - before.cgroups)]
    found += [f"veth {v}" for v in sorted(now.veths - before.veths)]
    found += [f"netns {n}" for n in sorted(now.netns - before.netns)]
    found += [f"mount {m}" for m in sorted(now.mounts - before.mounts)]
    found += [f"mount {m}" for m in sorted(now.mounts & before.mounts) if str(root) in m]
    dns = f"{root}/networks/"
    found += [
        f"process {pid}: {' '.join(a[:60] for a in argv)[:400]}"
        for pid, argv in root_processes(root)
        if not (networks_stay and any(a.startswith(dns) for a in argv))
    ]
    return found


def root_chains(root: Path) -> list[str]:
    """iptables chains of this root (cove suffixes them with a hash of the root)."""
    tag = "-" + hashlib.sha256(str(root).encode()).hexdigest()[:6]
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[0][1:] for line in out.splitlines()
                   if line.startswith(":COVE-") and line.split()[0].endswith(tag)})  # fmt: skip


def records_against_kernel(root: Path) -> list[str]:
    """Every container record of ``root`` checked against the kernel, with no cove command
    running: no operation marked in flight; a running one has its process (same start time)
    and its monitor; any other one has no process, runtime state or cgroup; every lease and
    published port belongs to a record."""
    import sqlite3

    def start_time(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return 0
        rest = data[data.rindex(b")") + 2 :].split()
        return 0 if rest[0] in (b"Z", b"X") else int(rest[19])

    db = sqlite3.connect(f"file:{root / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, name, status, pid, start_time, monitor_pid, monitor_start, "
                          "op FROM containers").fetchall()  # fmt: skip
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        owners = set()
        if "leases" in tables:
            owners |= {r[0] for r in db.execute("SELECT container FROM leases")}
            owners |= {r[0] for r in db.execute("SELECT container FROM ports")}
        if "vms" in tables:
            owners -= {r[0] for r in db.execute("SELECT id FROM vms")}
    finally:
        db.close()
    bad = []
    ids = set()
    cgroup_dirs = [Path(m) / "cove" for m in _cgroup_mounts()]
    for cid, name, status, pid, pstart, mpid, mstart, op in rows:
        ids.add(cid)
        what = f"container {name} ({status})"
        if op:
            bad.append(f"{what}: operation {op} still marked with no command running")
        if status in ("running", "paused"):
            if start_time(pid) != pstart or not pstart:
                bad.append(f"{what}: its process {pid} is gone")
            if start_time(mpid) != mstart or not mstart:
                bad.append(f"{what}: its monitor {mpid} is gone")
        elif status != "restarting":
            if pid and pstart and start_time(pid) == pstart:
                bad.append(f"{what}: its process {pid} still runs")
            if (root / "runtime" / cid).exists():
                bad.append(f"{what}: runtime state {root / 'runtime' / cid} left")
            bad += [f"{what}: cgroup {d / cid} left" for d in cgroup_dirs if (d / cid).exists()]
    bad += [f"lease or port of {o[:12]}, which has no record" for o in sorted(owners - ids)]
    return bad


@dataclass
class SoakResult:
    cycles: int = 0  # worker cycles run (each: run, exec, connect, stop, rm, + build or pull)
    complete: int = 0  # cycles in which every command succeeded
    kills: int = 0  # SIGKILLs delivered
    killed: dict[str, int] | None = None  # kills per kind of process
    hung: list[str] | None = None  # commands that outlived their timeout (killed then)
    errors: dict[str, int] | None = None  # failed commands per first word of their error

    def summary(self) -> str:
        return (f"soak: {self.cycles} cycles ({self.complete} complete), {self.kills} kills "
                f"{dict(sorted((self.killed or {}).items()))}, hung {self.hung or []}, "
                f"errors {dict(sorted((self.errors or {}).items()))}")  # fmt: skip


def soak(
    argv: Callable[..., list[str]],
    root: Path,
    *,
    seconds: float,
    workers: int,
    registry: str,
    context: Path,
    seed: int | None = None,
    timeout: float = 90,
) -> SoakResult:
    """Run ``workers`` loops of cove commands against ``root`` for ``seconds`` while a killer
    SIGKILLs a random process of the root (command, helper, monitor or DNS responder) every
    0.1-0.9 s. ``argv(*args)`` makes a cove command line; ``registry`` (host:port) serves
    ``soak/alpine:1``; ``context`` holds a tiny Dockerfile. Returns the counts; the caller
    checks the state afterwards. Every command has finished when this returns."""
    import os
    import random
    import signal
    import time

    rnd = random.Random(seed)
    res = SoakResult(killed={}, hung=[], errors={})
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    stop_killer = threading.Event()

    def cmd(*args: str) -> bool:
        proc = subprocess.Popen(argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            with lock:
                res.hung.append(" ".join(args))  # type: ignore[union-attr]
            return False
        if proc.returncode != 0:
            word = (
                "killed"
                if proc.returncode == -9
                else (err.strip().split(":")[-1].strip() or f"exit {proc.returncode}")
            )
            word = " ".join(word.split()[:6])
            with lock:
                res.errors[word] = res.errors.get(word, 0) + 1  # type: ignore[index]
        return proc.returncode == 0

    def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            name = f"soak-{w}-{i}"
            net = ["--network", "none"] if i % 4 == 3 else []
            ok = cmd("run", "-d", "--name", name, *net, "alpine:3.20", "sleep", "600")
            ok &= cmd("exec", name, "true")
            if i % 2 == 0:
                ok &= cmd("network", "connect", "soaknet", name)
            ok &= cmd("stop", "-t", "1", name)
            if not cmd("rm", name):
                ok = False
                cmd("rm", "-f", name)
            if i % 3 == 0:
                ok &= cmd("build", "-q", "--no-cache", "-t", f"soak-built-{w}:{i}", str(context))
                cmd("rmi", f"soak-built-{w}:{i}")
            elif i % 3 == 1:
                ok &= cmd("pull", "-q", "--tls-verify=false", f"{registry}/soak/alpine:1")
            with lock:
                res.cycles += 1
                res.complete += ok
            i += 1

    def killer() -> None:
        while not stop_killer.wait(rnd.uniform(0.1, 0.9)):
            kinds: dict[str, list[int]] = {}
            for pid, args in root_processes(root):
                kind = ("monitor" if any(a.startswith("root=") for a in args) else
                        "dns" if any("/networks/" in a for a in args) else
                        args[args.index("--root") + 2] if "--root" in args and
                        len(args) > args.index("--root") + 2 else "other")  # fmt: skip
                kinds.setdefault(kind, []).append(pid)
            if not kinds:
                continue
            # a kind first, then one of its processes: the rare ones (a run's start helper,
            # a build) are hit as often as the many (monitors, stops)
            kind = rnd.choice(sorted(kinds))
            pid = rnd.choice(kinds[kind])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            with lock:
                res.kills += 1
                res.killed[kind] = res.killed.get(kind, 0) + 1  # type: ignore[index]

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    k = threading.Thread(target=killer)
    k.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop_killer.set()
    k.join()
    return res


def soak_setup(
    argv: Callable[..., list[str]], root: Path, alpine_tar: Path, registry: str, context: Path
) -> None:
    """alpine:3.20 imported and pushed as ``registry/soak/alpine:1``, the ``soaknet``
    network, and a build context with a tiny Dockerfile (a RUN step: a container)."""

    def run(*args: str) -> None:
        subprocess.run(argv(*args), check=True, capture_output=True, timeout=300)

    run("import", "--change", 'CMD ["/bin/sh"]', str(alpine_tar), "alpine:3.20")
    run("tag", "alpine:3.20", f"{registry}/soak/alpine:1")
    run("push", "-q", "--tls-verify=false", f"{registry}/soak/alpine:1")
    run("rmi", f"{registry}/soak/alpine:1")
    run("network", "create", "soaknet")
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text("FROM alpine:3.20\nRUN echo built > /built\n")


# --------------------------------------------------------------------------------------------
# The host's own interpreter, runnable inside an Alpine (musl) container


def host_interpreter() -> Path:
    """The Python binary cove runs on (the file a container must never reach)."""
    import os
    import sys

    return Path(os.path.realpath(sys.executable))


def add_host_program(tb: TarBuilder, program: Path, *, trees: Iterable[Path] = ()) -> None:
    """Add ``program`` and every shared library ``ldd`` lists for it (and the files under
    ``trees``) at their host paths, so the host's program can run in the container if
    something ever execs it there. Files are copied, never linked."""
    import re

    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True)
    files = {program, *(Path(p) for p in re.findall(r"(/\S+) \(0x", out.stdout))}
    for tree in trees:
        files.update(p for p in tree.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    made: set[Path] = set()
    for f in sorted(files):
        for parent in reversed(f.parents[:-1]):
            if parent not in made:
                made.add(parent)
                tb.dir(str(parent).lstrip("/"))
        tb.file(str(f).lstrip("/"), f.read_bytes(), mode=0o755)


def monitors(root: Path) -> list[int]:
    """Monitor processes of this state root (old and new code: both name cove.monitor)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cove.monitor" in b" ".join(cmd) and f"root={root}".encode() in cmd:
            out.append(int(p.name))
    return out


# -- the Docker Engine API 1.41 swagger (cove serve's response bodies are checked against it)

SWAGGER_141 = Path("/usr/share/gocode/src/github.com/docker/docker/api/swagger.yaml")


def _nullable(node: Any) -> Any:
    """Swagger 2.0's ``x-nullable: true`` as JSON Schema: the type also admits null."""
    if isinstance(node, dict):
        out = {str(k): _nullable(v) for k, v in node.items()}
        if out.get("x-nullable") is True and "type" in out:
            t = out["type"]
            out["type"] = [*t, "null"] if isinstance(t, list) else [t, "null"]
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@functools.cache
def _swagger_registry() -> Any:
    """The whole 1.41 document (Debian's golang-github-docker-docker-dev 20.10, installed by
    scripts/test-deps.sh) as one resource: ``$ref``s resolve within it."""
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    if not SWAGGER_141.exists():
        raise AssertionError(f"{SWAGGER_141} missing: scripts/test-deps.sh installs it")
    doc = _nullable(yaml.safe_load(SWAGGER_141.read_text()))  # str keys: YAML reads 200: as int
    assert doc["info"]["version"] == "1.41", doc["info"]["version"]
    return Registry().with_resource("urn:docker", Resource.from_contents(doc, DRAFT4))


def swagger_errors(body: Any, path: str, method: str, status: int = 200) -> list[str]:
    """Where ``body`` breaks the 1.41 swagger's response schema of ``method path`` (path as
    the swagger spells it, e.g. ``/images/{name}/json``): [] when it validates."""
    from jsonschema import Draft4Validator

    ptr = path.replace("~", "~0").replace("/", "~1")
    ref = f"urn:docker#/paths/{ptr}/{method.lower()}/responses/{status}/schema"
    validator = Draft4Validator({"$ref": ref}, registry=_swagger_registry())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
            validator.iter_errors(body)]  # fmt: skip


# -- cove serve on a temporary socket, driven by the docker CLI 20.10 and raw requests

DOCKER_20 = "/usr/bin/docker"  # Debian docker.io 20.10 (scripts/test-deps.sh)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self.sock_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(120)
        s.connect(self.sock_path)
        self.sock = s


@dataclass
class Served:
    """A ``cove serve`` on a temporary socket over the test's root."""

    root: Path
    sock: str
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def docker(self, *args: str, check: bool = True, input: bytes | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run([DOCKER_20, *args], env=self.env, capture_output=True,
                              input=input.decode() if input else None, text=True,
                              timeout=timeout)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                                 f"server log tail: {self.log.read_text()[-3000:]}")  # fmt: skip
        return proc

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request straight to the socket; the status and the decoded JSON body."""
        conn = _UnixHTTP(self.sock)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, f"/v1.41{path}", body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if "json" not in (resp.getheader("Content-Type") or "") or not raw.strip():
                return resp.status, raw.decode(errors="replace") or None
            try:
                return resp.status, json.loads(raw)
            except ValueError:  # a JSON-lines stream (events, progress): the text
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def checked(self, method: str, path: str, spec_path: str, status: int = 200,
                body: Any = None) -> Any:  # fmt: skip
        """``api`` plus: the status is ``status`` and the body validates against the 1.41
        swagger's schema for ``spec_path``."""
        got, doc = self.api(method, path, body)
        assert got == status, (method, path, got, doc)
        errors = swagger_errors(doc, spec_path, method, status)
        assert errors == [], (method, path, errors, doc)
        return doc


def start_serve(root: Path, where: Path, *, verbose: bool = False) -> Served:
    """``cove serve`` on ``where``/cove.sock; ``verbose`` logs every request (and each
    fork-helper child) to ``where``/serve.log."""
    where.mkdir(parents=True, exist_ok=True)
    sock = where / "cove.sock"
    log = where / "serve.log"
    home = where / "home"
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        extra = ["--verbose"] if verbose else []
        proc = subprocess.Popen(cove_argv(root, "serve", "-H", f"unix://{sock}", *extra),
                                stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKER_BUILDKIT": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    served = Served(root, str(sock), home, proc, log, env)
    deadline = time.monotonic() + 30
    while True:
        try:
            if served.api("GET", "/_ping")[0] == 200:
                return served
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_serve(served)
            raise AssertionError(f"cove serve did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def stop_serve(served: Served) -> None:
    if served.proc.poll() is None:
        os.killpg(served.proc.pid, signal.SIGTERM)
        try:
            served.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(served.proc.pid, signal.SIGKILL)
            served.proc.wait()


# --------------------------------------------------------------------------------------------
# cove-runc (issue 18): the console script of the venv that runs the tests, OCI bundles made
# from the shared Alpine rootfs, and the cgroup trees a test's containers were put under.

COVE_RUNC = Path(sys.executable).parent / "cove-runc"


def alpine_bundle(path: Path, args: list[str], cgroups_path: str, **extra: Any) -> Path:
    """An OCI bundle at ``path``: the Alpine rootfs and ``cove-runc spec``'s config with
    ``args`` (no terminal, writable root) and ``extra`` merged into its top level."""
    rootfs = path / "rootfs"
    rootfs.mkdir(parents=True)
    with tarfile.open(ALPINE_TAR) as tar:
        tar.extractall(rootfs)  # the shared tarball, checked by the alpine_tar fixture
    subprocess.run([str(COVE_RUNC), "spec", "--bundle", str(path)], check=True)
    config = json.loads((path / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"]["readonly"] = False
    config["linux"]["cgroupsPath"] = cgroups_path
    config.update(extra)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def remove_cgroup_tree(name: str) -> list[str]:
    """Remove ``name`` (a top-level cgroup) from every hierarchy, children first; returns the
    directories that were still there (a test that cleaned up leaves none)."""
    found = []
    for mnt in _cgroup_mounts():
        top = Path(mnt) / name
        if not top.is_dir():
            continue
        found.append(str(top))
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    return found


# -- foreign executables (other CPU architectures) ------------------------------------------

TINY_EXIT = 42
# e_machine, ELF class bits, byte order, e_flags, and the code: exit(TINY_EXIT) through the
# architecture's Linux system call (instruction words in the ELF's byte order, or raw bytes)
_TINY_CODE: dict[str, tuple[int, int, str, int, list[str]]] = {
    # movz x0,#42; movz x8,#93 (exit); svc #0
    "arm64": (183, 64, "<", 0, ["d2800540", "d2800ba8", "d4000001"]),
    # mov r0,#42; mov r7,#1 (exit); svc #0 (EABI5)
    "arm": (40, 32, "<", 0x05000000, ["e3a0002a", "e3a07001", "ef000000"]),
    # addi a0,zero,42; addi a7,zero,93 (exit); ecall
    "riscv64": (243, 64, "<", 0, ["02a00513", "05d00893", "00000073"]),
    # li r3,42; li r0,1 (exit); sc (ELFv2)
    "ppc64le": (21, 64, "<", 2, ["3860002a", "38000001", "44000002"]),
    # lghi %r2,42; svc 1 (exit)
    "s390x": (22, 64, ">", 0, ["a729002a", "0a01"]),
}
TINY_ARCHES = tuple(_TINY_CODE)


def tiny_elf(goarch: str) -> bytes:
    """A static ELF executable of ``goarch`` (GOARCH name) that exits with TINY_EXIT: one
    program header loading the file at 0x400000, the code right after the headers."""
    machine, bits, order, flags, words = _TINY_CODE[goarch]
    code = b"".join(
        struct.pack(order + "I", int(w, 16)) if len(w) == 8 else bytes.fromhex(w) for w in words
    )
    base = 0x400000
    ident = b"\x7fELF" + bytes([bits // 32, 1 if order == "<" else 2, 1]) + bytes(9)
    if bits == 64:
        ehsize, phsize = 64, 56
        total = ehsize + phsize + len(code)
        eh = ident + struct.pack(order + "HHIQQQIHHHHHH", 2, machine, 1, base + ehsize + phsize,
                                 ehsize, 0, flags, ehsize, phsize, 1, 0, 0, 0)  # fmt: skip
        ph = struct.pack(order + "IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
    else:
        ehsize, phsize = 52, 32
        total = ehsize + phsize + len(code)
        eh = ident + struct.pack(order + "HHIIIIIHHHHHH", 2, machine, 1, base + ehsize + phsize,
                                 ehsize, 0, flags, ehsize, phsize, 1, 0, 0, 0)  # fmt: skip
        ph = struct.pack(order + "IIIIIIII", 1, 0, base, base, total, total, 5, 0x1000)
    return eh + ph + code


# containerd 1.6 started by a test (issue 18): its own root, state, socket and config


class Containerd:
    def __init__(self, base: Path, ns: str = "") -> None:
        self.base = base
        self.sock = base / "c.sock"
        self.ns = ns or f"covetest{os.getpid()}"  # also the top-level cgroup of its containers
        self.runc_root = base / "runc"
        self.proc: subprocess.Popen[bytes] | None = None
        # containerd 1.6 puts shim sockets in /run/containerd/s and ctr its fifos in
        # /run/containerd/fifo whatever its state dir: removed after, if the test made them
        self.host_dirs = [Path("/run/containerd/fifo"), Path("/run/containerd/s"),
                          Path("/run/containerd")]  # fmt: skip
        self.made = [d for d in self.host_dirs if not d.exists()]

    def start(self, extra: str = "") -> None:
        """Start containerd; without ``extra`` (more TOML) its CRI plugin is off."""
        config = self.base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.base}/root"\n'
            f'state = "{self.base}/state"\n'
            + ("" if extra else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
            + f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n' + extra
        )
        log = (self.base / "containerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, (self.base / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not come up"
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.sock), "--namespace", self.ns, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {args}: rc {proc.returncode}: {proc.stderr}")
        return proc

    def shims(self) -> list[int]:
        """The shims serving this containerd (their command line names its socket)."""
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                    if b"containerd-shim" in argv[0] and str(self.sock).encode() in argv:
                        out.append(int(d.name))
        return out

    def stop(self) -> list[str]:
        """Remove every task and container, stop containerd and its shims; returns what
        had to be forced (empty when the test cleaned up after itself)."""
        forced = []
        for task in self.ctr("task", "ls", "-q", check=False).stdout.split():
            forced.append(f"task {task}")
            self.ctr("task", "kill", "--signal", "SIGKILL", task, check=False)
            time.sleep(0.2)
            self.ctr("task", "delete", "--force", task, check=False)
        for c in self.ctr("container", "ls", "-q", check=False).stdout.split():
            forced.append(f"container {c}")
            self.ctr("container", "delete", c, check=False)
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.shims():
            forced.append(f"shim {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            mnt = line.split()[4]
            if mnt.startswith(str(self.base)):
                forced.append(f"mount {mnt}")
                subprocess.run(["umount", "-l", mnt], check=False)
        remove_cgroup_tree(self.ns)
        remove_cgroup_tree(f"covecri{os.getpid()}")
        for d in self.made:
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: anything else there is not ours
        return forced


def _alpine_archive(where: Path) -> Path:
    """The shared Alpine rootfs as a one-layer OCI image archive (index.json, blobs/)."""
    layout = where / "layout"
    oci_layout(layout, [gzip.decompress(ALPINE_TAR.read_bytes())], "3.20")
    archive = where / "alpine.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for item in sorted(layout.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def alpine_oci_archive(where: Path, name: str = "3.20", config: Any = None) -> Path:
    """The shared Alpine rootfs as a one-layer OCI image archive (index.json, blobs/)."""
    layout = where / f"layout-{name}"
    oci_layout(layout, [gzip.decompress(ALPINE_TAR.read_bytes())], name, config)
    archive = where / f"alpine-{name}.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for item in sorted(layout.iterdir()):
            tar.add(item, arcname=item.name)
    return archive
