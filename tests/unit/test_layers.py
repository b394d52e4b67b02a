"""Layer unpacking logic without root: containment, replacement, metadata order."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from helpers import TarBuilder

from cove.errors import CorruptContent, UnsafeArchive
from cove.image.layers import clean_name, unpack_stream
from cove.image.streams import Hasher, TeeReader, decompressor, detect_compression


def unpack(tb: TarBuilder, dest: Path) -> None:
    unpack_stream(io.BytesIO(tb.bytes()), str(dest), "test", privileged=False)


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("/etc/x", "etc/x"),
        ("a/../b", "b"),
        ("./", ""),
        ("/", ""),
        ("a/./b/..", "a"),
    ],
)
def test_clean_name(name: str, want: str) -> None:
    assert clean_name(name) == want


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "./../x"])
def test_clean_name_refuses_escape(name: str) -> None:
    with pytest.raises(UnsafeArchive, match="outside the rootfs"):
        clean_name(name)


def test_links_resolve_inside_root(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    tb = TarBuilder().symlink("up", "../../..").file("up/x", b"1")
    tb.symlink("abs", str(outside)).file("abs/y", b"2").dir("d").symlink("d/loop", "../d")
    tb.file("d/loop/loop/z", b"3")
    unpack(tb, out)
    assert (out / "x").read_bytes() == b"1"
    assert (out / str(outside)[1:] / "y").read_bytes() == b"2"
    assert (out / "d" / "z").read_bytes() == b"3"
    assert list(outside.iterdir()) == []


def test_later_entries_replace_earlier(tmp_path: Path) -> None:
    tb = TarBuilder().file("f", b"old").dir("d").file("d/inner", b"i")
    tb.file("d", b"now a file").dir("f").file("f/x", b"x").symlink("s", "f").file("s", b"plain")
    unpack(tb, tmp_path)
    assert (tmp_path / "d").read_bytes() == b"now a file"
    assert (tmp_path / "f" / "x").read_bytes() == b"x"
    assert not (tmp_path / "s").is_symlink() and (tmp_path / "s").read_bytes() == b"plain"


def test_restrictive_directory_modes_applied_last(tmp_path: Path) -> None:
    tb = TarBuilder().dir("ro", 0o555).file("ro/f", b"x", 0o400)
    unpack(tb, tmp_path)
    assert (tmp_path / "ro").stat().st_mode & 0o777 == 0o555
    assert (tmp_path / "ro" / "f").stat().st_mode & 0o777 == 0o400
    assert (tmp_path / "ro").stat().st_mtime == 1_700_000_000
    os.chmod(tmp_path / "ro", 0o755)


def test_hardlink_to_missing_target(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="not in the layer"):
        unpack(TarBuilder().hardlink("h", "nope"), tmp_path)


def test_truncated_tar(tmp_path: Path) -> None:
    data = TarBuilder().file("f", b"x" * 5000).bytes()
    with pytest.raises(CorruptContent):
        unpack_stream(io.BytesIO(data[:2000]), str(tmp_path), "t", privileged=False)


def test_decompressors_and_tee() -> None:
    import gzip
    import lzma

    payload = b"hello" * 1000
    for blob in (gzip.compress(payload), lzma.compress(payload), payload):
        h = Hasher()
        comp = detect_compression(blob[:8])
        reader = TeeReader(decompressor(io.BytesIO(blob), comp, "t"), [h])
        assert reader.read(-1) == payload
        assert reader.count == len(payload)
    with pytest.raises(CorruptContent, match="truncated"):
        decompressor(io.BytesIO(gzip.compress(payload)[:20]), "gzip", "t").read(-1)


def test_directory_replaced_by_symlink_keeps_metadata_off_the_target(tmp_path: Path) -> None:
    tb = TarBuilder().dir("target", 0o755).dir("d/e", 0o700).symlink("d", "target")
    unpack(tb, tmp_path)
    assert (tmp_path / "d").is_symlink()
    assert (tmp_path / "target").stat().st_mode & 0o777 == 0o755
