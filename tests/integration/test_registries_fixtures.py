"""Self-tests of tests/registries.py: the real registries, the token server and the proxy."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from registries import (
    OCI_MANIFEST,
    TOKEN_ISSUER,
    TOKEN_SERVICE,
    OCIImage,
    ProcessCleanup,
    Registry,
    TokenServer,
    flip_byte,
    make_oci_layout,
    registry_available,
    skopeo,
    skopeo_registry_args,
    start_flipping_proxy,
    start_plain,
    start_token,
)

_missing = registry_available() or (None if shutil.which("skopeo") else "skopeo missing")
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"registries: {_missing}")

TESTS = Path(__file__).resolve().parent.parent
REPO = "cove-test/alpine"
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="module")
def oci_image(tmp_path_factory: pytest.TempPathFactory, alpine_tar: Path) -> OCIImage:
    return make_oci_layout(tmp_path_factory.mktemp("oci") / "layout", alpine_tar, tag="3.20")


def request(
    reg: Registry,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    basic: tuple[str, str] | None = None,
    bearer: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request, redirects not followed; HTTPS trusts the registry's CA unless told."""
    host, port = reg.host.rsplit(":", 1)
    conn: http.client.HTTPConnection
    if reg.tls:
        ctx = context or reg.ssl_context()
        conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    hdrs = dict(headers or {})
    if basic:
        hdrs["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    if bearer:
        hdrs["Authorization"] = f"Bearer {bearer}"
    try:
        conn.request(method, path, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def push(tmp: Path, image: OCIImage, reg: Registry, *, creds: bool = True) -> None:
    proc = skopeo(
        tmp,
        "copy",
        "--retry-times=0",
        *skopeo_registry_args(reg, "dest", creds=creds),
        image.ref,
        f"docker://{reg.host}/{REPO}:{image.tag}",
    )
    assert proc.returncode == 0, proc.stderr


def pull(
    tmp: Path, image: OCIImage, reg: Registry, *, creds: bool = True, name: str = "pulled"
) -> subprocess.CompletedProcess[str]:
    return skopeo(
        tmp,
        "copy",
        "--retry-times=0",
        *skopeo_registry_args(reg, "src", creds=creds),
        f"docker://{reg.host}/{REPO}:{image.tag}",
        f"oci:{tmp / name}:{image.tag}",
    )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# --------------------------------------------------------------------------------------------


def test_plain_registry_serves_pushed_image(
    plain_registry: Registry, oci_image: OCIImage, tmp_path: Path
) -> None:
    reg = plain_registry
    assert reg.url == f"http://{reg.host}" and reg.host.startswith("127.0.0.1:")
    assert reg.ca_file is None and reg.username is None and reg.password is None
    assert request(reg, "/v2/")[0] == 200
    push(tmp_path, oci_image, reg, creds=False)

    status, headers, body = request(
        reg, f"/v2/{REPO}/manifests/{oci_image.tag}", headers={"Accept": ACCEPT}
    )
    assert status == 200
    assert headers["Docker-Content-Digest"] == oci_image.manifest_digest
    assert sha256(body) == oci_image.manifest_digest
    assert json.loads(body)["layers"][0]["digest"] == oci_image.layer_digest

    # The filesystem driver serves blobs itself: 200 with the bytes, no redirect.
    status, headers, body = request(reg, f"/v2/{REPO}/blobs/{oci_image.layer_digest}")
    assert status == 200, headers
    assert sha256(body) == oci_image.layer_digest

    # delete: enabled
    status, _, _ = request(
        reg, f"/v2/{REPO}/manifests/{oci_image.manifest_digest}", method="DELETE"
    )
    assert status == 202
    assert request(reg, f"/v2/{REPO}/manifests/{oci_image.manifest_digest}")[0] == 404


def test_tls_registry_needs_credentials_and_ca(
    tls_registry: Registry, oci_image: OCIImage, tmp_path: Path
) -> None:
    reg = tls_registry
    assert reg.url == f"https://{reg.host}"
    assert reg.ca_file and Path(reg.ca_file).read_text().startswith("-----BEGIN CERTIFICATE")
    assert reg.username == "tester" and reg.password
    assert reg.cert_dir and os.listdir(reg.cert_dir) == ["ca.crt"]

    status, headers, _ = request(reg, "/v2/")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert request(reg, "/v2/", basic=(reg.username, "wrong"))[0] == 401
    assert request(reg, "/v2/", basic=(reg.username, reg.password))[0] == 200

    # Without the test CA the certificate is not trusted.
    with pytest.raises(ssl.SSLCertVerificationError):
        request(reg, "/v2/", context=ssl.create_default_context())

    push(tmp_path, oci_image, reg)
    status, headers, _ = request(
        reg,
        f"/v2/{REPO}/manifests/{oci_image.tag}",
        method="HEAD",
        headers={"Accept": ACCEPT},
        basic=(reg.username, reg.password),
    )
    assert status == 200 and headers["Docker-Content-Digest"] == oci_image.manifest_digest

    anon = pull(tmp_path, oci_image, reg, creds=False, name="anon")
    assert anon.returncode != 0
    assert "unauthorized" in anon.stderr.lower() or "authentication" in anon.stderr.lower()
    ok = pull(tmp_path, oci_image, reg)
    assert ok.returncode == 0, ok.stderr


def test_token_registry_issues_and_honours_tokens(
    token_registry: tuple[Registry, TokenServer], oci_image: OCIImage, tmp_path: Path
) -> None:
    reg, tokens = token_registry
    assert reg.username == tokens.username == "tester" and reg.password == tokens.password
    status, headers, _ = request(reg, "/v2/")
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{tokens.url}"' in challenge and f'service="{TOKEN_SERVICE}"' in challenge

    token_url = urlsplit(tokens.url)
    server = Registry(host=token_url.netloc, url=f"http://{token_url.netloc}")
    query = f"/token?service={TOKEN_SERVICE}&scope={quote(f'repository:{REPO}:pull,push')}"

    status, _, body = request(server, query, basic=(tokens.username, tokens.password))
    assert status == 200
    token = json.loads(body)["token"]
    head, claims_b64, _sig = token.split(".")
    header = b64url_json(head)
    assert header["alg"] == "RS256"
    der = base64.b64decode(header["x5c"][0])
    pem = Path(tokens.cert_file).read_text()
    assert base64.b64encode(der).decode() in "".join(pem.split())
    claims = b64url_json(claims_b64)
    assert claims["iss"] == TOKEN_ISSUER and claims["aud"] == TOKEN_SERVICE
    assert claims["sub"] == "tester" and claims["nbf"] <= claims["iat"] < claims["exp"]
    assert claims["jti"]
    assert claims["access"] == [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}]
    assert tokens.issued == 1

    # The registry accepts the token (signature, issuer, audience, x5c chain all checked).
    assert request(reg, "/v2/", bearer=token)[0] == 200
    assert request(reg, "/v2/", bearer=token[:-4] + "AAAA")[0] == 401

    assert request(server, query, basic=(tokens.username, "wrong"))[0] == 401
    status, _, body = request(server, query)
    assert status == 200
    anon_token = json.loads(body)["token"]
    assert b64url_json(anon_token.split(".")[1])["access"] == []
    # An empty-access token opens /v2/ but not the repository.
    assert request(reg, f"/v2/{REPO}/tags/list", bearer=anon_token)[0] == 401

    push(tmp_path, oci_image, reg)
    status, _, body = request(reg, f"/v2/{REPO}/tags/list", bearer=token)
    assert status == 200 and json.loads(body)["tags"] == [oci_image.tag]

    ok = pull(tmp_path, oci_image, reg)
    assert ok.returncode == 0, ok.stderr
    anon = pull(tmp_path, oci_image, reg, creds=False, name="anon")
    assert anon.returncode != 0
    assert "unauthorized" in anon.stderr.lower() or "denied" in anon.stderr.lower()
    assert tokens.issued > 3
    assert any(g["sub"] is None and g["access"] == [] for g in tokens.grants)


def test_flipping_proxy_breaks_digests(
    plain_registry: Registry, flipping_registry: Registry, oci_image: OCIImage, tmp_path: Path
) -> None:
    reg, proxy = plain_registry, flipping_registry
    assert proxy.proxy is not None and proxy.host != reg.host
    push(tmp_path, oci_image, reg, creds=False)

    direct = pull(tmp_path, oci_image, reg, creds=False, name="direct")
    assert direct.returncode == 0, direct.stderr
    bad = pull(tmp_path, oci_image, proxy, creds=False, name="flipped")
    assert bad.returncode != 0
    assert "digest did not match" in bad.stderr.lower(), bad.stderr
    assert proxy.proxy.flipped >= 1

    # Manifests pass through intact; blobs have exactly one byte changed.
    path = f"/v2/{REPO}/manifests/{oci_image.tag}"
    assert (
        request(proxy, path, headers={"Accept": ACCEPT})[2]
        == request(reg, path, headers={"Accept": ACCEPT})[2]
    )
    blob = f"/v2/{REPO}/blobs/{oci_image.layer_digest}"
    _, _, good = request(reg, blob)
    status, headers, flipped = request(proxy, blob)
    assert status == 200 and int(headers["Content-Length"]) == len(flipped) == len(good)
    assert flipped == flip_byte(good) != good

    # HEAD passes through with the upstream's length and no body.
    status, headers, body = request(proxy, blob, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(good)

    # Range: the upstream's 206 and Content-Range, one byte of the part flipped.
    rng = {"Range": "bytes=100-1099"}
    status, headers, part = request(proxy, blob, headers=rng)
    assert status == 206 and headers["Content-Range"] == f"bytes 100-1099/{len(good)}"
    assert part == flip_byte(good[100:1100])

    # Uploads pass through (Location headers keep pointing at the proxy).
    push_via_proxy = skopeo(
        tmp_path,
        "copy",
        "--retry-times=0",
        *skopeo_registry_args(proxy, "dest", creds=False),
        oci_image.ref,
        f"docker://{proxy.host}/cove-test/via-proxy:1",
    )
    assert push_via_proxy.returncode == 0, push_via_proxy.stderr
    assert request(reg, "/v2/cove-test/via-proxy/manifests/1", headers={"Accept": ACCEPT})[0] == 200


def test_token_registry_over_tls_with_anonymous_pull(
    registry_proc_cleanup: ProcessCleanup, oci_image: OCIImage, tmp_path: Path
) -> None:
    reg, tokens = start_token(tmp_path, tls=True, anonymous_pull=True)
    registry_proc_cleanup.add(tokens)
    registry_proc_cleanup.add(reg)
    assert reg.url.startswith("https://") and reg.ca_file and reg.cert_dir
    anon_push = skopeo(
        tmp_path,
        "copy",
        "--retry-times=0",
        *skopeo_registry_args(reg, "dest", creds=False),
        oci_image.ref,
        f"docker://{reg.host}/{REPO}:{oci_image.tag}",
    )
    assert anon_push.returncode != 0
    push(tmp_path, oci_image, reg)
    anon = pull(tmp_path, oci_image, reg, creds=False, name="anon")
    assert anon.returncode == 0, anon.stderr
    assert any(
        g["sub"] is None and g["access"] and g["access"][0]["actions"] == ["pull"]
        for g in tokens.grants
    )


class _RedirectingUpstream:
    """A fake registry that answers blob GETs with a 307 to a storage URL, like S3 drivers."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/v2/":
                    self._send(200, b"{}", {})
                elif "/blobs/" in path:
                    digest = path.rsplit("/", 1)[1]
                    loc = f"{outer.url}/storage/{digest}?sig=x"
                    self._send(307, b"", {"Location": loc})
                elif path.startswith("/storage/"):
                    outer.storage_hits += 1
                    outer.ranges.append(self.headers.get("Range"))
                    self._send(200, blobs[path.rsplit("/", 1)[1]], {})
                else:
                    self._send(404, b"", {})

        self.storage_hits = 0
        self.ranges: list[str | None] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_flipping_proxy_follows_blob_redirects(registry_proc_cleanup: ProcessCleanup) -> None:
    data = os.urandom(4096)
    digest = sha256(data)
    fake = registry_proc_cleanup.add(_RedirectingUpstream({digest: data}))
    upstream = Registry(host=fake.host, url=fake.url)
    proxy = registry_proc_cleanup.add(start_flipping_proxy(upstream))

    status, headers, body = request(proxy, f"/v2/x/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert status == 200 and "Location" not in headers
    assert body == flip_byte(data)
    assert fake.storage_hits == 1 and fake.ranges == ["bytes=0-"]
    assert proxy.proxy is not None and proxy.proxy.flipped == 1


def test_stop_kills_the_registry_and_is_idempotent(tmp_path: Path) -> None:
    reg = start_plain(tmp_path)
    try:
        assert request(reg, "/v2/")[0] == 200
        pid = int(
            next(
                p
                for p in os.listdir("/proc")
                if p.isdigit() and _cmdline(p).endswith(f"{reg.workdir}/config.yml")
            )
        )
    finally:
        reg.stop()
    reg.stop()
    assert not os.path.exists(f"/proc/{pid}")
    host, port = reg.host.rsplit(":", 1)
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


FAILING_TEST = """
import pytest

pytest_plugins = ["registries"]


def test_fails(plain_registry, tls_registry, token_registry, flipping_registry):
    reg, tokens = token_registry
    print("WORKDIRS", plain_registry.workdir, tls_registry.workdir, reg.workdir)
    assert False, "on purpose"
"""


def test_fixtures_stop_everything_when_the_test_fails(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(FAILING_TEST)
    base = tmp_path / "base"
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
            "--rootdir", str(tmp_path), "-o", f"pythonpath={TESTS}", "--basetemp", str(base),
            str(tmp_path / "test_inner.py"),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "on purpose" in proc.stdout and "1 failed" in proc.stdout, proc.stdout
    assert "WORKDIRS" in proc.stdout
    assert str(base) in proc.stdout
    left = [p for p in os.listdir("/proc") if p.isdigit() and str(base) in _cmdline(p)]
    assert left == [], [_cmdline(p) for p in left]
