"""Corrupt, truncated and concurrent input: the store stays consistent and verifiable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from helpers import CoveRunner, cove_argv

from cove.image.layers import unpack_stream


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def blob_path(root: Path, digest: str) -> Path:
    """A blob in a cove root, or in an OCI layout when ``root`` is one."""
    base = root if (root / "oci-layout").exists() else root / "images"
    return base / "blobs" / "sha256" / digest.split(":")[1]


def assert_consistent(cove: CoveRunner, root: Path, expect_images: int) -> None:
    assert len(cove("images", "-q").stdout.split()) == expect_images
    assert list((root / "tmp").iterdir()) == []
    for line in cove("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
        info = json.loads(cove("image", "inspect", line).stdout)[0]
        for layer in info["RootFS"]["Layers"]:
            assert (root / "layers" / layer.split(":")[1]).is_dir()


def test_corrupt_blob_rejected_at_load(
    cove: CoveRunner, alpine: str, cove_root: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "a.tar"
    cove("save", "--format", "oci-archive", "-o", str(archive), "alpine:3.20")
    cove("rmi", "alpine:3.20")
    layout = tmp_path / "layout"
    layout.mkdir()
    # cove's own unpacker (every path resolved inside ``layout``), not extractall(filter=):
    # Debian 12's Python 3.11.2 predates tarfile's extraction filters (3.11.4)
    with archive.open("rb") as f:
        unpack_stream(f, str(layout), "the saved archive", whiteouts=False)
    info_manifest = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads(blob_path(layout, info_manifest["digest"]).read_text())
    layer_digest = manifest["layers"][0]["digest"]
    flip_byte(blob_path(layout, layer_digest), 100)
    proc = cove("load", "-i", str(layout), check=False)
    assert proc.returncode == 1 and layer_digest in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert_consistent(cove, cove_root, 0)
    assert list((cove_root / "images" / "blobs" / "sha256").iterdir()) == []
    # and as an archive (a tar of that layout), too
    bad_tar = tmp_path / "bad.tar"
    with tarfile.open(bad_tar, "w") as t:
        for p in sorted(layout.rglob("*")):
            t.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    proc = cove("load", "-i", str(bad_tar), check=False)
    assert proc.returncode == 1 and "does not match" in proc.stderr
    assert_consistent(cove, cove_root, 0)


def test_corrupt_blob_rejected_at_read(
    cove: CoveRunner, alpine: str, cove_root: Path, tmp_path: Path
) -> None:
    info = json.loads(cove("image", "inspect", "alpine:3.20").stdout)[0]
    manifest = json.loads(blob_path(cove_root, info["Descriptor"]["digest"]).read_text())
    layer = manifest["layers"][0]["digest"]
    flip_byte(blob_path(cove_root, layer))
    out = tmp_path / "out.tar"
    proc = cove("save", "-o", str(out), "alpine:3.20", check=False)
    assert proc.returncode == 1 and f"blob {layer} does not match its digest" in proc.stderr
    assert not out.exists() and list(tmp_path.glob(".cove-*")) == []
    shutil.rmtree(cove_root / "layers" / info["RootFS"]["Layers"][0].split(":")[1])
    proc = cove("image", "unpack", "alpine:3.20", check=False)
    assert proc.returncode == 1 and layer in proc.stderr
    assert list((cove_root / "tmp").iterdir()) == []
    flip_byte(blob_path(cove_root, info["Id"]))
    proc = cove("image", "inspect", "alpine:3.20", check=False)
    assert proc.returncode == 1 and info["Id"] in proc.stderr


def test_truncated_archive_fails_cleanly(
    cove: CoveRunner, alpine: str, cove_root: Path, tmp_path: Path
) -> None:
    for fmt in ("docker-archive", "oci-archive"):
        archive = tmp_path / f"{fmt}.tar"
        cove("save", "--format", fmt, "-o", str(archive), "alpine:3.20")
        data = archive.read_bytes()
        for cut in (len(data) // 2, len(data) * 3 // 4, 700):
            short = tmp_path / "short.tar"
            short.write_bytes(data[:cut])
            cove("rmi", "-f", "alpine:3.20", check=False)
            proc = cove("load", "-i", str(short), check=False)
            assert proc.returncode != 0, (fmt, cut)
            assert proc.stderr.startswith("Error: ") and len(proc.stderr.splitlines()) == 1
            assert "Traceback" not in proc.stderr
            assert_consistent(cove, cove_root, 0)
        cove("load", "-i", str(archive))


def test_truncated_rootfs_import(
    cove: CoveRunner, alpine_tar: Path, cove_root: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.tar.gz"
    short.write_bytes(alpine_tar.read_bytes()[: alpine_tar.stat().st_size // 2])
    proc = cove("import", str(short), "t:1", check=False)
    assert proc.returncode == 1 and "truncated" in proc.stderr, proc.stderr
    assert_consistent(cove, cove_root, 0)
    assert list((cove_root / "layers").iterdir()) == []
    assert list((cove_root / "images" / "blobs" / "sha256").iterdir()) == []


def test_parallel_imports_share_blobs(cove: CoveRunner, alpine_tar: Path, cove_root: Path) -> None:
    procs = [
        subprocess.Popen(
            cove_argv(cove_root, "import", "-c", "CMD sh", str(alpine_tar), f"alpine:p{i}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    tags = sorted(cove("images", "--format", "{{.Tag}}").stdout.split())
    assert tags == [f"p{i}" for i in range(8)]
    layer_blobs = {
        json.loads(cove("image", "inspect", f"alpine:p{i}").stdout)[0]["RootFS"]["Layers"][0]
        for i in range(8)
    }
    assert len(layer_blobs) == 1
    assert len(list((cove_root / "layers").glob("*.json"))) == 1
    # one layer blob plus at most 8 configs and 8 manifests (identical when made in one second)
    assert len(list((cove_root / "images" / "blobs" / "sha256").iterdir())) <= 17
    assert_consistent(cove, cove_root, len(set(cove("images", "-q").stdout.split())))


def test_import_killed_midway_leaves_no_half_image(
    cove: CoveRunner, alpine_tar: Path, cove_root: Path, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        cove_argv(cove_root, "import", str(fifo), "k:1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    data = alpine_tar.read_bytes()
    with open(fifo, "wb") as w:
        w.write(data[: len(data) // 2])
        w.flush()
        time.sleep(0.5)  # let it write part of the blob and the layer
        assert list((cove_root / "tmp").iterdir()), "import should be mid-way"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert cove("images", "-q").stdout.strip() == ""
    assert list((cove_root / "images" / "blobs" / "sha256").iterdir()) == []
    assert list((cove_root / "layers").iterdir()) == []
    # the next mutating command sweeps what the killed one left in tmp/
    cove("import", str(alpine_tar), "k:2")
    cove("image", "prune", "-f")
    assert_consistent(cove, cove_root, 1)
