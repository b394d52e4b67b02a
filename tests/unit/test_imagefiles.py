"""cove.image.files: one file of the merged layer view, symlinks resolved inside the image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cove.errors import InvalidSpec
from cove.image import files as imagefiles
from cove.image.files import read_image_file


def _layers(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        d = tmp_path / f"l{i}"
        (d / "etc").mkdir(parents=True)
        out.append(d)
    return out  # top first


def _read(layers: list[Path], path: str) -> bytes | None:
    return read_image_file([str(p) for p in layers], path)


def test_top_layer_wins_and_dirs_merge(tmp_path: Path) -> None:
    top, low = _layers(tmp_path, 2)
    (low / "etc/passwd").write_text("low")
    (low / "etc/group").write_text("group")
    assert _read([top, low], "etc/passwd") == b"low"
    (top / "etc/passwd").write_text("top")
    assert _read([top, low], "/etc/passwd") == b"top"
    assert _read([top, low], "etc/group") == b"group"  # etc merges down
    assert _read([top, low], "etc/missing") is None
    assert _read([top, low], "etc") is None  # a directory is not a file


def test_symlinks_resolve_in_the_image(tmp_path: Path) -> None:
    top, low = _layers(tmp_path, 2)
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("host")
    (low / "etc/passwd.real").write_text("image")
    (low / "lib").mkdir()
    (top / "lib").symlink_to("/etc")  # a directory symlink in one layer, its target in another
    (top / "etc/passwd").symlink_to("../../../../../lib/passwd.real")
    assert _read([top, low], "etc/passwd") == b"image"
    (top / "etc/abs").symlink_to(host / "passwd")
    (top / "etc/rel").symlink_to("../" * 30 + str(host / "passwd").lstrip("/"))
    (top / "etc/loop").symlink_to("/etc/loop")
    for name in ("abs", "rel", "loop"):
        assert _read([top, low], f"etc/{name}") is None
    (top / "etc/passwd").unlink()
    (top / "etc/passwd").symlink_to("passwd.real/x")  # a file in the middle of a path
    assert _read([top, low], "etc/passwd") is None


def test_etc_symlink_to_host_is_not_followed(tmp_path: Path) -> None:
    (layer,) = _layers(tmp_path, 1)
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("host")
    (layer / "etc").rmdir()
    (layer / "etc").symlink_to(host)
    assert _read([layer], "etc/passwd") is None
    (layer / "tmp").mkdir()
    (layer / "tmp/passwd").write_text("image")
    (layer / "etc").unlink()
    (layer / "etc").symlink_to("../../../tmp")  # ``..`` stops at the image's root
    assert _read([layer], "etc/passwd") == b"image"


def test_fifo_and_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (layer,) = _layers(tmp_path, 1)
    os.mkfifo(layer / "etc/passwd")
    assert _read([layer], "etc/passwd") is None  # returns at once: never opened
    (layer / "etc/group").write_text("x" * 100)
    monkeypatch.setattr(imagefiles, "MAX_SIZE", 10)
    with pytest.raises(InvalidSpec, match="etc/group is larger than"):
        _read([layer], "etc/group")


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root")
def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    top, mid, low = _layers(tmp_path, 3)
    (low / "etc/passwd").write_text("low")
    (low / "etc/group").write_text("low")
    os.mknod(mid / "etc/passwd", 0o600 | 0o020000, 0)  # a 0/0 character device: whiteout
    assert _read([top, mid, low], "etc/passwd") is None
    assert _read([top, mid, low], "etc/group") == b"low"
    os.setxattr(top / "etc", "trusted.overlay.opaque", b"y")
    assert _read([top, mid, low], "etc/group") is None  # the opaque etc hides the lower ones
    (top / "etc/group").write_text("top")
    assert _read([top, mid, low], "etc/group") == b"top"
