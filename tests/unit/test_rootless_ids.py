"""Rootless cove's pure pieces (issue 21): /etc/subuid parsing, keep-id's id map, the
per-user state root and runtime directory, the shifted layer copy. No root needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cove.engine import default_root
from cove.image.idshift import copy_tree
from cove.sys import userns
from cove.sys.private import DEFAULT_ROOT


def test_subid_range_by_name_or_uid(tmp_path: Path) -> None:
    f = tmp_path / "subuid"
    f.write_text(
        "# comment\n"
        "alice:100000:65536\n"
        "bob:x:65536\n"  # bad start: skipped
        "carol:200000:0\n"  # empty range: skipped
        "carol:300000:1000\n"
        "1005:400000:5\n"
        "  dave:500000:10  \n"
    )
    assert userns.subid_range(str(f), "alice", 1000) == userns.SubIdRange(100000, 65536)
    assert userns.subid_range(str(f), "bob", 1001) is None
    assert userns.subid_range(str(f), "carol", 1002) == userns.SubIdRange(300000, 1000)
    assert userns.subid_range(str(f), "erin", 1005) == userns.SubIdRange(400000, 5)
    assert userns.subid_range(str(f), "dave", 1006) == userns.SubIdRange(500000, 10)
    assert userns.subid_range(str(f), "nobody-here", 4242) is None
    assert userns.subid_range(str(tmp_path / "missing"), "alice", 1000) is None


def test_keep_id_map_is_podmans() -> None:
    # the user (parent id 0) becomes 1000; container 0..999 are parent 1..1000
    rows = userns.keep_id_map(1000, 65537)
    assert rows == [(0, 1, 1000), (1000, 0, 1), (1001, 1001, 64536)]
    assert userns.map_id(rows, 0) == 1
    assert userns.map_id(rows, 999) == 1000
    assert userns.map_id(rows, 1000) == 0
    assert userns.map_id(rows, 1001) == 1001
    assert userns.map_id(rows, 65536) == 65536
    assert userns.map_id(rows, 65537) is None
    # a bijection of the namespace's ids
    mapped = [userns.map_id(rows, i) for i in range(65537)]
    assert sorted(m for m in mapped if m is not None) == list(range(65537))
    assert userns.keep_id_map(0, 10) == [(0, 0, 1), (1, 1, 9)]
    # a kept id beyond the namespace: every subordinate id below it, the user at it
    assert userns.keep_id_map(70000, 65537) == [(0, 1, 65536), (70000, 0, 1)]
    with pytest.raises(ValueError):
        userns.keep_id_map(1000, 1)


def test_parse_keep_id() -> None:
    assert userns.parse_keep_id("keep-id", (1000, 1001)) == userns.KeepId(1000, 1001)
    assert userns.parse_keep_id("keep-id:uid=5,gid=6", (1000, 1001)) == userns.KeepId(5, 6)
    assert userns.parse_keep_id("keep-id:uid=5", (1000, 1001)) == userns.KeepId(5, 1001)
    assert userns.parse_keep_id("auto", (1000, 1001)) is None
    assert userns.parse_keep_id("", (1000, 1001)) is None
    with pytest.raises(ValueError):
        userns.parse_keep_id("keep-id:size=5", (1000, 1001))
    with pytest.raises(ValueError):
        userns.parse_keep_id("keep-id:uid=-1", (1000, 1001))


def test_ns_size(tmp_path: Path) -> None:
    f = tmp_path / "uid_map"
    f.write_text("         0       1000          1\n         1     100000      65536\n")
    assert userns.ns_size(str(f)) == 65537
    f.write_text("0 0 4294967295\n")
    assert userns.ns_size(str(f)) == 4294967295
    f.write_text("0 1000 1\n5 100000 10\n")  # a hole: only the ids from 0 count
    assert userns.ns_size(str(f)) == 1


def test_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert userns.data_dir() == str(tmp_path / "data" / "cove")
    # a relative XDG_DATA_HOME is ignored, as the XDG spec says: ~/.local/share
    monkeypatch.setenv("XDG_DATA_HOME", "rel/data")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert userns.data_dir() == str(tmp_path / "home" / ".local" / "share" / "cove")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert userns.data_dir() == str(tmp_path / "home" / ".local" / "share" / "cove")


def test_runtime_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uid = os.getuid()
    monkeypatch.delenv(userns.ROOTLESS_ENV, raising=False)
    own = tmp_path / "xdg"
    own.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(own))
    assert userns.runtime_dir() == str(own / "cove")
    # not an absolute path, or missing: /run/user/UID if ours, else a /tmp fallback
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    want = (
        f"/run/user/{uid}/cove"
        if userns._owned_dir(f"/run/user/{uid}")
        else str(tmp_path / f"cove-run-{uid}")
    )
    assert userns.runtime_dir() == want
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "absent"))
    assert userns.runtime_dir() == want


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COVE_ROOT", str(tmp_path / "r"))
    assert default_root() == str(tmp_path / "r")
    monkeypatch.delenv("COVE_ROOT")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    rootless = userns.rootless()  # this process: the initial namespace, or a user's
    assert default_root() == (str(tmp_path / "data" / "cove") if rootless else DEFAULT_ROOT)
    userns.rootless.cache_clear()
    monkeypatch.setattr(userns, "rootless", lambda: True)
    assert default_root() == str(tmp_path / "data" / "cove")
    monkeypatch.setattr(userns, "rootless", lambda: False)
    assert default_root() == DEFAULT_ROOT


def test_copy_tree_keeps_everything(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "d").mkdir(mode=0o750)
    (src / "d" / "f").write_bytes(b"data" * 1000)
    os.chmod(src / "d" / "f", 0o4755)
    os.link(src / "d" / "f", src / "hard")
    os.symlink("../etc/passwd", src / "d" / "link")
    os.mkfifo(src / "fifo", 0o640)
    os.setxattr(src / "d", "user.overlay.opaque", b"y")
    os.utime(src / "d" / "f", ns=(1_000_000_000, 2_000_000_000))
    seen: list[tuple[int, int]] = []

    def ids(uid: int, gid: int) -> tuple[int, int]:
        seen.append((uid, gid))
        return uid, gid  # no root here: the owners stay; the shift is the callable's

    copy_tree(str(src), str(dest), ids)
    assert (dest / "d" / "f").read_bytes() == b"data" * 1000
    assert stat.S_IMODE(os.stat(dest / "d" / "f").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o750
    assert os.stat(dest / "d" / "f").st_mtime_ns == 2_000_000_000
    assert os.path.samestat(os.stat(dest / "hard"), os.stat(dest / "d" / "f"))
    assert os.readlink(dest / "d" / "link") == "../etc/passwd"
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert os.getxattr(dest / "d", "user.overlay.opaque") == b"y"
    assert len(seen) == 5  # the root, d, f, link and fifo: a hard link is not chowned again


def test_keep_id_is_rootless_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from cove import bundle
    from cove.errors import InvalidSpec

    opts = bundle.RunOptions(image="alpine", userns="keep-id")
    monkeypatch.setattr(bundle, "rootless", lambda: False)
    with pytest.raises(InvalidSpec, match="keep-id is for rootless cove"):
        bundle.keep_id(opts)
    monkeypatch.setattr(bundle, "rootless", lambda: True)  # control
    assert bundle.keep_id(opts) == userns.KeepId(userns.outer_uid(), userns.outer_gid())
    opts.uidmap = ["0:100000:10"]
    with pytest.raises(InvalidSpec, match="mutually exclusive"):
        bundle.keep_id(opts)
