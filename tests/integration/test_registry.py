"""cove pull/push/login against real registries on 127.0.0.1 (Debian's docker-registry):
plain HTTP, HTTPS with a test CA and basic auth, token auth; skopeo reads what cove pushes
and cove pulls what skopeo pushes; bad bytes, bad passwords and killed pulls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ALPINE_DIR, CoveRunner, cove_argv
from registries import Registry, TokenServer, make_oci_layout, skopeo


def images(cove: CoveRunner) -> str:
    return cove("images", "--digests", "--no-trunc").stdout


def blobs(root: Path) -> set[str]:
    d = root / "images" / "blobs" / "sha256"
    return set(os.listdir(d)) if d.exists() else set()


@pytest.fixture
def certs_d(tls_registry: Registry) -> Iterator[Path]:
    """The test CA where cove looks for it: /etc/cove/certs.d/HOST:PORT/ca.crt."""
    d = Path("/etc/cove/certs.d") / tls_registry.host
    d.mkdir(parents=True, exist_ok=True)
    assert tls_registry.ca_file
    shutil.copy(tls_registry.ca_file, d / "ca.crt")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_plain_roundtrip_and_skopeo_interop(
    cove: CoveRunner, cove_root: Path, alpine: str, plain_registry: Registry, tmp_path: Path
) -> None:
    ref = f"{plain_registry.host}/lib/alpine:3.20"
    cove("tag", "alpine:3.20", ref)
    digest = cove("push", "-q", "--tls-verify=false", ref).stdout.strip()
    assert digest.startswith("sha256:")
    # a second push finds every blob there already
    again = cove("push", "--tls-verify=false", ref)
    assert again.stderr.count("already exists") == 2
    cove("rmi", ref, "alpine:3.20")
    assert cove("images", "-q").stdout == ""
    pulled = cove("pull", "-q", "--tls-verify=false", ref).stdout.strip()
    assert pulled == alpine
    assert digest in images(cove)
    assert cove("run", "--rm", "--network", "none", ref, "cat", "/etc/alpine-release").stdout == (
        "3.20.3\n"
    )
    by_digest = cove(
        "pull", "-q", "--tls-verify=false", f"{plain_registry.host}/lib/alpine@{digest}"
    )
    assert by_digest.stdout.strip() == alpine
    bad_pin = cove("pull", "--tls-verify=false",
                   f"{plain_registry.host}/lib/alpine@sha256:{'0' * 64}", check=False)  # fmt: skip
    assert bad_pin.returncode == 1

    # skopeo reads what cove pushed ...
    info = json.loads(skopeo(tmp_path, "inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    assert info["Digest"] == digest
    skopeo(tmp_path, "copy", "--src-tls-verify=false", f"docker://{ref}",
           f"oci:{tmp_path / 'copied'}:x")  # fmt: skip
    assert (tmp_path / "copied" / "index.json").exists()
    # ... and cove pulls what skopeo pushed
    layout = make_oci_layout(tmp_path / "layout", tag="sk")
    skopeo(tmp_path, "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:sk",
           f"docker://{plain_registry.host}/from/skopeo:1")  # fmt: skip
    got = cove("pull", "-q", "--tls-verify=false", f"{plain_registry.host}/from/skopeo:1")
    assert got.stdout.strip() == layout.config_digest
    assert layout.manifest_digest in images(cove)
    out = cove("run", "--rm", "--network", "none", f"{plain_registry.host}/from/skopeo:1",
               "cat", "/etc/alpine-release").stdout  # fmt: skip
    assert out == "3.20.3\n"

    # cross-repository mount: the blobs are already in lib/alpine
    other = f"{plain_registry.host}/other/alpine:1"
    cove("tag", ref, other)
    mounted = cove("push", "--tls-verify=false", other).stderr
    assert mounted.count("mounted from lib/alpine") == 2

    # plain HTTP needs --tls-verify=false (localhost) or an insecure entry
    refused = cove("pull", ref, check=False)
    assert refused.returncode == 1 and "TLS" in refused.stderr
    remote = cove("pull", "--tls-verify=false", "registry.example.invalid/x:1", check=False)
    assert remote.returncode == 125 and "only honoured for localhost" in remote.stderr


def test_multi_platform_index(
    cove: CoveRunner, alpine: str, plain_registry: Registry, tmp_path: Path
) -> None:
    host = plain_registry.host
    arm_tar = ALPINE_DIR / "alpine-minirootfs-3.20.3-aarch64.tar.gz"
    cove("import", "--platform", "linux/arm64", str(arm_tar), f"{host}/multi/alpine:arm64")
    cove("tag", "alpine:3.20", f"{host}/multi/alpine:amd64")
    manifests = []
    for tag, arch in (("amd64", "amd64"), ("arm64", "arm64")):
        digest = cove(
            "push", "-q", "--tls-verify=false", f"{host}/multi/alpine:{tag}"
        ).stdout.strip()
        with urllib.request.urlopen(urllib.request.Request(
            f"http://{host}/v2/multi/alpine/manifests/{digest}", method="HEAD",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})) as r:  # fmt: skip
            size = int(r.headers["Content-Length"])
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": digest, "size": size,
                          "platform": {"os": "linux", "architecture": arch}})  # fmt: skip
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": manifests}).encode()  # fmt: skip
    req = urllib.request.Request(
        f"http://{host}/v2/multi/alpine/manifests/3.20", data=index, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )  # fmt: skip
    urllib.request.urlopen(req).read()
    cove("rmi", "-f", f"{host}/multi/alpine:amd64", f"{host}/multi/alpine:arm64", "alpine:3.20")
    amd = cove("pull", "-q", "--tls-verify=false", f"{host}/multi/alpine:3.20").stdout.strip()
    assert amd == alpine
    arm = cove("pull", "-q", "--tls-verify=false", "--platform", "linux/arm64",
               f"{host}/multi/alpine:3.20").stdout.strip()  # fmt: skip
    inspected = json.loads(cove("image", "inspect", arm).stdout)[0]
    assert inspected["Architecture"] == "arm64"
    # skopeo copies the whole index cove can read
    skopeo(tmp_path, "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{host}/multi/alpine:3.20", f"docker://{host}/multi/copy:1")  # fmt: skip
    assert cove("pull", "-q", "--tls-verify=false", f"{host}/multi/copy:1").stdout.strip() == amd
    missing = cove("pull", "--tls-verify=false", "--platform", "linux/s390x",
                   f"{host}/multi/alpine:3.20", check=False)  # fmt: skip
    assert missing.returncode == 1 and "no image for linux/s390x" in missing.stderr


def test_tls_and_basic_auth(
    cove: CoveRunner, cove_root: Path, alpine: str, tls_registry: Registry, certs_d: Path
) -> None:
    host = tls_registry.host
    ref = f"{host}/secure/alpine:1"
    cove("tag", "alpine:3.20", ref)
    anon = cove("push", ref, check=False)
    assert anon.returncode == 1 and "authentication required" in anon.stderr
    wrong = cove("login", "-u", "tester", "--password-stdin", host, input="nope\n", check=False)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().count("\n") == 0 and "wrong username or password" in wrong.stderr
    assert not (cove_root / "auth.json").exists()
    ok = cove("login", "-u", "tester", "--password-stdin", host, input=f"{tls_registry.password}\n")
    assert "Login Succeeded" in ok.stdout
    auth_file = cove_root / "auth.json"
    assert oct(auth_file.stat().st_mode & 0o777) == "0o600"
    assert host in json.loads(auth_file.read_text())["auths"]
    digest = cove("push", "-q", ref).stdout.strip()
    cove("rmi", ref, "alpine:3.20")
    assert cove("pull", "-q", ref).stdout.strip() == alpine
    assert digest in images(cove)
    cove("logout", host)
    before = blobs(cove_root)
    cove("rmi", ref)
    denied = cove("pull", ref, check=False)
    assert denied.returncode == 1 and "authentication required" in denied.stderr
    assert cove("images", "-q").stdout == ""
    assert blobs(cove_root) <= before
    # without the CA in certs.d the certificate is not trusted
    shutil.rmtree(certs_d)
    untrusted = cove("pull", ref, check=False)
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stderr


def test_token_auth(
    cove: CoveRunner, alpine: str, token_registry: tuple[Registry, TokenServer]
) -> None:
    reg, tokens = token_registry
    ref = f"{reg.host}/tok/alpine:1"
    cove("tag", "alpine:3.20", ref)
    anon = cove("push", "--tls-verify=false", ref, check=False)
    assert anon.returncode == 1
    bad = cove("login", "--tls-verify=false", "-u", "tester", "--password-stdin", reg.host,
               input="wrong\n", check=False)  # fmt: skip
    assert bad.returncode == 1 and "wrong username or password" in bad.stderr
    cove("login", "--tls-verify=false", "-u", "tester", "--password-stdin", reg.host,
         input=f"{reg.password}\n")  # fmt: skip
    digest = cove("push", "-q", "--tls-verify=false", ref).stdout.strip()
    issued = tokens.issued
    assert issued >= 1
    cove("rmi", ref, "alpine:3.20")
    assert cove("pull", "-q", "--tls-verify=false", ref).stdout.strip() == alpine
    assert digest in images(cove) and tokens.issued > issued


def test_bad_bytes_fail_and_store_nothing(
    cove: CoveRunner, cove_root: Path, alpine: str, plain_registry: Registry,
    flipping_registry: Registry,
) -> None:  # fmt: skip
    cove("tag", "alpine:3.20", f"{plain_registry.host}/flip/alpine:1")
    cove("push", "--tls-verify=false", f"{plain_registry.host}/flip/alpine:1")
    cove("rmi", f"{plain_registry.host}/flip/alpine:1", "alpine:3.20")
    empty_blobs = blobs(cove_root)
    bad = cove("pull", "--tls-verify=false", f"{flipping_registry.host}/flip/alpine:1",
               check=False)  # fmt: skip
    assert bad.returncode == 1
    assert "does not match its digest" in bad.stderr and "sha256:" in bad.stderr
    assert cove("images", "-q").stdout == "" and blobs(cove_root) == empty_blobs
    assert not list((cove_root / "tmp").glob("pull-*.partial"))
    # straight from the registry the same pull works
    cove("pull", "--tls-verify=false", f"{plain_registry.host}/flip/alpine:1")


def test_killed_pull_resumes(
    cove: CoveRunner, cove_root: Path, alpine: str, plain_registry: Registry, tmp_path: Path
) -> None:
    # an image whose second layer is 24 MiB of random bytes (gzip cannot shrink it)
    cove("run", "--name", "big", "--network", "none", "alpine:3.20", "sh", "-c",
         "head -c 25165824 /dev/urandom > /big")  # fmt: skip
    ref = f"{plain_registry.host}/big/image:1"
    cove("commit", "big", ref)
    cove("rm", "big")
    cove("push", "--tls-verify=false", ref)
    image_id = json.loads(cove("image", "inspect", ref).stdout)[0]["Id"]
    cove("rmi", ref, "alpine:3.20")
    env = dict(os.environ, COVE_PULL_KILL_AFTER=str(8 << 20))
    killed = subprocess.run(cove_argv(cove_root, "pull", "--tls-verify=false", ref), env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert list((cove_root / "tmp").glob("pull-*.partial"))
    again = cove("pull", "--tls-verify=false", ref)
    assert "resuming after" in again.stderr
    assert again.stdout.split()[-1] == image_id
    assert cove("run", "--rm", "--network", "none", ref, "sh", "-c",
                "wc -c < /big").stdout.strip() == "25165824"  # fmt: skip
    assert not list((cove_root / "tmp").glob("pull-*.partial"))


def test_registries_conf_search_and_mirror(
    cove: CoveRunner, cove_root: Path, alpine: str, plain_registry: Registry, tmp_path: Path
) -> None:
    host = plain_registry.host
    cove("tag", "alpine:3.20", f"{host}/alpine:3.20")
    cove("tag", "alpine:3.20", f"{host}/team/app:1")
    cove("push", "--tls-verify=false", f"{host}/alpine:3.20")
    cove("push", "--tls-verify=false", f"{host}/team/app:1")
    cove("rmi", "-f", f"{host}/alpine:3.20", f"{host}/team/app:1", "alpine:3.20")
    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'unqualified-search-registries = ["{host}"]\n'
        f'[[registry]]\nlocation = "{host}"\ninsecure = true\n'
        # a registry that does not exist, served by its mirror (the test registry)
        f'[[registry]]\nlocation = "mirrored.invalid"\n'
        f'[[registry.mirror]]\nlocation = "{host}"\n'
    )
    env = dict(os.environ, COVE_REGISTRIES_CONF=str(conf))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cove_argv(cove_root, *args), env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    short = run("pull", "-q", "alpine:3.20")  # an unqualified name: the search list
    assert short.returncode == 0, short.stderr
    assert short.stdout.strip() == alpine
    assert f"{host}/alpine" in images(cove)
    mirrored = run("pull", "-q", "mirrored.invalid/team/app:1")
    assert mirrored.returncode == 0, mirrored.stderr
    assert "mirrored.invalid/team/app" in images(cove)


def test_parallel_pulls_of_one_image(
    cove: CoveRunner, cove_root: Path, alpine: str, plain_registry: Registry
) -> None:
    ref = f"{plain_registry.host}/par/alpine:1"
    cove("tag", "alpine:3.20", ref)
    cove("push", "--tls-verify=false", ref)
    cove("rmi", ref, "alpine:3.20")
    procs = [subprocess.Popen(cove_argv(cove_root, "pull", "-q", "--tls-verify=false", ref),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    assert {out.strip() for out, _ in results} == {alpine}
    digest_pushed = cove("push", "-q", "--tls-verify=false", ref).stdout.strip()
    assert digest_pushed in images(cove)
    bad = cove("push", "--tls-verify=false", ref, f"{plain_registry.host}/x@sha256:{'1' * 64}",
               check=False)  # fmt: skip
    assert bad.returncode == 125 and "digest reference" in bad.stderr
