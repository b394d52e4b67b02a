"""Shared helpers of tests/security: hostile images made from the shared Alpine rootfs.

Each attack test builds its own image here, so the payload is in the test, not in the repo.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conftest import CoveRunner
from tarmaker import TarBuilder


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


def tiny_image() -> TinyImage:
    layer_tar = TarBuilder().file("hello", b"hi\n").bytes()
    layer = gzip.compress(layer_tar, mtime=0)

    def d(b: bytes) -> str:
        return "sha256:" + hashlib.sha256(b).hexdigest()

    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [d(layer_tar)]},
    }).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": d(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": d(layer), "size": len(layer)}],
    }).encode()  # fmt: skip
    return TinyImage(manifest, {d(config): config, d(layer): layer})


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
