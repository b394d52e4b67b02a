"""Pull and unpack as a pipeline (issue 20): the blob is read, inflated and unpacked in
their own threads and files are made by worker threads, yet the tree is what a one-at-a-time
unpack makes; every layer is checked against its digest and diff id; a bad layer is refused
and leaves the store as it was.

Registries here are tests/helpers.py's FakeServer on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import stat
import tarfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from helpers import (
    CoveRunner,
    FakeServer,
    Reply,
    TarBuilder,
    TinyImage,
    fake_servers,
    layered_image,
    reply,
    serve_image,
    sha256_digest,
    tree_listing,
)

from cove.image.layers import LayerStats, unpack_stream
from cove.image.store import layer_figures

MTIME = 1_700_000_000


@pytest.fixture
def servers() -> Iterator[Callable[[Reply], FakeServer]]:
    with fake_servers() as start:
        yield start


def unpack(data: bytes, dest: Path, workers: int) -> LayerStats:
    """``data`` unpacked into the new directory ``dest`` as a layer is."""
    dest.mkdir()
    return unpack_stream(io.BytesIO(data), str(dest), "test", workers=workers,
                         fresh=workers > 0)  # fmt: skip


def comparable(rows: list[tuple[object, ...]], named: set[str]) -> list[tuple[object, ...]]:
    """Rows without the mtime of directories the tar does not name (made as parents, now)."""
    return [(r[0], r[1], r[2], r[3], r[4] if r[0] in named else None, *r[5:]) for r in rows]


def busy_layer(seed: int, *, replace: bool = True) -> TarBuilder:
    """Many small files across directories (work for every worker), a file bigger than the
    hand-off limit, one with a 1 MiB hole, a symlinked directory written through, and
    entries that replace earlier ones."""
    rnd = random.Random(seed)
    tb = TarBuilder().dir("srv", mode=0o750, uid=7, gid=8)
    for i in range(40):
        tb.dir(f"srv/d{i}", mode=0o755)
        for j in range(25):
            tb.file(f"srv/d{i}/f{j}", rnd.randbytes(rnd.randrange(0, 9000)),
                    mode=0o640, uid=i, gid=j)  # fmt: skip
    tb.file("srv/big", rnd.randbytes(9 << 20))
    tb.file("srv/sparse", b"head" + bytes((1 << 20) * 2) + b"tail")
    tb.symlink("srv/via", "d3")
    tb.file("srv/via/through-link", b"written in srv/d3\n")
    tb.hardlink("srv/hard", "srv/d6/f6")
    if not replace:
        return tb.file("srv/.wh.gone")  # a whiteout: a new 0/0 device, with no mtime of its own
    for k in range(300):  # a name again right after a worker was handed it
        tb.file(f"srv/twice{k}", b"first" * 900).file(f"srv/twice{k}", b"second\n", mode=0o600)
    tb.file("srv/d1/f1", b"the later entry wins\n", mode=0o600)
    tb.dir("srv/d2/f2", mode=0o711)  # a file replaced by a directory
    tb.file("srv/d2/f2/inside", b"x")
    tb.symlink("srv/d4", "d5")  # a directory (and its files) replaced by a symlink
    tb.dir("srv/locked", mode=0o500)
    tb.file("srv/locked/still-written", b"modes apply last\n")
    return tb


def test_parallel_unpack_makes_the_same_tree(tmp_path: Path) -> None:
    data = busy_layer(1).bytes()
    entries = len(tarfile.open(fileobj=io.BytesIO(data)).getmembers())
    trees = {}
    for workers in (0, 3):
        assert unpack(data, tmp_path / f"w{workers}", workers).entries == entries
        trees[workers] = tree_listing(tmp_path / f"w{workers}")
    assert len(trees[0]) > 1000 and trees[0] == trees[3]
    # and that tree is the right one (not merely the same mistake twice)
    got = tmp_path / "w3" / "srv"
    assert (got / "d1" / "f1").read_bytes() == b"the later entry wins\n"
    assert {(got / f"twice{k}").read_bytes() for k in range(300)} == {b"second\n"}
    assert stat.S_IMODE((got / "d1" / "f1").stat().st_mode) == 0o600
    assert (got / "d3" / "through-link").read_bytes() == b"written in srv/d3\n"
    assert (got / "d2" / "f2").is_dir() and (got / "d2" / "f2" / "inside").read_bytes() == b"x"
    assert os.readlink(got / "d4") == "d5"
    assert os.path.samefile(got / "hard", got / "d6" / "f6")
    st = (got / "d9" / "f7").stat()
    assert (st.st_uid, st.st_gid, st.st_mtime) == (9, 7, MTIME)
    assert (got / "big").stat().st_size == 9 << 20
    sparse = got / "sparse"
    assert sparse.read_bytes() == b"head" + bytes(2 << 20) + b"tail"
    assert stat.S_IMODE((got / "locked").stat().st_mode) == 0o500
    assert (got / "locked" / "still-written").read_bytes() == b"modes apply last\n"
    srv = got.stat()
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid) == (0o750, 7, 8)


def test_unpack_counts_what_a_walk_finds(tmp_path: Path) -> None:
    """The figures the writer counts as it goes are a walk's (cove system check compares
    them); where it cannot tell (a name replaced), it says so and the walk is used."""
    plain = unpack(busy_layer(3, replace=False).bytes(), tmp_path / "plain", workers=3)
    assert plain.disk is not None and plain.disk == layer_figures(str(tmp_path / "plain"))
    assert plain.disk[0] > 1000
    replaced = unpack(busy_layer(3).bytes(), tmp_path / "replaced", workers=3)
    assert replaced.disk is None


def _layers(root: Path, img: TinyImage) -> list[Path]:
    config = json.loads(img.blobs[img.config_digest])
    return [root / "layers" / d.split(":")[1] for d in config["rootfs"]["diff_ids"]]


def _three_layers(alpine_tar: Path) -> list[bytes]:
    base = gzip.decompress(alpine_tar.read_bytes())
    second = (busy_layer(2).dir("etc/app").file("etc/app/old.conf", b"old\n")
              .file("etc/app/keep.conf", b"keep\n").file("etc/motd", b"first\n")
              .bytes())  # fmt: skip
    third = (TarBuilder().file("etc/.wh.motd").dir("etc/app").file("etc/app/.wh..wh..opq")
             .file("etc/app/new.conf", b"new\n").file("srv/d7/f7", b"replaced above\n")
             .bytes())  # fmt: skip
    return [base, second, third]


def test_pull_multi_layer_image_whiteouts_apply_in_order(
    cove: CoveRunner, cove_root: Path, alpine_tar: Path,
    servers: Callable[[Reply], FakeServer], tmp_path: Path,
) -> None:  # fmt: skip
    tars = _three_layers(alpine_tar)
    img = layered_image(tars)
    server = servers(lambda h: serve_image(img, h) or reply(h, 404))
    ref = f"{server.host}/pipe/image:1"
    cove("pull", "-q", "--tls-verify=false", ref)
    # each layer's directory is what a one-at-a-time unpack of its tar makes
    for tar, layer in zip(tars, _layers(cove_root, img), strict=True):
        serial = tmp_path / f"serial-{layer.name[:12]}"
        unpack(tar, serial, workers=0)
        named = {os.path.normpath(m.name) for m in tarfile.open(fileobj=io.BytesIO(tar))}
        assert comparable(tree_listing(layer), named) == comparable(tree_listing(serial), named)
    # the merged view: the third layer's whiteouts hide the second's files
    out = cove("run", "--rm", "--network", "none", ref, "sh", "-c",
               "ls /etc/app; test -e /etc/motd || echo no-motd; cat /srv/d7/f7 /srv/d1/f1;"
               " wc -c < /srv/big").stdout.split()  # fmt: skip
    assert out == ["new.conf", "no-motd", "replaced", "above", "the", "later", "entry", "wins",
                   str(9 << 20)]  # fmt: skip


@pytest.mark.parametrize("fault", ["diff-id", "blob-bytes"])
def test_bad_layer_is_refused_and_the_store_stays_as_it_was(
    cove: CoveRunner, cove_root: Path, alpine_tar: Path,
    servers: Callable[[Reply], FakeServer], fault: str,
) -> None:  # fmt: skip
    tars = _three_layers(alpine_tar)
    good = layered_image(tars)
    if fault == "diff-id":
        bad = layered_image(
            tars, diff_ids=[sha256_digest(tars[0]), sha256_digest(tars[2]), sha256_digest(tars[2])]
        )
        want = "does not match diff id"
    else:
        bad = layered_image(tars)
        blob = sha256_digest(gzip.compress(tars[1], mtime=0, compresslevel=1))
        flipped = bytearray(bad.blobs[blob])
        flipped[len(flipped) // 2] ^= 0xFF
        bad.blobs[blob] = bytes(flipped)  # the manifest still names the good digest
        want = f"blob {blob} does not match its digest"
    images = {"/bad/": bad, "/good/": good}

    def app(h: BaseHTTPRequestHandler) -> None:
        for prefix, img in images.items():
            if h.path.startswith(f"/v2{prefix}") or h.path == "/v2/":
                if serve_image(img, h):
                    return
        reply(h, 404)

    server = servers(app)
    proc = cove("pull", "--tls-verify=false", f"{server.host}/bad/image:1", check=False)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("Error: ") and want in err, proc.stderr
    # nothing of it stays: no image, no blob, no layer, no temp file or directory
    assert cove("images", "-q").stdout == ""
    assert not list((cove_root / "images" / "blobs" / "sha256").iterdir())
    assert not list((cove_root / "layers").glob("*"))
    assert not list((cove_root / "tmp").glob("*"))
    # positive control: the good image, from the same server, pulls and runs
    cove("pull", "-q", "--tls-verify=false", f"{server.host}/good/image:1")
    for layer in _layers(cove_root, good):
        assert layer.is_dir()
    out = cove("run", "--rm", "--network", "none", f"{server.host}/good/image:1", "cat",
               "/etc/app/new.conf").stdout  # fmt: skip
    assert out == "new\n"
