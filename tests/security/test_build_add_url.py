"""``ADD <url>`` obeys the build's network mode (issue 15).

Attack: a Dockerfile built with ``--network none`` (the builder's promise that the build
reaches nothing) makes the host fetch a URL anyway: an exfiltration channel, or a probe of
services only the host can reach. With --network none the build must fail naming the URL and
the server must see no request; with the default network the URL is fetched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import CoveRunner


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request path."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"fetched-content\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join()


@pytest.mark.parametrize("network", [["--network", "none"], ["--network=none"]])
def test_add_url_without_network(
    cove: CoveRunner, alpine: str, tmp_path: Path, server: tuple[str, list[str]],
    network: list[str],
) -> None:  # fmt: skip
    base, seen = server
    url = f"{base}/leak?secret=1"
    (tmp_path / "Dockerfile").write_text(f"FROM alpine:3.20\nADD {url} /got.txt\n")
    proc = cove("build", *network, "-t", "nonet:1", str(tmp_path), check=False)
    assert proc.returncode != 0, proc.stdout
    assert url in proc.stderr and "--network none" in proc.stderr, proc.stderr
    assert seen == []
    assert "nonet" not in cove("images").stdout
    # positive control: the default network fetches it
    cove("build", "-t", "net:1", str(tmp_path))
    assert seen == ["/leak?secret=1"]
    out = cove("run", "--rm", "net:1", "cat", "/got.txt").stdout
    assert out == "fetched-content\n"
