"""The Engine API's HTTP/1.1 plumbing: a threaded server on a unix socket, the routing
table, request bodies (Content-Length or chunked), Docker-shaped errors, chunked
streaming responses and connection hijacking (attach, exec start).

One thread per connection: a long wait, a followed log or a hijacked stream holds only
its own thread, never another request. Every handler works through a fresh
``ContainerEngine``/``Engine`` of its own (sqlite connections are per thread), the same
engines the CLI calls: the server keeps no state of its own about containers.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from cove import __version__
from cove.errors import (
    Conflict,
    CorruptContent,
    CoveError,
    InvalidSpec,
    NotFound,
    StateError,
    UnsafeArchive,
    Unsupported,
)

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine
    from cove.engine import Engine

API_VERSION = "1.41"
MIN_API_VERSION = "1.12"
RAW_STREAM = "application/vnd.docker.raw-stream"
DEFAULT_HOST = "unix:///run/cove.sock"
DEFAULT_GROUP = "docker"


class ApiError(Exception):
    """A failure with Docker's status code; the body is ``{"message": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotModified(Exception):
    """304: start of a running container, stop of a stopped one (no body)."""


# cove's error tree -> Docker's status codes (moby errdefs: NotFound 404, Conflict 409,
# InvalidParameter 400, NotImplemented 501, everything else 500)
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (StateError, 409),
    (InvalidSpec, 400),
    (UnsafeArchive, 400),
    (CorruptContent, 400),
    (Unsupported, 501),
)


def status_of(err: BaseException) -> int:
    if isinstance(err, ApiError):
        return err.status
    for kind, status in _STATUS:
        if isinstance(err, kind):
            return status
    return 500


# -- requests -------------------------------------------------------------------------


class Body:
    """The request body, read on demand: Content-Length or chunked (the docker CLI sends a
    build context chunked; ``http.server`` does not decode that)."""

    def __init__(self, rfile: Any, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._left = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self._done = not chunked and not length

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while not self._done and (n < 0 or len(out) < n):
            want = 65536 if n < 0 else n - len(out)
            piece = self._read_some(want)
            if not piece:
                break
            out += piece
        return bytes(out)

    def _read_some(self, want: int) -> bytes:
        if not self._chunked:
            data = self._rfile.read(min(want, self._left))
            self._left -= len(data)
            if not data or self._left <= 0:
                self._done = True
            return bytes(data)
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line:
                raise ApiError(400, "truncated chunked request body")
            try:
                self._chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError as e:
                raise ApiError(400, "malformed chunked request body") from e
            if self._chunk_left == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._done = True
                return b""
        data = self._rfile.read(min(want, self._chunk_left))
        if not data:
            raise ApiError(400, "truncated chunked request body")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(16)  # the CRLF after a chunk
        return bytes(data)

    def drain(self) -> None:
        while self.read(65536):
            pass


class Request:
    """One request as a handler sees it: path groups, query, body, and the ways to answer
    that outlive a plain response (a chunked stream, a hijacked connection)."""

    def __init__(
        self,
        conn: _Handler,
        method: str,
        path: str,
        version: tuple[int, int],
        params: dict[str, str],
        query: dict[str, list[str]],
    ) -> None:
        self._conn = conn
        self.method = method
        self.path = path
        self.version = version
        self.params = params
        self.query = query
        self.headers = conn.headers
        self.root: str = conn.server.root  # type: ignore[attr-defined]
        length = conn.headers.get("Content-Length")
        chunked = "chunked" in (conn.headers.get("Transfer-Encoding") or "").lower()
        self.body = Body(conn.rfile, int(length) if length and not chunked else None, chunked)
        self.started = False  # a status line went out: errors can no longer be reported
        self.hijacked = False
        self._engine: Engine | None = None
        self._ce: ContainerEngine | None = None

    # -- arguments --------------------------------------------------------------------

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.arg(name)
        if value is None:
            return default
        return value.strip().lower() not in ("", "0", "false", "no")

    def int_arg(self, name: str, default: int | None = None) -> int | None:
        value = self.arg(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError as e:
            raise ApiError(400, f"invalid value for {name}: {value!r}") from e

    def json(self) -> Any:
        data = self.body.read()
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError as e:
            raise ApiError(400, f"invalid JSON body: {e}") from e

    def filters(self) -> dict[str, list[str]]:
        """``filters`` in both encodings: {"k":["v"]} (docker-py) and {"k":{"v":true}} (Go
        clients, compose)."""
        raw = self.arg("filters")
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, f"invalid filter: {raw}") from e
        if not isinstance(doc, dict):
            raise ApiError(400, f"invalid filter: {raw}")
        out: dict[str, list[str]] = {}
        for key, value in doc.items():
            if isinstance(value, dict):
                out[str(key)] = [str(v) for v, on in value.items() if on]
            elif isinstance(value, list):
                out[str(key)] = [str(v) for v in value]
            elif isinstance(value, str):
                out[str(key)] = [value]
            else:
                raise ApiError(400, f"invalid filter: {raw}")
        return out

    # -- the engines (one of each per request: sqlite connections stay in their thread) ----

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from cove.engine import Engine

            self._engine = Engine(self.root)
        return self._engine

    @property
    def ce(self) -> ContainerEngine:
        if self._ce is None:
            from cove.containers.engine import ContainerEngine

            self._ce = ContainerEngine(self.engine)
        return self._ce

    def close(self) -> None:
        if self._ce is not None:
            with contextlib.suppress(Exception):
                self._ce.store.close()

    # -- answers that are not one body ------------------------------------------------

    def stream(self, content_type: str = "application/json", status: int = 200) -> Chunks:
        """Send the headers now and the body in chunks (logs, stats, wait, pull progress)."""
        c = self._conn
        c.send_response(status)
        c.send_header("Content-Type", content_type)
        c.send_header("Transfer-Encoding", "chunked")
        c.common_headers()
        c.end_headers()
        self.started = True
        return Chunks(c.connection)

    def hijack(self) -> Hijacked:
        """Take the connection over for a raw byte stream (attach, exec start): ``101
        UPGRADED`` when the client asked for an upgrade, else a 200 without a length.

        The status line goes out alone: docker-py reads the raw socket after the response
        headers and loses bytes that arrived together with them (docker-py#2466)."""
        c = self._conn
        upgrade = "upgrade" in (self.headers.get("Connection") or "").lower()
        lines = (
            [
                "HTTP/1.1 101 UPGRADED",
                f"Content-Type: {RAW_STREAM}",
                "Connection: Upgrade",
                "Upgrade: tcp",
            ]
            if upgrade
            else ["HTTP/1.1 200 OK", f"Content-Type: {RAW_STREAM}"]
        )
        lines += [f"Api-Version: {API_VERSION}", "", ""]
        c.connection.sendall("\r\n".join(lines).encode())
        self.started = True
        self.hijacked = True
        c.close_connection = True
        return Hijacked(c.connection, c.rfile)

    def client_gone(self) -> bool:
        """The client closed the connection (it sends nothing while it reads a stream, so
        readable means EOF or an error)."""
        return _peer_closed(self._conn.connection)


def _peer_closed(sock: socket.socket) -> bool:
    """The client closed its end for good. Not its half-close: the docker CLI shuts its
    writing side down as soon as it has no more input, and still reads the stream; on a
    unix socket only a full close (or a reset) raises POLLHUP/POLLERR."""
    p = select.poll()
    p.register(sock, select.POLLHUP | select.POLLERR)
    try:
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))
    except OSError:
        return True


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a pipe or pty fd (os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Chunks:
    """A chunked response body; ``close`` ends it (the connection stays usable)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    def write(self, data: bytes) -> None:
        if data:
            self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def json(self, doc: Any) -> None:
        self.write(json.dumps(doc).encode() + b"\n")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.sendall(b"0\r\n\r\n")


class Hijacked:
    """A hijacked connection: raw bytes both ways. ``read`` returns what the client sent
    (the bytes already buffered behind the request first); b"" when it half-closed."""

    def __init__(self, sock: socket.socket, rfile: Any) -> None:
        self.sock = sock
        self._rfile = rfile

    def read(self) -> bytes:
        try:
            return bytes(self._rfile.read1(65536))
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, stream: int, data: bytes) -> None:
        """stdcopy framing: [stream, 0, 0, 0, len32be] then the bytes (1 stdout, 2 stderr)."""
        self.sock.sendall(bytes((stream, 0, 0, 0)) + len(data).to_bytes(4, "big") + data)

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)


class Response:
    def __init__(
        self,
        status: int = 200,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        self.raw = raw
        self.content_type = content_type
        self.headers = headers or {}


Handler = Callable[[Request], "Response | None"]
Route = tuple[str, str, Handler]


def _routes() -> list[tuple[str, re.Pattern[str], Handler]]:
    """The routing table: every face module's ``ROUTES``. A new module (images, networks,
    volumes, events, build, system) is added to ``modules`` here and nowhere else."""
    from cove.api import build, containers, daemon, execs, images, networks, system, volumes

    modules: list[Any] = [daemon, containers, execs, images, build, networks, volumes, system]
    table = []
    for mod in modules:
        for method, pattern, fn in mod.ROUTES:
            table.append((method, re.compile(pattern), fn))
    return table


_VERSIONED = re.compile(r"/v(\d+)\.(\d+)(/.*)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"cove/{__version__}"
    sys_version = ""

    def address_string(self) -> str:
        return "unix"  # AF_UNIX peers have no address (client_address is '')

    def log_message(self, format: str, *args: Any) -> None:
        if getattr(self.server, "verbose", False):
            sys.stderr.write(f"cove serve: {format % args}\n")

    def common_headers(self) -> None:
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Docker-Experimental", "false")
        self.send_header("Ostype", "linux")

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        version = (1, 41)
        m = _VERSIONED.fullmatch(path)
        if m:
            version = (int(m.group(1)), int(m.group(2)))
            path = m.group(3)
        query = parse_qs(url.query, keep_blank_values=True)
        req: Request | None = None
        t0 = time.monotonic()
        try:
            if version > (1, 41):
                raise ApiError(
                    400,
                    f"client version {version[0]}.{version[1]} is too new. Maximum supported "
                    f"API version is {API_VERSION}",
                )
            fn, params = self._route(self.command, path)
            req = Request(self, self.command, path, version, params, query)
            resp = fn(req)
            if not req.hijacked:
                req.body.drain()
            if resp is not None and not req.started:
                self._send(resp)
        except NotModified:
            self._send(Response(304))
        except (ApiError, CoveError) as e:
            self._fail(req, status_of(e), str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug of ours: the client still gets an answer
            self.log_error("%s %s: %r", self.command, self.path, e)
            if getattr(self.server, "verbose", False):
                import traceback

                traceback.print_exc()
            self._fail(req, 500, f"{type(e).__name__}: {e}")
        finally:
            if req is not None:
                req.close()
            if getattr(self.server, "verbose", False):
                # per-request wall time (a hijacked stream's is its whole life)
                took = (time.monotonic() - t0) * 1000
                sys.stderr.write(f"cove serve: {self.command} {path} {took:.1f} ms\n")

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        table: list[tuple[str, re.Pattern[str], Handler]] = self.server.routes  # type: ignore[attr-defined]
        for want, pattern, fn in table:
            if want != method:
                continue
            m = pattern.fullmatch(path)
            if m:
                return fn, m.groupdict()
        raise ApiError(404, "page not found")

    def _fail(self, req: Request | None, status: int, message: str) -> None:
        if req is not None and req.started:
            self.close_connection = True  # mid-stream: the only signal left is the close
            return
        if req is None:
            # the body was never read: the connection cannot be reused
            self.close_connection = True
        elif not req.hijacked:
            with contextlib.suppress(Exception):
                req.body.drain()
        if message.startswith("no such "):
            message = "N" + message[1:]  # Docker's wording: "No such container: x"
        with contextlib.suppress(OSError):
            self._send(Response(status, {"message": message}))

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        body = resp.raw or b""
        if resp.status not in (204, 304):
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.common_headers()
        self.end_headers()
        if self.command != "HEAD" and resp.status not in (204, 304):
            self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a followed log or an attach never holds up shutdown
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request is not an error of ours."""
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, BrokenPipeError)) and not self.verbose:
            return
        super().handle_error(request, client_address)

    def __init__(self, root: str, sock: socket.socket, verbose: bool) -> None:
        super().__init__("", _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.root = root
        self.verbose = verbose
        self.routes = _routes()


def _activated() -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS/LISTEN_PID, sd_listen_fds(3)): fd 3."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    if count < 1:
        return None
    sock = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    return sock


def socket_path(host: str) -> str:
    if not host.startswith("unix://"):
        raise InvalidSpec(f"unsupported host {host!r}: only unix:///path is served")
    path = host.removeprefix("unix://")
    if not path.startswith("/"):
        raise InvalidSpec(f"invalid host {host!r}: the socket path must be absolute")
    return path


def _group_id(group: str | None) -> int:
    """The socket's group: its members reach the API, which is root-equivalent. Docker's
    default ``docker`` is used if it exists; a named group must exist."""
    if group is None:
        try:
            return grp.getgrnam(DEFAULT_GROUP).gr_gid
        except KeyError:
            return 0
    try:
        return grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
    except KeyError as e:
        raise NotFound(f"group {group} not found") from e


def _listen(path: str, gid: int) -> socket.socket:
    with contextlib.suppress(FileExistsError):
        os.makedirs(os.path.dirname(path), 0o755)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket from a server that died
        else:
            raise Conflict(f"another server is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # nobody connects between bind and chmod
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    # invariant: root:GROUP 0660, as dockerd's socket; connecting needs write access
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def serve(
    root: str, host: str = DEFAULT_HOST, group: str | None = None, verbose: bool = False
) -> int:
    """Serve until SIGTERM or SIGINT; containers started meanwhile keep running."""
    from cove.api import forkserver

    sock = _activated()
    # first, while this process has one thread and no socket of its own: the helper that
    # forks the starts, execs and cps (a fork from the threaded server could inherit a held
    # lock); it closes the activated socket, which is the server's alone
    helper = forkserver.ForkServer(verbose)
    helper.fork(close=(sock.fileno(),) if sock is not None else ())
    forkserver.install(helper)
    path = None
    if sock is None:
        path = socket_path(host)
        sock = _listen(path, _group_id(group))
    server = _Server(root, sock, verbose)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = path or f"fd {sock.fileno()} (socket activation)"
    sys.stderr.write(f"cove serve: API {API_VERSION} listening on {where}\n")
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        forkserver.install(None)
        helper.close()
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0
