"""A hostile registry against cove's registry client: credentials sent where they do not
belong (an upload ``Location`` on another port, a plain-HTTP token realm), unbounded
responses (a 100 MiB manifest, config or token), digests cove cannot verify.

Every registry here is on 127.0.0.1: a small ``http.server`` the test scripts
(tests/helpers.py) or Debian's docker-registry (tests/registries.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import helpers as hostile
import pytest
from helpers import CoveRunner, FakeServer, Reply, reply, serve_image, stream, tiny_image
from registries import ProcessCleanup, Registry, TokenServer, require_registry, start_token

USER, PASSWORD = "tester", "s3cret-pw"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
HUNDRED_MIB = 100 << 20


@pytest.fixture
def fake_servers() -> Iterator[Callable[[Reply], FakeServer]]:
    with hostile.fake_servers() as start:
        yield start


def write_auth(root: Path, host: str) -> None:
    """Credentials for ``host`` in the root's auth file, as ``cove login`` stores them."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (root / "auth.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    (root / "auth.json").chmod(0o600)


def one_line_error(proc: object) -> str:
    err = str(getattr(proc, "stderr", "")).strip()
    assert getattr(proc, "returncode", 0) != 0
    assert err.startswith("Error: ") and "\n" not in err, err
    return err


# -- credentials ---------------------------------------------------------------------------


def test_upload_location_on_another_port_gets_no_credentials(
    cove: CoveRunner, cove_root: Path, alpine: str,
    fake_servers: Callable[[Reply], FakeServer],
) -> None:  # fmt: skip
    """The registry (basic auth) starts each blob upload with a ``Location`` on another
    port: the upload goes there without the registry's credentials (as Docker's client, whose
    authorizer only answers for the host it pinged), and the push still succeeds."""
    uploads = fake_servers(lambda h: reply(h, 201, headers={"Docker-Content-Digest": "x"}))

    def registry(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization") != BASIC:
            reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                  {"WWW-Authenticate": 'Basic realm="fake"'})  # fmt: skip
        elif h.command == "HEAD":
            reply(h, 404)
        elif h.command == "POST" and "/blobs/uploads/" in h.path:
            reply(h, 202, headers={"Location": f"http://{uploads.host}/upload/1?state=x"})
        elif h.command == "PUT" and "/manifests/" in h.path:
            reply(h, 201)
        else:
            reply(h, 404)

    reg = fake_servers(registry)
    write_auth(cove_root, reg.host)
    ref = f"{reg.host}/lib/alpine:1"
    cove("tag", "alpine:3.20", ref)
    cove("push", "--tls-verify=false", ref)
    puts = uploads.requests("PUT")
    assert len(puts) == 2, puts  # the layer and the config went to the other port ...
    assert all("Authorization" not in s.headers for s in puts), puts  # ... without credentials
    # the registry itself did get them (the positive side of the same push)
    assert any(s.headers.get("Authorization") == BASIC for s in reg.requests("PUT"))


def test_plain_http_token_realm_of_a_secure_registry_is_refused(
    cove: CoveRunner, cove_root: Path, tmp_path: Path, registry_proc_cleanup: ProcessCleanup,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """An HTTPS registry whose bearer realm is ``http://``: the password would cross the
    network in the clear; cove refuses before sending anything to the realm."""
    require_registry()
    reg, tokens = start_token(tmp_path / "reg", tls=True)
    registry_proc_cleanup.add(tokens)
    registry_proc_cleanup.add(reg)
    assert reg.ca_file and tokens.url.startswith("http://")
    monkeypatch.setenv("COVE_CA_FILE", reg.ca_file)  # the registry itself is trusted
    write_auth(cove_root, reg.host)
    pulled = cove("pull", f"{reg.host}/lib/alpine:1", check=False)
    err = one_line_error(pulled)
    assert "http://" in err and "realm" in err, err
    assert tokens.issued == 0 and tokens.rejected == 0 and tokens.grants == []
    login = cove("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n",
                 check=False)  # fmt: skip
    assert "realm" in one_line_error(login)
    assert tokens.issued == 0 and tokens.rejected == 0


# -- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["manifest", "manifest-undeclared", "config", "token"])
def test_oversized_documents_are_refused(
    cove: CoveRunner, fake_servers: Callable[[Reply], FakeServer], what: str
) -> None:
    """100 MiB where a small JSON document belongs (streamed, with and without a
    Content-Length): cove stops reading at its limit (4 MiB manifests, 8 MiB configs,
    1 MiB token responses) with a one-line error."""
    img = tiny_image()
    server: FakeServer

    def app(h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if what == "token" and path == "/token":
            stream(server, h, HUNDRED_MIB, content_type="application/json")
        elif what == "token" and h.headers.get("Authorization") is None:
            reply(
                h,
                401,
                headers={
                    "WWW-Authenticate": f'Bearer realm="http://{server.host}/token",service="x"'
                },
            )
        elif what.startswith("manifest") and "/manifests/" in path:
            stream(server, h, HUNDRED_MIB, declare=what == "manifest",
                   content_type="application/vnd.oci.image.manifest.v1+json")  # fmt: skip
        elif what == "config" and path.endswith(img.config_digest):
            stream(server, h, HUNDRED_MIB)
        elif not serve_image(img, h):
            reply(h, 404)

    server = fake_servers(app)
    proc = cove("pull", "--tls-verify=false", f"{server.host}/big/doc:1", check=False)
    err = one_line_error(proc)
    limit = {"token": "1 MiB", "config": "8 MiB"}.get(what, "4 MiB")
    assert "larger than" in err and limit in err, err
    assert server.sent < HUNDRED_MIB  # it hung up rather than reading everything
    assert cove("images", "-q").stdout == ""


# -- digests -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["pin-sha384", "pin-md5", "stated-sha384"])
def test_unverifiable_digest_is_refused(
    cove: CoveRunner, fake_servers: Callable[[Reply], FakeServer], variant: str
) -> None:
    """A digest cove cannot compute (anything but sha256/sha512) would verify nothing:
    pinning one, or a registry stating one, is refused rather than trusted."""
    img = tiny_image()
    stated = "sha384:" + "ab" * 48 if variant == "stated-sha384" else None
    server = fake_servers(lambda h: serve_image(img, h, digest_header=stated) or reply(h, 404))
    target = {"pin-sha384": "@sha384:" + "cd" * 48, "pin-md5": "@md5:" + "ef" * 16,
              "stated-sha384": ":1"}[variant]  # fmt: skip
    proc = cove("pull", "--tls-verify=false", f"{server.host}/lib/tiny{target}", check=False)
    err = one_line_error(proc)
    assert "unsupported digest algorithm" in err, err
    assert cove("images", "-q").stdout == ""


def test_sha512_pin_is_verified(
    cove: CoveRunner, fake_servers: Callable[[Reply], FakeServer]
) -> None:
    """Positive control for the digests: a sha512 pin is computed and checked, both ways."""
    import hashlib

    img = tiny_image()
    server = fake_servers(lambda h: serve_image(img, h) or reply(h, 404))
    good = "sha512:" + hashlib.sha512(img.manifest).hexdigest()
    got = cove("pull", "-q", "--tls-verify=false", f"{server.host}/lib/tiny@{good}")
    assert got.stdout.strip() == img.config_digest
    bad = cove("pull", "--tls-verify=false", f"{server.host}/lib/tiny@sha512:{'0' * 128}",
               check=False)  # fmt: skip
    assert "does not match" in one_line_error(bad)


# -- positive control ------------------------------------------------------------------------


def test_pull_and_push_with_auth_still_work(
    cove: CoveRunner, alpine: str, token_registry: tuple[Registry, TokenServer]
) -> None:
    """A plain-HTTP registry the user marked insecure (--tls-verify=false on localhost) with
    a plain-HTTP token realm: login, push and pull with credentials work as before."""
    reg, tokens = token_registry
    assert reg.password
    cove("login", "--tls-verify=false", "-u", USER, "--password-stdin", reg.host,
         input=reg.password + "\n")  # fmt: skip
    ref = f"{reg.host}/lib/alpine:3.20"
    cove("tag", "alpine:3.20", ref)
    digest = cove("push", "-q", "--tls-verify=false", ref).stdout.strip()
    assert digest.startswith("sha256:")
    cove("rmi", ref, "alpine:3.20")
    assert cove("pull", "-q", "--tls-verify=false", ref).stdout.strip() == alpine
    assert tokens.issued > 0
