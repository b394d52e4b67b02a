"""cove.image.diff against the kernel's overlayfs: whatever the kernel wrote into an upper
directory, walking the layers must agree with what the mount showed."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cove.errors import Conflict, NotFound
from cove.image.diff import changes, copy_merged, write_layer_tar, write_merged_tar
from cove.image.layers import OVERLAY_OPAQUE_XATTR, unpack_stream

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: mknod whiteouts and overlay mounts"
)

SHIFT = 100_000
EPOCH = 1_700_000_000
XATTR_VALUE = b"v\xff\x00x"  # not UTF-8, with a NUL: must survive PAX records

Manifest = dict[str, tuple[Any, ...]]


@contextmanager
def overlay(
    lowers: list[Path], merged: Path, upper: Path | None = None, *extra: str
) -> Iterator[Path]:
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None:
        work = upper.parent / (upper.name + "-work")
        work.mkdir()
        opts += f",upperdir={upper},workdir={work}"
    opts = ",".join([opts, *extra])
    merged.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def manifest(root: Path) -> Manifest:
    """Everything a user of the tree can see, except times and directory sizes."""
    out: Manifest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra: Any = (st.st_size, hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            else:
                extra = None
            xattrs = {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False)
                # the unpacker also writes user.overlay.opaque, visible on a trusted-mode mount
                if not k.startswith(("trusted.overlay.", "user.overlay."))
            }
            rel = os.path.relpath(path, root)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        extra, xattrs)  # fmt: skip
    return out


def write(path: Path, data: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(mode)
    return path


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


@dataclass
class Scene:
    root: Path
    upper: Path
    l1: Path
    l2: Path
    merged: Manifest

    @property
    def layers(self) -> list[str]:
        return [str(self.upper), str(self.l1), str(self.l2)]


def build_lowers(root: Path) -> tuple[Path, Path]:
    l1, l2 = root / "l1", root / "l2"
    # bottom layer
    write(l2 / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    write(l2 / "etc/conf", "v1\n")
    write(l2 / "data/keep", "keep\n")
    write(l2 / "data/sub/deep", "deep\n", 0o600)
    write(l2 / "opt/olddir/x", "x\n")
    write(l2 / "opt/olddir/nested/y", "y\n")
    write(l2 / "var/cache/a", "old a\n")
    write(l2 / "var/cache/b", "old b\n")
    write(l2 / "bin/tool", "#!/bin/sh\necho tool\n", 0o755)
    os.link(l2 / "bin/tool", l2 / "bin/tool-link")
    write(l2 / "usr/share/doc/readme", "read me\n")
    os.link(l2 / "usr/share/doc/readme", l2 / "usr/share/doc/readme2")
    os.chown(l2 / "usr/share/doc/readme", 1000, 1001)
    write(l2 / "usr/share/doc/gone", "whited out by l1\n")
    write(l2 / "srv/old", "hidden by l1's opaque srv\n")
    os.symlink("etc/passwd", l2 / "lnk")
    os.symlink("/", l2 / "escape")  # would lead to the host if ever followed
    os.symlink("../../../../../../../..", l2 / "data/up")
    os.mkfifo(l2 / "data/pipe")
    os.chmod(l2 / "data/pipe", 0o640)
    # top lower: overrides, its own whiteout and opaque directory
    write(l1 / "etc/conf", "v2\n")
    write(l1 / "etc/hosts", "127.0.0.1 localhost\n")
    (l1 / "usr/share/doc").mkdir(parents=True)
    whiteout(l1 / "usr/share/doc/gone")
    write(l1 / "srv/new", "l1 srv\n")
    os.setxattr(l1 / "srv", OVERLAY_OPAQUE_XATTR, b"y")
    return l1, l2


def change(m: Path) -> None:
    """What a container might do; the kernel decides what lands in the upper."""
    write(m / "new.txt", "new\n")
    os.link(m / "new.txt", m / "new-link.txt")
    os.setxattr(m / "new.txt", "user.test", XATTR_VALUE)
    write(m / "etc/added/file", "added\n")
    (m / "etc/conf").write_text("v3\n")
    (m / "etc/hosts").unlink()
    subprocess.run(["rm", "-rf", str(m / "opt/olddir")], check=True)
    subprocess.run(["rm", "-rf", str(m / "var/cache")], check=True)
    (m / "var/cache").mkdir()
    write(m / "var/cache/a", "new a\n")
    write(m / "var/cache/c", "new c\n")
    (m / "data/keep").chmod(0o600)
    os.symlink("../etc/conf", m / "data/sl")
    (m / "bin/tool").write_text("#!/bin/sh\necho new tool\n")
    write(m / "usr/share/doc/gone", "back again\n")
    write(m / "srv/old", "new old\n")
    os.chown(m / "etc/passwd", SHIFT + 123, SHIFT + 456)
    (m / "run").mkdir()
    os.mkfifo(m / "run/fifo")
    os.mknod(m / "run/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(m / "etc/added", "user.dir", b"d")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("rootfs")
    l1, l2 = build_lowers(root)
    upper = root / "upper"
    upper.mkdir()
    with overlay([l1, l2], root / "merged", upper) as m:
        change(m)
        seen = manifest(m)
    return Scene(root, upper, l1, l2, seen)


def tar_bytes(fn: Any, *args: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    fn(*args, buf, **kw)
    return buf.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", errors="surrogateescape") as tar:
        return tar.getmembers()


def unpack(data: bytes, dest: Path) -> Path:
    dest.mkdir()
    unpack_stream(io.BytesIO(data), str(dest), "test layer")
    return dest


def header_mtimes(data: bytes) -> list[tuple[bytes, int]]:
    """(typeflag, mtime) of every header block, PAX extended headers included."""
    out = []
    off = 0
    while off + 512 <= len(data):
        block = data[off : off + 512]
        if block == bytes(512):
            break
        size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
        out.append((block[156:157], int(block[136:148].rstrip(b"\0 "), 8)))
        off += 512 + (size + 511) // 512 * 512
    return out


# -- changes --------------------------------------------------------------------------


def test_changes_match_docker_diff(scene: Scene) -> None:
    assert changes(str(scene.upper), [str(scene.l1), str(scene.l2)]) == [
        ("C", "/bin"),
        ("C", "/bin/tool"),
        ("C", "/data"),
        ("C", "/data/keep"),
        ("A", "/data/sl"),
        ("C", "/etc"),
        ("A", "/etc/added"),
        ("A", "/etc/added/file"),
        ("C", "/etc/conf"),
        ("D", "/etc/hosts"),
        ("C", "/etc/passwd"),
        ("A", "/new-link.txt"),
        ("A", "/new.txt"),
        ("C", "/opt"),
        ("D", "/opt/olddir"),
        ("A", "/run"),
        ("A", "/run/fifo"),
        ("A", "/run/null"),
        ("C", "/srv"),
        ("A", "/srv/old"),  # hidden below by l1's opaque srv: new to the container
        ("C", "/usr"),
        ("C", "/usr/share"),
        ("C", "/usr/share/doc"),
        ("A", "/usr/share/doc/gone"),  # whited out by l1: new to the container
        ("C", "/var"),
        ("C", "/var/cache"),  # emptied and remade: opaque; its old entries are not listed
        ("A", "/var/cache/a"),
        ("A", "/var/cache/c"),
    ]


def test_changes_of_untouched_container_is_empty(scene: Scene, tmp_path: Path) -> None:
    empty = tmp_path / "upper"
    empty.mkdir()
    assert changes(str(empty), [str(scene.l1), str(scene.l2)]) == []


def test_changes_of_missing_layer(scene: Scene, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"layer directory .*nope does not exist"):
        changes(str(scene.upper), [str(tmp_path / "nope")])


# -- write_layer_tar ------------------------------------------------------------------


def test_layer_tar_restacks_to_the_same_tree(scene: Scene, tmp_path: Path) -> None:
    data = tar_bytes(write_layer_tar, str(scene.upper))
    layer = unpack(data, tmp_path / "layer")
    with overlay([layer, scene.l1, scene.l2], tmp_path / "restacked") as m:
        assert manifest(m) == scene.merged


def test_layer_tar_entries(scene: Scene) -> None:
    infos = members(tar_bytes(write_layer_tar, str(scene.upper)))
    names = [i.name for i in infos]
    assert len(names) == len(set(names))
    assert "etc/.wh.hosts" in names and "opt/.wh.olddir" in names
    assert not any(n.startswith("opt/olddir/") for n in names)  # the kernel removed them
    opq = names.index("var/cache/.wh..wh..opq")
    assert names[opq - 1] == "var/cache"
    for info in infos:
        if info.name.rsplit("/", 1)[-1].startswith(".wh."):
            assert info.isreg() and info.size == 0
        assert not any(k.startswith("SCHILY.xattr.trusted.overlay.") for k in info.pax_headers)
        assert not any(k.startswith("SCHILY.xattr.user.overlay.") for k in info.pax_headers)
        assert info.uname == info.gname == ""
    by_name = {i.name: i for i in infos}
    # the pair made in the container is one file and one tar hardlink
    pair = [by_name["new-link.txt"], by_name["new.txt"]]
    assert pair[0].isreg() and pair[1].islnk() and pair[1].linkname == "new-link.txt"
    value = pair[0].pax_headers["SCHILY.xattr.user.test"]
    assert value.encode("utf-8", "surrogateescape") == XATTR_VALUE
    assert by_name["data/sl"].issym() and by_name["data/sl"].linkname == "../etc/conf"
    assert by_name["run/null"].ischr() and (
        by_name["run/null"].devmajor,
        by_name["run/null"].devminor,
    ) == (1, 3)
    # parents first, then names in byte order within each directory
    order = [n for n in names if "/" not in n]
    assert order == sorted(order, key=os.fsencode)


def test_layer_tar_is_reproducible(scene: Scene) -> None:
    one = tar_bytes(write_layer_tar, str(scene.upper), mtime=EPOCH)
    two = tar_bytes(write_layer_tar, str(scene.upper), mtime=EPOCH)
    assert one == two
    heads = header_mtimes(one)
    assert b"x" in {kind for kind, _ in heads}  # PAX headers are there, and stamped too
    assert {mtime for _, mtime in heads} == {EPOCH}
    assert {i.mtime for i in members(one)} == {EPOCH}


def test_layer_tar_own_mtimes(scene: Scene) -> None:
    infos = members(tar_bytes(write_layer_tar, str(scene.upper)))
    conf = next(i for i in infos if i.name == "etc/conf")
    assert conf.mtime == os.lstat(scene.upper / "etc/conf").st_mtime_ns // 1_000_000_000


def test_layer_tar_shifts_owners(scene: Scene) -> None:
    infos = members(tar_bytes(write_layer_tar, str(scene.upper), uid_shift=SHIFT, gid_shift=SHIFT))
    by_name = {i.name: i for i in infos}
    assert (by_name["etc/passwd"].uid, by_name["etc/passwd"].gid) == (123, 456)
    assert (by_name["new.txt"].uid, by_name["new.txt"].gid) == (0, 0)  # clamped, not negative


# -- write_merged_tar -----------------------------------------------------------------


def test_merged_tar_is_the_merged_view(scene: Scene, tmp_path: Path) -> None:
    data = tar_bytes(write_merged_tar, scene.layers)
    infos = members(data)
    assert not any(i.name.rsplit("/", 1)[-1].startswith(".wh.") for i in infos)
    assert not any(".overlay." in k for i in infos for k in i.pax_headers)
    assert manifest(unpack(data, tmp_path / "flat")) == scene.merged
    by_name = {i.name: i for i in infos}
    assert by_name["escape"].issym() and by_name["escape"].linkname == "/"
    assert by_name["usr/share/doc/readme2"].islnk()  # an untouched lower pair stays a pair
    assert by_name["bin/tool-link"].isreg()  # its partner was copied up: no longer one file
    assert data == tar_bytes(write_merged_tar, scene.layers)


def test_merged_tar_shifts_only_the_upper(scene: Scene) -> None:
    data = tar_bytes(write_merged_tar, scene.layers, uid_shift=SHIFT, gid_shift=SHIFT)
    by_name = {i.name: i for i in members(data)}
    assert (by_name["etc/passwd"].uid, by_name["etc/passwd"].gid) == (123, 456)
    assert (by_name["usr/share/doc/readme"].uid, by_name["usr/share/doc/readme"].gid) == (
        1000,
        1001,
    )


# -- copy_merged ----------------------------------------------------------------------


def test_copy_merged_whole_tree(scene: Scene, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    dest.mkdir()
    assert copy_merged(scene.layers, "", str(dest)) is True
    assert manifest(dest) == scene.merged


def test_copy_merged_directory(scene: Scene, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    dest.mkdir(mode=0o700)
    assert copy_merged(scene.layers, "/var/cache/", str(dest)) is True
    assert sorted(os.listdir(dest)) == ["a", "c"]  # b is under the opaque directory
    assert (dest / "a").read_text() == "new a\n"
    cache = os.lstat(scene.upper / "var/cache")
    assert stat.S_IMODE(os.lstat(dest).st_mode) == stat.S_IMODE(cache.st_mode)
    assert os.lstat(dest).st_mtime_ns == cache.st_mtime_ns

    usr = tmp_path / "usr"
    usr.mkdir()
    assert copy_merged(scene.layers, "usr", str(usr)) is True
    readme = os.lstat(usr / "share/doc/readme")
    assert readme.st_ino == os.lstat(usr / "share/doc/readme2").st_ino
    assert (readme.st_uid, readme.st_gid) == (1000, 1001)
    assert (usr / "share/doc/gone").read_text() == "back again\n"
    src = os.lstat(scene.l2 / "usr/share/doc/readme")
    assert readme.st_mtime_ns == src.st_mtime_ns

    data = tmp_path / "data"
    data.mkdir()
    assert copy_merged(scene.layers, "data", str(data), uid_shift=SHIFT, gid_shift=SHIFT)
    assert os.readlink(data / "up") == "../../../../../../../.."
    assert os.readlink(data / "sl") == "../etc/conf"
    assert stat.S_ISFIFO(os.lstat(data / "pipe").st_mode)
    assert stat.S_IMODE(os.lstat(data / "keep").st_mode) == 0o600
    assert os.lstat(data / "sub/deep").st_uid == SHIFT


def test_copy_merged_not_a_directory(scene: Scene, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    dest.mkdir()
    for rel in ("nope", "etc/conf", "etc/hosts", "opt/olddir", "lnk", "escape", "srv/old/x"):
        assert copy_merged(scene.layers, rel, str(dest)) is False, rel
    assert copy_merged(scene.layers, "../../escape", str(dest)) is False
    assert os.listdir(dest) == []


def test_copy_merged_refuses_a_full_volume(scene: Scene, tmp_path: Path) -> None:
    dest = tmp_path / "vol"
    dest.mkdir()
    (dest / "mine").write_text("keep me\n")
    with pytest.raises(Conflict, match="is not empty"):
        copy_merged(scene.layers, "etc", str(dest))


# -- user namespaces: userxattr overlay ----------------------------------------------


def test_userxattr_upper(tmp_path: Path) -> None:
    """A user-namespaced container's upper marks opaque directories with user.* xattrs."""
    lower = tmp_path / "lower"
    write(lower / "d/a", "a\n")
    write(lower / "d/b", "b\n")
    write(lower / "x", "x\n")
    (tmp_path / "spare").mkdir()  # a lower-only overlay needs two lowers
    upper = tmp_path / "upper"
    upper.mkdir()
    with overlay([lower, tmp_path / "spare"], tmp_path / "m", upper, "userxattr") as m:
        subprocess.run(["rm", "-rf", str(m / "d")], check=True)
        (m / "d").mkdir()
        write(m / "d/c", "c\n")
        (m / "x").unlink()
        seen = manifest(m)
    assert os.getxattr(upper / "d", "user.overlay.opaque") == b"y"
    assert changes(str(upper), [str(lower)]) == [
        ("C", "/d"),
        ("A", "/d/c"),
        ("D", "/x"),
    ]
    data = tar_bytes(write_layer_tar, str(upper))
    assert [i.name for i in members(data)] == ["d", "d/.wh..wh..opq", "d/c", ".wh.x"]
    layer = unpack(data, tmp_path / "layer")
    with overlay([layer, lower], tmp_path / "restacked") as r:
        assert manifest(r) == seen
    assert (
        manifest(unpack(tar_bytes(write_merged_tar, [str(upper), str(lower)]), tmp_path / "f"))
        == seen
    )


# -- merge rules against the kernel's lookup -----------------------------------------


def test_merge_rules_match_the_kernel(tmp_path: Path) -> None:
    top, mid, bottom = tmp_path / "top", tmp_path / "mid", tmp_path / "bottom"
    # a whiteout in the middle ends the merge of a directory above it
    write(top / "w/t", "t\n")
    mid.mkdir()
    whiteout(mid / "w")
    write(bottom / "w/b", "b\n")
    # so does a file
    write(top / "f/t", "t\n")
    write(mid / "f", "a file\n")
    write(bottom / "f/b", "b\n")
    # a layer without the directory does not
    write(top / "g/t", "t\n")
    write(bottom / "g/b", "b\n")
    # an opaque directory in the middle lets itself merge upwards, not further down
    write(top / "o/t", "t\n")
    write(mid / "o/m", "m\n")
    os.setxattr(mid / "o", OVERLAY_OPAQUE_XATTR, b"y")
    write(bottom / "o/b", "b\n")
    # a whiteout below a file is nothing; a file above a whiteout is the file
    write(top / "x", "top x\n")
    whiteout(mid / "y")
    write(bottom / "y", "hidden\n")
    layers = [top, mid, bottom]
    with overlay(layers, tmp_path / "m") as m:
        seen = manifest(m)
    assert {"w/t", "f/t", "g/t", "g/b", "o/t", "o/m", "x"} <= set(seen)
    assert not {"w/b", "f/b", "o/b", "y"} & set(seen)
    flat = tar_bytes(write_merged_tar, [str(p) for p in layers])
    assert manifest(unpack(flat, tmp_path / "flat")) == seen
    dest = tmp_path / "vol"
    dest.mkdir()
    assert copy_merged([str(p) for p in layers], "", str(dest))
    assert manifest(dest) == seen
    # and as the lower view under an upper that touched each directory
    upper = tmp_path / "upper"
    for d in ("w", "f", "g", "o"):
        write(upper / d / "u", "u\n")
    assert changes(str(upper), [str(p) for p in layers]) == [
        ("C", "/f"), ("A", "/f/u"), ("C", "/g"), ("A", "/g/u"),
        ("C", "/o"), ("A", "/o/u"), ("C", "/w"), ("A", "/w/u"),
    ]  # fmt: skip


def descend(root: Path, depth: int, *, make: bool) -> int:
    """An fd for root/d/d/...: the absolute path would pass PATH_MAX."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        if make:
            os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def test_deep_tree_needs_no_recursion(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit: an image may nest that far."""
    layer = tmp_path / "layer"
    layer.mkdir()
    fd = descend(layer, 1500, make=True)
    leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"leaf\n")
    os.close(leaf)
    os.close(fd)
    infos = members(tar_bytes(write_merged_tar, [str(layer)]))
    assert len(infos) == 1501 and infos[-1].name.endswith("/d/leaf")
    dest = tmp_path / "vol"
    dest.mkdir()
    assert copy_merged([str(layer)], "d/d/d", str(dest))
    fd = descend(dest, 1497, make=False)
    try:
        leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 100) == b"leaf\n"
        os.close(leaf)
    finally:
        os.close(fd)
    subprocess.run(["rm", "-rf", str(layer), str(dest)], check=True)  # pytest's cleanup can't
