"""Hostile and unusual layer content: nothing is written outside the layer, ever."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CoveRunner, TarBuilder, oci_layout


@pytest.fixture
def sentinel() -> Iterator[Path]:
    """A fresh host directory that hostile archives aim at; it must stay empty."""
    path = Path("/tmp") / f"cove-sentinel-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    (path / "victim").write_text("host data\n")
    try:
        yield path
    finally:
        for p in sorted(path.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
        path.rmdir()


def assert_untouched(sentinel: Path) -> None:
    assert sorted(p.name for p in sentinel.iterdir()) == ["victim"]
    victim = sentinel / "victim"
    assert victim.read_text() == "host data\n" and victim.stat().st_nlink == 1


def assert_store_clean(cove: CoveRunner, root: Path) -> None:
    assert cove("images", "-q").stdout.strip() == ""
    assert list((root / "images" / "blobs" / "sha256").iterdir()) == []
    assert list((root / "layers").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []


def import_tar(
    cove: CoveRunner, tmp_path: Path, tb: TarBuilder, name: str = "t:1"
) -> subprocess.CompletedProcess[str]:
    return cove("import", str(tb.write(tmp_path / "in.tar")), name, check=False)


def layer_of(cove: CoveRunner, name: str = "t:1") -> Path:
    [layer] = cove("image", "unpack", name).stdout.split()
    return Path(layer)


def test_dotdot_entry_is_refused(
    cove: CoveRunner, cove_root: Path, tmp_path: Path, sentinel: Path
) -> None:
    depth = "../" * 20
    tb = TarBuilder().file("ok", b"fine").file(f"{depth}{str(sentinel)[1:]}/escape", b"evil")
    proc = import_tar(cove, tmp_path, tb)
    assert proc.returncode == 1
    assert "points outside the rootfs" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert_untouched(sentinel)
    assert_store_clean(cove, cove_root)


def test_absolute_path_is_contained(cove: CoveRunner, tmp_path: Path, sentinel: Path) -> None:
    tb = TarBuilder().file(f"{sentinel}/abs", b"contained")
    assert import_tar(cove, tmp_path, tb).returncode == 0
    layer = layer_of(cove)
    assert (layer / str(sentinel)[1:] / "abs").read_bytes() == b"contained"
    assert_untouched(sentinel)


def test_symlinked_parent_is_contained(cove: CoveRunner, tmp_path: Path, sentinel: Path) -> None:
    rel = str(sentinel)[1:]
    tb = (
        TarBuilder()
        .symlink("a", "/")
        .file(f"a/{rel}/x", b"via root link")
        .symlink("b", "../../../../..")
        .file(f"b/{rel}/y", b"via dotdot link")
        .symlink("c", str(sentinel))
        .file("c/z", b"via absolute link")
        .file("c/victim", b"overwrite?")
    )
    assert import_tar(cove, tmp_path, tb).returncode == 0
    layer = layer_of(cove)
    assert (layer / rel / "x").read_bytes() == b"via root link"
    assert (layer / rel / "y").read_bytes() == b"via dotdot link"
    assert (layer / rel / "z").read_bytes() == b"via absolute link"
    assert (layer / rel / "victim").read_bytes() == b"overwrite?"
    assert os.readlink(layer / "a") == "/"
    assert_untouched(sentinel)


def test_hardlink_to_host_file_is_refused_or_contained(
    cove: CoveRunner, cove_root: Path, tmp_path: Path, sentinel: Path
) -> None:
    passwd = Path("/etc/passwd")
    before = (passwd.stat().st_nlink, hashlib.sha256(passwd.read_bytes()).digest())
    tb = TarBuilder().hardlink("pw", "/etc/passwd")
    proc = import_tar(cove, tmp_path, tb)
    assert proc.returncode == 1
    assert "is not in the layer" in proc.stderr
    assert_store_clean(cove, cove_root)
    tb = TarBuilder().hardlink("v", f"{sentinel}/victim")
    assert import_tar(cove, tmp_path, tb).returncode == 1
    # with the target inside the archive, the link is made to the layer's own copy
    tb = (
        TarBuilder()
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .hardlink("pw", "/etc/passwd")
    )
    assert import_tar(cove, tmp_path, tb).returncode == 0
    layer = layer_of(cove)
    assert (layer / "pw").stat().st_ino == (layer / "etc" / "passwd").stat().st_ino
    assert (layer / "pw").stat().st_nlink == 2
    assert (passwd.stat().st_nlink, hashlib.sha256(passwd.read_bytes()).digest()) == before
    assert_untouched(sentinel)


def test_symlink_then_hardlink_through_it(cove: CoveRunner, tmp_path: Path, sentinel: Path) -> None:
    tb = TarBuilder().symlink("s", str(sentinel)).hardlink("h", "s/victim")
    assert import_tar(cove, tmp_path, tb).returncode == 1
    assert_untouched(sentinel)


def test_metadata_devices_xattrs_hardlinks(cove: CoveRunner, tmp_path: Path) -> None:
    tb = TarBuilder().dir("etc", 0o755).dir("locked", 0o500, uid=7, gid=8)
    tb.file("locked/f", b"x", 0o4755, uid=1000, gid=1001)
    tb.file("etc/shadow", b"s", 0o640, uid=0, gid=42)
    tb.hardlink("etc/shadow-", "etc/shadow")
    tb.chardev("dev/null", 1, 3)
    info = tb._info("attr", b"0", 0o644, size=1)
    info.pax_headers = {
        "SCHILY.xattr.user.cove": "yes",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",  # must be dropped
    }
    tb.tar.addfile(info, io.BytesIO(b"a"))
    assert import_tar(cove, tmp_path, tb).returncode == 0
    layer = layer_of(cove)
    st = (layer / "locked" / "f").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)
    st = (layer / "locked").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o500)
    assert st.st_mtime == 1_700_000_000
    assert (layer / "etc" / "shadow-").stat().st_ino == (layer / "etc" / "shadow").stat().st_ino
    dev = (layer / "dev" / "null").stat()
    assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1 and os.minor(dev.st_rdev) == 3
    assert os.getxattr(layer / "attr", "user.cove") == b"yes"
    assert "trusted.overlay.redirect" not in os.listxattr(layer / "attr")


def test_sparse_and_large_file(cove: CoveRunner, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    with open(big, "wb") as f:
        f.seek(9 << 30)  # beyond ustar's 8 GiB size field
        f.write(b"tail")
        f.seek(1 << 20)
        f.write(b"head")
    tarball = tmp_path / "sparse.tar"
    tar = ["tar", "--sparse", "--format=posix", "-C", str(src), "-cf", str(tarball), "big"]
    subprocess.run(tar, check=True)
    assert tarball.stat().st_size < 1 << 20
    cove("import", str(tarball), "t:1")
    out = layer_of(cove) / "big"
    st = out.stat()
    assert st.st_size == (9 << 30) + 4
    assert st.st_blocks * 512 < 64 << 20, "holes were written out as data"
    with open(out, "rb") as f:
        f.seek(1 << 20)
        assert f.read(4) == b"head"
        f.seek(9 << 30)
        assert f.read() == b"tail"


def test_whiteouts_hide_lower_files_through_overlayfs(cove: CoveRunner, tmp_path: Path) -> None:
    lower = (
        TarBuilder()
        .file("keep", b"k")
        .file("gone", b"g")
        .dir("d")
        .file("d/old1", b"1")
        .file("d/old2", b"2")
        .bytes()
    )
    upper = TarBuilder().file(".wh.gone").dir("d").file("d/.wh..wh..opq").file("d/new", b"n")
    oci_layout(tmp_path / "layout", [lower, upper.bytes()], "example.com/wh:1")
    cove("load", "-i", str(tmp_path / "layout"))
    bottom, top = cove("image", "unpack", "example.com/wh:1").stdout.split()
    gone = Path(top) / "gone"
    assert stat.S_ISCHR(gone.lstat().st_mode) and gone.lstat().st_rdev == 0
    assert os.getxattr(Path(top) / "d", "trusted.overlay.opaque") == b"y"
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={top}:{bottom}", str(merged)],
        check=True,
    )
    try:
        assert sorted(os.listdir(merged)) == ["d", "keep"]
        assert os.listdir(merged / "d") == ["new"]
    finally:
        subprocess.run(["umount", str(merged)], check=True)
