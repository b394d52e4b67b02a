"""An OCI distribution-spec (v1.1) HTTP client: TLS, basic and bearer-token auth, redirects.

Built on ``http.client``: one connection per host, kept alive, re-opened when the server
closes it. Auth follows the ``WWW-Authenticate`` challenge of a 401: ``Basic`` sends the
stored credentials; ``Bearer realm=,service=,scope=`` fetches a token from the realm (with
the credentials when there are some) and retries; tokens are cached per scope.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from cove.errors import CoveError, InvalidSpec

_BASIC = "\0basic"  # the token cache's key for a Basic header (never a scope)
MiB = 1 << 20
MAX_TOKEN = 1 * MiB  # a token server's answer
MAX_ERROR = 64 << 10  # an error body: only its first line is ever shown
CERTS_DIRS = ("/etc/cove/certs.d", "/etc/docker/certs.d", "/etc/containers/certs.d")


class RegistryError(CoveError):
    """The registry refused or failed a request; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthError(RegistryError):
    pass


@dataclass
class Endpoint:
    host: str  # host[:port], as in the reference
    insecure: bool = False  # plain HTTP allowed
    tls_verify: bool = True
    creds: tuple[str, str] | None = None
    _tokens: dict[str, str] = field(default_factory=dict)
    _conns: dict[str, http.client.HTTPConnection] = field(default_factory=dict)
    scheme: str = ""

    def __post_init__(self) -> None:
        if not self.scheme:
            self.scheme = "http" if self.insecure else "https"


def _is_localhost(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0][1:]
    return name in ("localhost", "127.0.0.1", "::1") or name.startswith("127.")


def tls_context(host: str, verify: bool) -> ssl.SSLContext:
    """The system CAs plus ``certs.d/HOST[:PORT]/*.crt`` (Docker's layout)."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    for base in CERTS_DIRS:
        d = os.path.join(base, host)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                path = os.path.join(d, name)
                if name.endswith(".crt"):
                    ctx.load_verify_locations(cafile=path)
                elif name.endswith(".cert"):
                    key = path[: -len(".cert")] + ".key"
                    if os.path.exists(key):
                        ctx.load_cert_chain(path, key)
    extra = os.environ.get("COVE_CA_FILE")
    if extra:
        ctx.load_verify_locations(cafile=extra)
    return ctx


def read_bounded(resp: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    """The whole body, refused once it is larger than ``limit`` bytes: a declared
    Content-Length over the limit is refused before reading, an undeclared one after at most
    ``limit`` + 1 bytes (a hostile server may stream forever)."""
    declared = resp.getheader("Content-Length")
    too_big = f"{what} is larger than {limit // MiB} MiB: refused"
    if declared and declared.strip().isdigit() and int(declared) > limit:
        resp.close()
        raise RegistryError(too_big)
    data = resp.read(limit + 1)
    if len(data) > limit:
        resp.close()
        raise RegistryError(too_big)
    return data


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class Client:
    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep

    # -- connections ----------------------------------------------------------

    def _conn(self, scheme: str, host: str) -> http.client.HTTPConnection:
        key = f"{scheme}://{host}"
        conn = self.ep._conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(
                    host, timeout=60, context=tls_context(host, self.ep.tls_verify)
                )
            else:
                conn = http.client.HTTPConnection(host, timeout=60)
            self.ep._conns[key] = conn
        return conn

    def discard(self, resp: http.client.HTTPResponse) -> None:
        """Drop a body cove has no use for (bounded): one larger than an error body is not
        read on; its connection is closed instead, so the next request starts clean."""
        resp.read(MAX_ERROR)
        if not resp.isclosed():
            resp.close()
            self.close()

    def close(self) -> None:
        for c in self.ep._conns.values():
            c.close()
        self.ep._conns.clear()

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: Any
    ) -> http.client.HTTPResponse:
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in range(2):
            conn = self._conn(parts.scheme, parts.netloc)
            try:
                conn.request(method, path, body=body, headers=headers)
                return conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                conn.close()
                raise RegistryError(
                    f"{parts.netloc}: TLS certificate not trusted ({e.verify_message}); add the CA "
                    f"to /etc/cove/certs.d/{parts.netloc}/ca.crt or use --tls-verify=false"
                ) from e
            except ssl.SSLError as e:
                conn.close()
                raise RegistryError(
                    f"{parts.netloc}: TLS handshake failed ({e.reason}); a plain HTTP registry "
                    f"must be configured insecure (or --tls-verify=false on localhost)"
                ) from e
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                conn.close()  # a kept-alive connection the server dropped: once more, fresh
                if attempt == 1 or hasattr(body, "read"):
                    raise RegistryError(f"{parts.netloc}: connection lost: {e}") from e
            except OSError as e:
                conn.close()
                raise RegistryError(f"{parts.netloc}: {e.strerror or e}") from e
        raise AssertionError("unreachable")

    # -- requests -------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.ep.scheme}://{self.ep.host}{path}"

    def _ours(self, url: str) -> bool:
        """Whether ``url`` is the registry the credentials were given for: same host and
        port, and not a downgrade to plain HTTP. An upload ``Location`` or a redirect may
        name any server; it gets no credentials and no challenge is answered for it (as
        Docker's authorizer, which answers only for the endpoint it pinged)."""
        parts = urllib.parse.urlsplit(url)
        return parts.netloc == self.ep.host and parts.scheme == self.ep.scheme

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        scope: str = "",
        ok: tuple[int, ...] = (200,),
        follow: bool = True,
    ) -> http.client.HTTPResponse:
        """Send with auth; follows redirects (without credentials to other hosts)."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        hdrs = dict(headers or {})
        ours = self._ours(url)
        refreshed = False
        for _ in range(3):
            auth = self._auth_header(scope) if ours else None
            if auth:
                hdrs["Authorization"] = auth
            resp = self._send(method, url, hdrs, body)
            if resp.status == 401:
                if not ours:
                    self.discard(resp)
                    netloc = urllib.parse.urlsplit(url).netloc
                    raise AuthError(
                        f"{self.ep.host}: {netloc} asked for credentials; they are only sent "
                        f"to {self.ep.host}",
                        401,
                    )
                challenge = resp.getheader("WWW-Authenticate") or ""
                self.discard(resp)
                if scope in self.ep._tokens and not refreshed:
                    del self.ep._tokens[scope]  # expired or too narrow: fetch a fresh one
                    refreshed = True
                if not self._answer(challenge, scope):
                    raise AuthError(self._deny_message(resp.status), 401)
                continue
            break
        redirects = 0
        while follow and resp.status in (301, 302, 303, 307, 308) and redirects < 5:
            location = urllib.parse.urljoin(url, resp.getheader("Location") or "")
            self.discard(resp)
            redirects += 1
            same = self._ours(location) and ours
            h = dict(hdrs) if same else {k: v for k, v in hdrs.items() if k != "Authorization"}
            url = location
            resp = self._send("GET" if method == "HEAD" and not same else method, url, h, None)
        if resp.status not in ok:
            text = resp.read(MAX_ERROR).decode("utf-8", "replace")
            raise RegistryError(self._error_text(resp.status, text, url), resp.status)
        return resp

    def _deny_message(self, status: int) -> str:
        if self.ep.creds:
            return f"{self.ep.host}: authentication failed: wrong username or password"
        return f"{self.ep.host}: authentication required: run cove login {self.ep.host}"

    def _error_text(self, status: int, text: str, url: str) -> str:
        try:
            errs = json.loads(text).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)
        except (ValueError, AttributeError):
            detail = text.strip()[:200]
        path = urllib.parse.urlsplit(url).path
        return f"{self.ep.host}: {status} on {path}" + (f": {detail}" if detail else "")

    def _auth_header(self, scope: str) -> str | None:
        if _BASIC in self.ep._tokens:
            return self.ep._tokens[_BASIC]
        if scope in self.ep._tokens:
            return f"Bearer {self.ep._tokens[scope]}"
        return None

    def _answer(self, challenge: str, scope: str) -> bool:
        """Get what the challenge asks for; False when there is nothing more to try."""
        kind, params = parse_challenge(challenge)
        if kind == "basic":
            if not self.ep.creds or _BASIC in self.ep._tokens:
                return False
            raw = f"{self.ep.creds[0]}:{self.ep.creds[1]}".encode()
            self.ep._tokens[_BASIC] = "Basic " + base64.b64encode(raw).decode()
            return True
        if kind == "bearer":
            if scope in self.ep._tokens:
                return False  # the token we have was refused: nothing more to try
            self.ep._tokens[scope] = self._fetch_token(params, scope)
            return True
        return False

    def _fetch_token(self, params: dict[str, str], scope: str) -> str:
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"{self.ep.host}: bearer challenge without a realm")
        query = {"service": params.get("service", "")}
        wanted = scope or params.get("scope", "")
        if wanted:
            query["scope"] = wanted
        if self.ep.creds:
            query["account"] = self.ep.creds[0]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidSpec(f"{self.ep.host}: token realm {realm!r} is not http(s)")
        if parts.scheme == "http" and not self.ep.insecure:
            # the password (and the token) would cross the network in the clear: only a
            # registry the user configured insecure may use a plain HTTP realm
            raise AuthError(
                f"{self.ep.host}: token realm {realm} is plain http:// on a registry that is "
                f"not configured insecure: refused"
            )
        headers = {}
        if self.ep.creds:
            raw = f"{self.ep.creds[0]}:{self.ep.creds[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        resp = self._send("GET", url, headers, None)
        try:
            what = f"{self.ep.host}: token response from {parts.netloc}"
            body = read_bounded(resp, MAX_TOKEN, what)
        except RegistryError as e:
            raise AuthError(str(e)) from e
        if resp.status == 401 or resp.status == 403:
            raise AuthError(self._deny_message(resp.status), resp.status)
        if resp.status != 200:
            raise AuthError(f"{self.ep.host}: token server {parts.netloc} answered {resp.status}")
        try:
            doc = json.loads(body)
            return str(doc.get("token") or doc["access_token"])
        except (ValueError, KeyError) as e:
            raise AuthError(f"{self.ep.host}: token server sent no token") from e

    def ping(self) -> None:
        """``GET /v2/``: checks reachability and credentials (``login``)."""
        resp = self.request("GET", "/v2/", ok=(200,))
        self.discard(resp)
