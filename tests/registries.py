"""Real OCI registries for integration tests of a registry client.

PYTEST_DONT_REWRITE (no asserts here; lets test modules import it before pytest_plugins).

Each ``start_*`` runs its own Debian ``docker-registry`` (distribution 2.8) process on a free
port of 127.0.0.1, with its config, storage, certificates and log in a fresh directory under
the ``tmp`` it is given, and returns once ``GET /v2/`` answers (401 counts for the registries
that want credentials). Nothing is registered globally: whoever starts a registry stops it,
which the fixtures below do in teardown, pass or fail.

- :func:`start_plain`: plain HTTP, no auth.
- :func:`start_tls_basic`: HTTPS with a CA made here (openssl) and htpasswd (bcrypt) basic auth
  for user ``tester`` and a generated password.
- :func:`start_token`: bearer-token auth; a small token server (:class:`TokenServer`, plain
  HTTP on 127.0.0.1) checks basic credentials and issues RS256 JWTs for the requested scopes.
- :func:`start_flipping_proxy`: an HTTP proxy in front of a registry that flips one byte of
  every blob body, so a client that verifies digests must fail.

Fixtures: ``registry_proc_cleanup`` (stops everything added to it at teardown),
``plain_registry``, ``tls_registry``, ``token_registry`` (a ``(Registry, TokenServer)`` pair)
and ``flipping_registry`` (a proxy in front of its own plain registry). A test module uses them
with ``from registries import ...`` or ``pytest_plugins = ["registries"]``.

Helpers for seeding the registries: :func:`make_oci_layout` writes a one-layer OCI image
layout from the shared Alpine minirootfs, :func:`skopeo` runs skopeo hermetically (its own
policy, an empty auth file and registries.conf) and :func:`skopeo_registry_args` gives the
TLS and credential flags for one side of a ``skopeo copy``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

REGISTRY_BIN = os.environ.get("COVE_REGISTRY_BIN", "/usr/bin/docker-registry")
SKOPEO_BIN = shutil.which("skopeo") or "/usr/bin/skopeo"
OPENSSL_BIN = shutil.which("openssl") or "/usr/bin/openssl"

PROJECT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("COVE_SHARED", PROJECT.parent / "shared"))
ALPINE_TAR = SHARED / "images" / "alpine-3.20" / "alpine-minirootfs-3.20.3-x86_64.tar.gz"

USERNAME = "tester"
TOKEN_SERVICE = "cove-test-registry"
TOKEN_ISSUER = "cove-test-issuer"
TOKEN_LIFETIME = 300  # seconds a JWT is valid

STARTUP_TIMEOUT = 20.0  # seconds for a registry to answer GET /v2/
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL of the process group
START_ATTEMPTS = 4  # fresh ports tried when the port picked was taken meanwhile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class RegistryError(RuntimeError):
    """A registry, token server or proxy could not be started."""


def registry_available() -> str | None:
    """None when registries can be started here, else the reason they cannot (for skips)."""
    if not (os.path.isfile(REGISTRY_BIN) and os.access(REGISTRY_BIN, os.X_OK)):
        return f"{REGISTRY_BIN} missing (Debian package docker-registry)"
    if not (os.path.isfile(OPENSSL_BIN) and os.access(OPENSSL_BIN, os.X_OK)):
        return "openssl missing"
    return None


def require_registry() -> None:
    """Skip the calling test when :func:`registry_available` gives a reason."""
    reason = registry_available()
    if reason:
        pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# The public types


@dataclass
class Registry:
    """One running registry (or proxy) on 127.0.0.1; :meth:`stop` is idempotent."""

    host: str  # "127.0.0.1:PORT"
    url: str  # "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT"
    ca_file: str | None = None  # PEM of the test CA (HTTPS registries)
    username: str | None = None
    password: str | None = None
    cert_dir: str | None = None  # a directory holding only ca.crt (skopeo --cert-dir)
    workdir: Path | None = None  # config, storage, certificates and log of this registry
    log_file: Path | None = None  # the registry's stdout and stderr
    proxy: FlippingProxy | None = field(default=None, repr=False)  # set for flipping proxies
    _stop: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    @property
    def creds(self) -> str | None:
        """``user:password`` for ``skopeo --creds``, or None."""
        if self.username is None or self.password is None:
            return None
        return f"{self.username}:{self.password}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting only the test CA, or None for plain HTTP."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def log_text(self) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()


class TokenServer:
    """A Docker-registry token server (the "realm") in a thread, plain HTTP on 127.0.0.1.

    ``GET /token?service=...&scope=repository:NAME:pull,push`` with HTTP basic credentials of
    ``username``/``password`` gets a JWT granting what was asked; without credentials the
    token grants nothing (or ``pull`` only, with ``anonymous_pull``); wrong credentials get
    401. ``POST /token`` with ``grant_type=password`` (the OAuth2 form) works the same way.
    """

    def __init__(
        self,
        workdir: Path,
        username: str,
        password: str,
        *,
        anonymous_pull: bool = False,
        lifetime: int = TOKEN_LIFETIME,
    ) -> None:
        self.workdir = workdir
        self.username = username
        self.password = password
        self.anonymous_pull = anonymous_pull
        self.lifetime = lifetime
        self.key_file = workdir / "token-signing.key"
        self.cert_file = workdir / "token-signing.crt"  # the registry's rootcertbundle
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-subj", f"/CN={TOKEN_ISSUER}",
            "-keyout", str(self.key_file), "-out", str(self.cert_file),
        )  # fmt: skip
        self._x5c = _pem_body(self.cert_file.read_text())
        self._lock = threading.Lock()
        self.issued = 0  # tokens issued (anonymous ones included)
        self.rejected = 0  # requests refused for bad credentials
        self.grants: list[dict[str, Any]] = []  # {"sub", "scopes", "access"} per token issued
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"token-server-{port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)

    # -- token making (called from the handler threads)

    def grant(self, user: str | None, scopes: list[str]) -> dict[str, Any]:
        """The response body for a token request by ``user`` (None: anonymous)."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None:
                continue
            typ, name, actions = parsed
            if user is None:
                actions = ["pull"] if self.anonymous_pull and "pull" in actions else []
            if actions:
                access.append({"type": typ, "name": name, "actions": actions})
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user or "",
            "aud": TOKEN_SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = self.sign(claims)
        with self._lock:
            self.issued += 1
            self.grants.append({"sub": user, "scopes": scopes, "access": access})
        issued_at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": issued_at,
        }

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (RS256) of ``claims`` with the signing certificate in ``x5c``."""
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = subprocess.run(
            [OPENSSL_BIN, "dgst", "-sha256", "-sign", str(self.key_file)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return signing_input + "." + _b64url(signature)

    def check(self, user: str, password: str) -> bool:
        return secrets.compare_digest(user, self.username) and secrets.compare_digest(
            password, self.password
        )

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected += 1


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _unauthorized(self) -> None:
            server.count_rejected()
            self._reply(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                {"WWW-Authenticate": 'Basic realm="cove-test-token"'},
            )

        def _issue(self, user: str | None, password: str | None, scopes: list[str]) -> None:
            if user is not None and not server.check(user, password or ""):
                self._unauthorized()
                return
            self._reply(200, server.grant(user, scopes), {})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"}, {})
                return
            query = parse_qs(url.query)
            user, password = _basic_credentials(self.headers.get("Authorization"))
            if self.headers.get("Authorization") and user is None:
                self._unauthorized()
                return
            self._issue(user, password, _scopes(query.get("scope", [])))

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(errors="replace"))
            if url.path != "/token":
                self._reply(404, {"error": "not found"}, {})
                return
            if form.get("grant_type", [""])[0] != "password":
                self._reply(400, {"error": "unsupported_grant_type"}, {})
                return
            user = form.get("username", [""])[0]
            password = form.get("password", [""])[0]
            self._issue(user, password, _scopes(form.get("scope", [])))

    return Handler


def _scopes(values: list[str]) -> list[str]:
    return [s for v in values for s in v.split(" ") if s]


def _parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:NAME:pull,push`` -> ("repository", NAME, ["pull", "push"])."""
    typ, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not typ or not name:
        return None
    return typ, name, list(dict.fromkeys(a for a in actions.split(",") if a))


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header:
        return None, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, sep, password = base64.b64decode(value.strip()).decode().partition(":")
    except ValueError:
        return None, None
    if not sep:
        return None, None
    return user, password


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pem_body(pem: str) -> str:
    """The base64 DER of the first certificate of a PEM text (what ``x5c`` holds)."""
    m = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise RegistryError("no certificate in PEM")
    return "".join(m.group(1).split())


# --------------------------------------------------------------------------------------------
# Starting registries


def start_plain(tmp: Path) -> Registry:
    """A plain-HTTP registry without auth."""
    workdir = _workdir(tmp, "plain")
    return _start_registry(workdir, auth=None, tls=None)


def start_tls_basic(tmp: Path) -> Registry:
    """An HTTPS registry (certificate from a test CA) with basic auth for ``tester``."""
    workdir = _workdir(tmp, "tls")
    tls = _make_tls(workdir)
    password = secrets.token_urlsafe(16)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{USERNAME}:{bcrypt_hash(password)}\n")
    auth = {"htpasswd": {"realm": "cove-test-registry", "path": str(htpasswd)}}
    reg = _start_registry(workdir, auth=auth, tls=tls)
    reg.username, reg.password = USERNAME, password
    return reg


def start_token(
    tmp: Path, *, tls: bool = False, anonymous_pull: bool = False
) -> tuple[Registry, TokenServer]:
    """A registry with bearer-token auth and its token server (both on 127.0.0.1).

    The registry is plain HTTP unless ``tls``; the token server is always plain HTTP. The
    registry's ``username``/``password`` are the token server's credentials.
    """
    workdir = _workdir(tmp, "token")
    tls_files = _make_tls(workdir) if tls else None
    tokens = TokenServer(
        workdir, USERNAME, secrets.token_urlsafe(16), anonymous_pull=anonymous_pull
    )
    try:
        auth = {
            "token": {
                "realm": tokens.url,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(tokens.cert_file),
            }
        }
        reg = _start_registry(workdir, auth=auth, tls=tls_files)
    except BaseException:
        tokens.stop()
        raise
    reg.username, reg.password = tokens.username, tokens.password
    return reg, tokens


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd line (distribution accepts bcrypt only).

    Uses the ``bcrypt`` module if importable, else ``htpasswd -B`` (apache2-utils), else the
    C library's crypt(3) through Python's ``crypt`` module (libxcrypt does ``$2b$``; the module
    is deprecated and gone in Python 3.13, where one of the other two is needed).
    """
    try:
        import bcrypt
    except ImportError:
        pass
    else:
        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode())
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        out = subprocess.run(
            [htpasswd, "-n", "-i", "-B", "-C", "4", USERNAME],
            input=password,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().partition(":")[2]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError as e:
        raise RegistryError(
            "no bcrypt implementation: install the bcrypt pip package or apache2-utils"
        ) from e
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        raise RegistryError("crypt(3) here has no bcrypt: install bcrypt or apache2-utils")
    return hashed


def _workdir(tmp: Path, kind: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"registry-{kind}-", dir=tmp))


def _openssl(*args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run([OPENSSL_BIN, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    if proc.returncode != 0:
        raise RegistryError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


@dataclass
class _TLSFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    cert_dir: Path


def _make_tls(workdir: Path) -> _TLSFiles:
    """A test CA and a server certificate for IP:127.0.0.1 signed by it (EC P-256)."""
    d = workdir / "tls"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-sha256", "-days", "2", "-subj", "/CN=cove test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=d,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr",
        cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", str(secrets.randbits(63)), "-sha256", "-days", "2",
        "-extfile", "server.ext", "-out", "server.crt", cwd=d,
    )  # fmt: skip
    cert_dir = d / "certs.d"
    cert_dir.mkdir()
    shutil.copyfile(d / "ca.crt", cert_dir / "ca.crt")
    return _TLSFiles(d / "ca.crt", d / "server.crt", d / "server.key", cert_dir)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _registry_env() -> dict[str, str]:
    """The environment less REGISTRY_* (distribution reads them as config) and proxies."""
    drop = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REGISTRY_") and k.lower() not in drop
    }


def _registry_argv(config: Path) -> list[str]:
    argv = [REGISTRY_BIN, "serve", str(config)]
    setpriv = shutil.which("setpriv")
    if setpriv:
        # If the test process dies without teardown, the registry dies with it.
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return argv


def _start_registry(
    workdir: Path, *, auth: dict[str, Any] | None, tls: _TLSFiles | None
) -> Registry:
    reason = registry_available()
    if reason:
        raise RegistryError(reason)
    storage = workdir / "storage"
    storage.mkdir()
    log_file = workdir / "registry.log"
    last_error = ""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        host = f"127.0.0.1:{port}"
        http: dict[str, Any] = {"addr": host, "secret": secrets.token_hex(16)}
        if tls:
            http["tls"] = {"certificate": str(tls.cert_file), "key": str(tls.key_file)}
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "error", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if auth:
            config["auth"] = auth
        config_file = workdir / "config.yml"
        # JSON is YAML: no quoting pitfalls for paths and secrets.
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                _registry_argv(config_file),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=_registry_env(),
                start_new_session=True,
            )
        reg = Registry(
            host=host,
            url=f"{'https' if tls else 'http'}://{host}",
            ca_file=str(tls.ca_file) if tls else None,
            cert_dir=str(tls.cert_dir) if tls else None,
            workdir=workdir,
            log_file=log_file,
            _stop=functools.partial(_stop_process, proc),
        )
        try:
            _wait_ready(reg, proc, want_auth=auth is not None)
        except BaseException as e:
            reg.stop()
            last_error = str(e)
            if isinstance(e, RegistryError) and "address already in use" in last_error:
                continue  # the free port was taken between probing and binding: try another
            raise
        return reg
    raise RegistryError(f"registry did not start after {START_ATTEMPTS} ports: {last_error}")


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after STOP_TIMEOUT, and reap the leader.

    The group is signalled only while its leader is unreaped, so its id cannot have been
    reused (the registry starts no children of its own).
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


def _probe(reg: Registry, path: str = "/v2/", timeout: float = 2.0) -> int:
    """Status of ``GET path`` on the registry (raises OSError when nothing answers)."""
    host, port = reg.host.rsplit(":", 1)
    conn: http.client.HTTPConnection
    if reg.tls:
        conn = http.client.HTTPSConnection(
            host, int(port), timeout=timeout, context=reg.ssl_context()
        )
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _wait_ready(
    reg: Registry,
    proc: subprocess.Popen[bytes] | None,
    *,
    want_auth: bool,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    ok = {200, 401} if want_auth else {200}
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RegistryError(
                f"registry on {reg.host} exited {proc.returncode}: {reg.log_text()[-2000:]}"
            )
        try:
            status = _probe(reg, timeout=1.0)
        except ssl.SSLError as e:
            last = f"TLS: {e}"  # a TLS failure will not go away by waiting
            break
        except OSError as e:
            last = str(e)
        else:
            if status in ok:
                return
            last = f"GET /v2/ -> {status}"
        time.sleep(0.05)
    raise RegistryError(
        f"registry on {reg.host} not ready after {timeout:.0f}s ({last}): {reg.log_text()[-2000:]}"
    )


# --------------------------------------------------------------------------------------------
# The byte-flipping proxy

_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_REDIRECTS = {301, 302, 303, 307, 308}
_MAX_REDIRECTS = 5


class FlippingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that corrupts blob bodies.

    Everything passes through (methods, bodies, headers, Range; ``Host`` is kept as the
    proxy's, so the registry's Location headers point at the proxy, and absolute ones naming
    the upstream are rewritten anyway), except that the body of every successful
    ``GET /v2/<name>/blobs/sha256:...`` has its middle byte inverted. If the registry
    redirects a blob GET (storage drivers with URLFor; the filesystem driver serves blobs
    itself), the proxy follows the redirect itself, on 127.0.0.1 only, and corrupts what it
    fetched, so the client never leaves the proxy.
    """

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self._upstream_split = urlsplit(upstream.url)
        self._lock = threading.Lock()
        self.flipped = 0  # blob bodies corrupted
        self.requests = 0  # requests proxied
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"flipping-proxy-{port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)

    def count(self, *, flipped: bool) -> None:
        with self._lock:
            self.requests += 1
            if flipped:
                self.flipped += 1

    def connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        """A connection to ``netloc``, which must be on 127.0.0.1 (redirects included)."""
        target = urlsplit(f"//{netloc}")
        if target.hostname != "127.0.0.1":
            raise RegistryError(f"proxy refuses to reach {netloc}: not 127.0.0.1")
        if scheme == "https":
            ctx = ssl.create_default_context(cafile=self.upstream.ca_file)
            return http.client.HTTPSConnection(
                target.hostname, target.port or 443, timeout=60, context=ctx
            )
        return http.client.HTTPConnection(target.hostname, target.port or 80, timeout=60)

    def rewrite_location(self, location: str) -> str:
        """Absolute URLs naming the upstream or the proxy point at the plain-HTTP proxy."""
        loc = urlsplit(location)
        if loc.scheme and loc.netloc in (self.upstream.host, self.host):
            return self.url + location[len(f"{loc.scheme}://{loc.netloc}") :]
        return location


def flip_byte(body: bytes) -> bytes:
    """``body`` with its middle byte inverted (empty stays empty)."""
    if not body:
        return body
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]


def _proxy_handler(proxy: FlippingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _read_body(self) -> bytes | None:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            length = self.headers.get("Content-Length")
            if length is not None:
                return self.rfile.read(int(length))
            return None

        def _forward(self) -> None:
            body = self._read_body()
            # A list, not a dict: clients repeat headers (Go sends one Accept per type).
            headers = [
                (k, v)
                for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
            ]
            if body is not None:
                headers.append(("Content-Length", str(len(body))))
            path = self.path
            blob = self.command == "GET" and _BLOB_PATH.match(urlsplit(path).path) is not None
            up = proxy._upstream_split
            try:
                status, reason, resp_headers, data = self._exchange(
                    up.scheme, up.netloc, self.command, path, headers, body
                )
                hops = 0
                while blob and status in _REDIRECTS and hops < _MAX_REDIRECTS:
                    hops += 1
                    target = urlsplit(_header(resp_headers, "Location") or "")
                    follow = [
                        (k, v) for k, v in headers if k.lower() in ("range", "user-agent", "accept")
                    ]
                    status, reason, resp_headers, data = self._exchange(
                        target.scheme or up.scheme,
                        target.netloc or up.netloc,
                        "GET",
                        (target.path or "/") + (f"?{target.query}" if target.query else ""),
                        follow,
                        None,
                    )
            except (OSError, RegistryError, http.client.HTTPException) as e:
                msg = f"flipping proxy: upstream failed: {e}".encode()
                self.send_response(502)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                proxy.count(flipped=False)
                return
            flipped = blob and status in (200, 206) and bool(data)
            if flipped:
                data = flip_byte(data)
            proxy.count(flipped=flipped)
            self.send_response_only(status, reason)
            for k, v in resp_headers:
                kl = k.lower()
                if kl in _HOP_BY_HOP:
                    continue
                if kl == "content-length" and self.command != "HEAD":
                    continue
                if kl == "location":
                    v = proxy.rewrite_location(v)
                self.send_header(k, v)
            if self.command != "HEAD" and status not in (204, 304) and status >= 200:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _exchange(
            self,
            scheme: str,
            netloc: str,
            method: str,
            path: str,
            headers: list[tuple[str, str]],
            body: bytes | None,
        ) -> tuple[int, str, list[tuple[str, str]], bytes]:
            conn = proxy.connection(scheme, netloc)
            try:
                has_host = any(k.lower() == "host" for k, _ in headers)
                conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
                data = b"" if method == "HEAD" else resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            finally:
                conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    return Handler


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


def start_flipping_proxy(upstream: Registry) -> Registry:
    """A :class:`FlippingProxy` in front of ``upstream``, as a plain-HTTP :class:`Registry`.

    Credentials are the upstream's (the proxy passes Authorization through). Stopping the
    proxy leaves the upstream running.
    """
    proxy = FlippingProxy(upstream)
    reg = Registry(
        host=proxy.host,
        url=proxy.url,
        username=upstream.username,
        password=upstream.password,
        workdir=upstream.workdir,
        proxy=proxy,
        _stop=proxy.stop,
    )
    try:
        _wait_ready(reg, None, want_auth=upstream.username is not None, timeout=5.0)
    except BaseException:
        proxy.stop()
        raise
    return reg


# --------------------------------------------------------------------------------------------
# A test image and skopeo


@dataclass
class OCIImage:
    """A one-layer OCI image layout written by :func:`make_oci_layout`."""

    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    layer_size: int
    diff_id: str

    @property
    def ref(self) -> str:
        """The skopeo reference, ``oci:LAYOUT:TAG``."""
        return f"oci:{self.layout}:{self.tag}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def make_oci_layout(dest: Path, tarball: Path = ALPINE_TAR, tag: str = "latest") -> OCIImage:
    """An OCI image layout at ``dest``: one gzip layer (``tarball`` as is), config, manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    layer_digest = _sha256_file(tarball)
    layer_size = tarball.stat().st_size
    shutil.copyfile(tarball, blobs / layer_digest.split(":", 1)[1])
    diff = hashlib.sha256()
    with gzip.open(tarball, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            diff.update(chunk)
    diff_id = "sha256:" + diff.hexdigest()
    config = json.dumps(
        {
            "created": "2024-09-06T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "2024-09-06T00:00:00Z", "created_by": tarball.name}],
        },
        separators=(",", ":"),
    ).encode()
    config_digest = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
        },
        separators=(",", ":"),
    ).encode()
    manifest_digest = put(manifest)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return OCIImage(dest, tag, manifest_digest, config_digest, layer_digest, layer_size, diff_id)


def skopeo(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``skopeo ARGS`` isolated from the machine's configuration (check it yourself).

    Its own accept-anything policy, an empty auth file (so only ``--creds`` count) and an
    empty registries.conf (no mirrors, no search registries), all under ``tmp``.
    """
    conf = tmp / "skopeo-conf"
    conf.mkdir(parents=True, exist_ok=True)
    policy = conf / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    auth = conf / "auth.json"
    auth.write_text('{"auths":{}}')
    registries = conf / "registries.conf"
    registries.write_text("")
    env = _registry_env()
    env |= {
        "REGISTRY_AUTH_FILE": str(auth),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
        "CONTAINERS_REGISTRIES_CONF_DIR": str(conf),
        "HOME": str(conf),
        "XDG_RUNTIME_DIR": str(conf),
        "XDG_CONFIG_HOME": str(conf),
        "DOCKER_CONFIG": str(conf),
    }
    return subprocess.run(
        [SKOPEO_BIN, "--policy", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def skopeo_registry_args(reg: Registry, side: str, *, creds: bool = True) -> list[str]:
    """``--{side}-tls-verify``/``--{side}-cert-dir`` and ``--{side}-creds`` for ``reg``.

    ``side`` is "src" or "dest" (skopeo copy); "" gives the plain ``--tls-verify`` form of
    skopeo inspect and friends.
    """
    p = f"--{side}-" if side else "--"
    if not reg.tls:
        args = [f"{p}tls-verify=false"]
    elif reg.cert_dir:
        args = [f"{p}cert-dir", reg.cert_dir, f"{p}tls-verify=true"]
    else:
        args = [f"{p}tls-verify=true"]
    if creds and reg.creds:
        args += [f"{p}creds", reg.creds]
    else:
        args += [f"{p}no-creds"]
    return args


# --------------------------------------------------------------------------------------------
# Fixtures


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


class ProcessCleanup:
    """Stops everything added, last first, when the test ends (pass or fail)."""

    def __init__(self) -> None:
        self._items: list[_Stoppable] = []

    def add(self, item: S) -> S:
        self._items.append(item)
        return item

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        while self._items:
            item = self._items.pop()
            try:
                item.stop()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def registry_proc_cleanup() -> Iterator[ProcessCleanup]:
    """Add registries, token servers and proxies; all are stopped in teardown."""
    cleanup = ProcessCleanup()
    try:
        yield cleanup
    finally:
        cleanup.stop_all()


@pytest.fixture
def plain_registry(tmp_path: Path, registry_proc_cleanup: ProcessCleanup) -> Registry:
    require_registry()
    return registry_proc_cleanup.add(start_plain(tmp_path))


@pytest.fixture
def tls_registry(tmp_path: Path, registry_proc_cleanup: ProcessCleanup) -> Registry:
    require_registry()
    return registry_proc_cleanup.add(start_tls_basic(tmp_path))


@pytest.fixture
def token_registry(
    tmp_path: Path, registry_proc_cleanup: ProcessCleanup
) -> tuple[Registry, TokenServer]:
    require_registry()
    reg, tokens = start_token(tmp_path)
    registry_proc_cleanup.add(tokens)
    registry_proc_cleanup.add(reg)  # stopped first
    return reg, tokens


@pytest.fixture
def flipping_registry(plain_registry: Registry, registry_proc_cleanup: ProcessCleanup) -> Registry:
    """A byte-flipping proxy in front of ``plain_registry`` (push there, pull here)."""
    return registry_proc_cleanup.add(start_flipping_proxy(plain_registry))
