"""``cove cp`` copies: docker cp semantics both ways, and containment against a hostile rootfs.

The fake container root is a directory in tmp_path holding the symlinks a
hostile container would plant; the host side is another tmp directory. No
root needed: ownership is only asserted when running as root.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cove.errors import Conflict, InvalidSpec, NotFound
from cove.sys.fscopy import copy_in, copy_out

CONTAINER_SHADOW = b"container shadow marker\n"
CONTAINER_PASSWD = b"container passwd marker\n"
SENTINEL = b"host sentinel: must never change\n"
MTIME_NS = 1_500_000_000_123_456_789
ROOT = os.geteuid() == 0


@dataclass
class World:
    root: Path  # the fake container rootfs
    host: Path  # the host side of a copy
    outside: Path  # a host directory the container's symlinks point at
    rootfd: int


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    root, host, outside = tmp_path / "root", tmp_path / "host", tmp_path / "outside"
    for d in (root / "etc", root / "tmp", host, outside):
        d.mkdir(parents=True)
    (root / "etc" / "shadow").write_bytes(CONTAINER_SHADOW)
    (root / "etc" / "passwd").write_bytes(CONTAINER_PASSWD)
    (root / "evil").symlink_to("/")
    (root / "evil2").symlink_to("../../..")
    (root / "tmp" / "x").symlink_to("/etc/passwd")
    (root / "tmp" / "y").symlink_to(outside / "sentinel")
    (root / "hostdir").symlink_to(outside)
    (outside / "sentinel").write_bytes(SENTINEL)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        yield World(root, host, outside, fd)
    finally:
        os.close(fd)


@dataclass
class Sides:
    """One direction of copy, so each docker cp rule is checked both ways."""

    world: World
    out: bool  # copy_out (container -> host) or copy_in (host -> container)

    @property
    def src_dir(self) -> Path:
        return self.world.root if self.out else self.world.host

    @property
    def dst_dir(self) -> Path:
        return self.world.host if self.out else self.world.root

    def src(self, rel: str) -> str:
        return "/" + rel if self.out else f"{self.world.host}/{rel}"

    def dst(self, rel: str) -> str:
        return f"{self.world.host}/{rel}" if self.out else "/" + rel

    def copy(self, src: str, dest: str, *, follow_link: bool = False) -> None:
        if self.out:
            copy_out(self.world.rootfd, self.src(src), self.dst(dest), follow_link=follow_link)
        else:
            copy_in(
                self.src(src),
                self.world.rootfd,
                self.dst(dest),
                uid=os.geteuid(),
                gid=os.getegid(),
                follow_link=follow_link,
            )


@pytest.fixture(params=["out", "in"])
def sides(request: pytest.FixtureRequest, world: World) -> Sides:
    return Sides(world, request.param == "out")


def write(path: Path, data: bytes, mode: int = 0o644, mtime_ns: int = MTIME_NS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def make_tree(top: Path) -> None:
    """A small tree with every kind the copy handles, modes and times set."""
    top.mkdir(parents=True, exist_ok=True)
    write(top / "a.txt", b"alpha\n", 0o640)
    write(top / "run.sh", b"#!/bin/sh\n", 0o755)
    write(top / "sub" / "deep" / "z", b"zed", 0o600, MTIME_NS + 7)
    write(top / "empty", b"", 0o444)
    (top / "rel").symlink_to("a.txt")
    (top / "abs").symlink_to("/etc/shadow")
    (top / "dangling").symlink_to("nowhere/at/all")
    (top / "dirlink").symlink_to("sub")
    (top / "emptydir").mkdir()
    os.mkfifo(top / "fifo")
    (top / "fifo").chmod(0o620)  # mkfifo's mode passes through the umask
    for p in (top / "rel", top / "abs", top / "dangling", top / "dirlink"):
        os.utime(p, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
    for d, mode in ((top / "sub" / "deep", 0o750), (top / "sub", 0o711), (top, 0o755)):
        d.chmod(mode)
    for d in (top / "emptydir", top / "sub" / "deep", top / "sub", top):
        os.utime(d, ns=(MTIME_NS, MTIME_NS + 1))


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Everything a faithful copy keeps: kind, mode bits, mtime, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (
            [".", *dirnames, *filenames] if dirpath == str(top) else [*dirnames, *filenames]
        ):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def host_state(*paths: Path) -> dict[str, tuple[int, ...] | None]:
    """Identity and change time of host files; needs no read permission (/etc/shadow)."""
    state: dict[str, tuple[int, ...] | None] = {}
    for p in paths:
        try:
            st = p.lstat()
        except FileNotFoundError:
            state[str(p)] = None
            continue
        state[str(p)] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    return state


def entries(top: Path) -> list[Path]:
    """Every path below ``top``, symlinks not followed."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top):
        found.extend(Path(dirpath) / name for name in [*dirnames, *filenames])
    return found


def listing(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in entries(top))


# -- docker cp: SRC is a file ---------------------------------------------------------


def test_file_to_missing_dest_is_saved_under_that_name(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data", 0o640)
    sides.copy("f", "renamed")
    got = sides.dst_dir / "renamed"
    assert got.read_bytes() == b"data"
    assert stat.S_IMODE(got.stat().st_mode) == 0o640
    assert got.stat().st_mtime_ns == MTIME_NS


def test_file_to_dest_with_missing_parent_fails(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data")
    with pytest.raises(InvalidSpec, match="no such directory"):
        sides.copy("f", "nope/renamed")
    assert not (sides.dst_dir / "nope").exists()


def test_file_to_missing_dest_with_slash_fails(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data")
    with pytest.raises(InvalidSpec, match=r"destination directory .*newdir/ does not exist"):
        sides.copy("f", "newdir/")
    assert not (sides.dst_dir / "newdir").exists()


def test_file_overwrites_existing_file(sides: Sides) -> None:
    write(sides.src_dir / "f", b"new", 0o755)
    write(sides.dst_dir / "g", b"old and much longer", 0o600, MTIME_NS - 10**9)
    sides.copy("f", "g")
    got = sides.dst_dir / "g"
    assert got.read_bytes() == b"new"
    assert stat.S_IMODE(got.stat().st_mode) == 0o755
    assert got.stat().st_mtime_ns == MTIME_NS


@pytest.mark.parametrize("dest", ["d", "d/", "d/."])
def test_file_into_existing_dir_keeps_its_basename(sides: Sides, dest: str) -> None:
    write(sides.src_dir / "sub" / "f", b"data")
    (sides.dst_dir / "d").mkdir()
    sides.copy("sub/f", dest)
    assert (sides.dst_dir / "d" / "f").read_bytes() == b"data"


def test_file_onto_existing_file_with_slash_fails(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data")
    write(sides.dst_dir / "g", b"old")
    with pytest.raises(InvalidSpec, match="not a directory"):
        sides.copy("f", "g/")
    assert (sides.dst_dir / "g").read_bytes() == b"old"


def test_file_source_with_trailing_slash_fails(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data")
    for src in ("f/", "f/."):
        with pytest.raises(InvalidSpec, match="not a directory"):
            sides.copy(src, "out")
    assert not (sides.dst_dir / "out").exists()


def test_missing_source_is_not_found(sides: Sides) -> None:
    with pytest.raises(NotFound, match=r"could not find .*nothing-here"):
        sides.copy("nothing-here", "out")
    with pytest.raises(NotFound, match="could not find"):
        sides.copy("no/such/dir/.", "out")


# -- docker cp: SRC is a directory ----------------------------------------------------


@pytest.mark.parametrize("src", ["tree", "tree/", "tree/."])
def test_dir_to_missing_dest_creates_it_with_the_contents(sides: Sides, src: str) -> None:
    make_tree(sides.src_dir / "tree")
    sides.copy(src, "copy")
    assert snapshot(sides.dst_dir / "copy") == snapshot(sides.src_dir / "tree")


def test_dir_to_existing_file_fails(sides: Sides) -> None:
    make_tree(sides.src_dir / "tree")
    write(sides.dst_dir / "g", b"old")
    with pytest.raises(InvalidSpec, match="cannot copy a directory to a file"):
        sides.copy("tree", "g")
    assert (sides.dst_dir / "g").read_bytes() == b"old"


@pytest.mark.parametrize("dest", ["d", "d/"])
def test_dir_into_existing_dir_goes_below_it(sides: Sides, dest: str) -> None:
    make_tree(sides.src_dir / "tree")
    (sides.dst_dir / "d").mkdir()
    sides.copy("tree", dest)
    assert snapshot(sides.dst_dir / "d" / "tree") == snapshot(sides.src_dir / "tree")


def test_dir_dot_copies_contents_into_existing_dir(sides: Sides) -> None:
    make_tree(sides.src_dir / "tree")
    d = sides.dst_dir / "d"
    d.mkdir(mode=0o700)
    os.utime(d, ns=(1, 2))
    write(d / "kept", b"already there")
    write(d / "a.txt", b"replaced", 0o600)
    (d / "sub").mkdir()
    write(d / "sub" / "kept2", b"merged")
    sides.copy("tree/.", "d")
    want = snapshot(sides.src_dir / "tree")
    got = snapshot(d)
    assert got.pop("kept")[3] == b"already there"
    assert got.pop("sub/kept2")[3] == b"merged"
    # DEST keeps its own metadata; what is copied into it, merged dirs too, follows the source
    assert got.pop(".")[:2] == ("dir", 0o700)
    want.pop(".")
    assert got == want


def test_in_tree_dir_never_replaces_a_file(sides: Sides) -> None:
    write(sides.src_dir / "tree" / "x" / "inner", b"i")
    write(sides.dst_dir / "d" / "x", b"a file")
    with pytest.raises(Conflict, match="cannot overwrite non-directory"):
        sides.copy("tree/.", "d")
    assert (sides.dst_dir / "d" / "x").read_bytes() == b"a file"


def test_in_tree_file_never_replaces_a_dir(sides: Sides) -> None:
    write(sides.src_dir / "tree" / "x", b"a file")
    write(sides.dst_dir / "d" / "x" / "inner", b"i")
    with pytest.raises(Conflict, match="cannot overwrite directory"):
        sides.copy("tree/.", "d")
    assert (sides.dst_dir / "d" / "x" / "inner").read_bytes() == b"i"


# -- symlinks ---------------------------------------------------------------------------


def test_symlinks_in_trees_stay_symlinks(sides: Sides) -> None:
    make_tree(sides.src_dir / "tree")
    sides.copy("tree", "copy")
    copy = sides.dst_dir / "copy"
    assert os.readlink(copy / "abs") == "/etc/shadow"
    assert os.readlink(copy / "dangling") == "nowhere/at/all"
    assert os.readlink(copy / "dirlink") == "sub"
    assert (copy / "rel").is_symlink()
    assert (copy / "abs").lstat().st_mtime_ns == MTIME_NS


def test_last_component_symlink_is_copied_as_link(sides: Sides) -> None:
    write(sides.src_dir / "target", b"pointed at")
    (sides.src_dir / "link").symlink_to("target")
    (sides.src_dir / "dlink").symlink_to("/nonexistent/dir")
    sides.copy("link", "l2")
    sides.copy("dlink", "l3")
    assert os.readlink(sides.dst_dir / "l2") == "target"
    assert os.readlink(sides.dst_dir / "l3") == "/nonexistent/dir"


def test_follow_link_copies_the_target_under_the_link_name(sides: Sides) -> None:
    write(sides.src_dir / "real" / "target", b"pointed at", 0o604)
    (sides.src_dir / "link").symlink_to("real/target")
    (sides.dst_dir / "d").mkdir()
    sides.copy("link", "d", follow_link=True)
    got = sides.dst_dir / "d" / "link"
    assert not got.is_symlink()
    assert got.read_bytes() == b"pointed at"
    assert stat.S_IMODE(got.stat().st_mode) == 0o604


def test_follow_link_to_a_directory_copies_the_directory(sides: Sides) -> None:
    make_tree(sides.src_dir / "tree")
    (sides.src_dir / "tlink").symlink_to("tree")
    sides.copy("tlink", "copy", follow_link=True)
    assert snapshot(sides.dst_dir / "copy") == snapshot(sides.src_dir / "tree")


def test_existing_symlink_at_an_entry_is_replaced_not_written_through(
    sides: Sides, world: World
) -> None:
    make_tree(sides.src_dir / "tree")
    d = sides.dst_dir / "d"
    d.mkdir()
    (d / "a.txt").symlink_to(world.outside / "sentinel")
    (d / "sub").symlink_to(world.outside)
    before = host_state(world.outside / "sentinel")
    sides.copy("tree/.", "d")
    assert not (d / "a.txt").is_symlink()
    assert (d / "a.txt").read_bytes() == b"alpha\n"
    assert (d / "sub").is_dir() and not (d / "sub").is_symlink()
    assert (d / "sub" / "deep" / "z").read_bytes() == b"zed"
    assert host_state(world.outside / "sentinel") == before
    assert listing(world.outside) == ["sentinel"]


def test_dest_symlink_to_a_dir_is_followed_on_its_side(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data")
    (sides.dst_dir / "usr" / "lib").mkdir(parents=True)
    (sides.dst_dir / "lib").symlink_to("usr/lib")
    sides.copy("f", "lib")
    assert (sides.dst_dir / "lib").is_symlink()
    assert (sides.dst_dir / "usr" / "lib" / "f").read_bytes() == b"data"


def test_dest_symlink_to_a_file_is_replaced(sides: Sides) -> None:
    write(sides.src_dir / "f", b"data")
    write(sides.dst_dir / "real", b"untouched")
    (sides.dst_dir / "link").symlink_to("real")
    sides.copy("f", "link")
    assert not (sides.dst_dir / "link").is_symlink()
    assert (sides.dst_dir / "link").read_bytes() == b"data"
    assert (sides.dst_dir / "real").read_bytes() == b"untouched"


# -- metadata, special files, big files --------------------------------------------------


def test_modes_and_mtimes_are_preserved(sides: Sides) -> None:
    make_tree(sides.src_dir / "tree")
    sides.copy("tree", "copy")
    copy = sides.dst_dir / "copy"
    assert stat.S_IMODE((copy / "sub" / "deep").stat().st_mode) == 0o750
    assert stat.S_IMODE((copy / "sub").stat().st_mode) == 0o711
    assert (copy / "sub").stat().st_mtime_ns == MTIME_NS + 1
    assert stat.S_IMODE((copy / "sub" / "deep" / "z").stat().st_mode) == 0o600
    assert (copy / "sub" / "deep" / "z").stat().st_mtime_ns == MTIME_NS + 7
    assert stat.S_IMODE((copy / "empty").stat().st_mode) == 0o444


def test_fifos_are_copied_as_fifos(sides: Sides) -> None:
    make_tree(sides.src_dir / "tree")
    sides.copy("tree/fifo", "f")
    st = (sides.dst_dir / "f").lstat()
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o620
    assert st.st_mtime_ns == (sides.src_dir / "tree" / "fifo").lstat().st_mtime_ns


def test_setid_bits_are_kept_in_and_dropped_out(sides: Sides) -> None:
    write(sides.src_dir / "tool", b"\x7fELF", 0o755)
    os.chmod(sides.src_dir / "tool", 0o6755)
    sides.copy("tool", "tool")
    mode = stat.S_IMODE((sides.dst_dir / "tool").stat().st_mode)
    # ownership is not preserved copying out, so neither are the bits that depend on it
    assert mode == (0o755 if sides.out else 0o6755)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_large_and_sparse_files(sides: Sides) -> None:
    big = write(sides.src_dir / "big", os.urandom(20 << 20), 0o600)
    sparse = sides.src_dir / "sparse"
    with sparse.open("wb") as f:
        f.write(b"head")
        f.seek(32 << 20)
        f.write(os.urandom(1 << 20))
        f.truncate(64 << 20)  # ends in a hole
    sides.copy("big", "big")
    sides.copy("sparse", "sparse")
    assert _digest(sides.dst_dir / "big") == _digest(big)
    got = sides.dst_dir / "sparse"
    assert got.stat().st_size == 64 << 20
    assert _digest(got) == _digest(sparse)
    if sparse.stat().st_blocks * 512 < 8 << 20:  # the filesystem keeps holes
        assert got.stat().st_blocks * 512 < 8 << 20


@pytest.mark.parametrize("broken", ["copy_file_range", "sendfile"])
def test_data_copy_steps_down_when_the_kernel_refuses(
    sides: Sides, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    if broken == "sendfile":
        monkeypatch.setattr(os, "sendfile", refuse)
    src = write(sides.src_dir / "big", os.urandom((9 << 20) + 123))
    sides.copy("big", "big")
    assert _digest(sides.dst_dir / "big") == _digest(src)


def test_copy_into_itself_is_refused(world: World) -> None:
    make_tree(world.root / "d")
    with pytest.raises(InvalidSpec, match="into itself"):
        copy_out(world.rootfd, "/d/.", str(world.root / "d"))
    with pytest.raises(InvalidSpec, match="into itself"):
        copy_out(world.rootfd, "/d", str(world.root / "d"))
    with pytest.raises(InvalidSpec, match="into itself"):
        copy_in(str(world.root / "d"), world.rootfd, "/d/sub", uid=os.geteuid(), gid=os.getegid())


# -- a hostile container ---------------------------------------------------------------


@pytest.mark.parametrize(
    "src",
    [
        "/etc/shadow",
        "/evil/etc/shadow",
        "/evil2/etc/shadow",
        "evil/evil2/evil/etc/shadow",
        "/../../../etc/shadow",
        "/tmp/../../etc/shadow",
    ],
)
def test_copy_out_reads_the_containers_file_never_the_hosts(world: World, src: str) -> None:
    copy_out(world.rootfd, src, str(world.host / "got"))
    assert (world.host / "got").read_bytes() == CONTAINER_SHADOW


def test_copy_out_follow_link_stays_in_the_root(world: World) -> None:
    copy_out(world.rootfd, "/evil/tmp/x", str(world.host), follow_link=True)
    assert (world.host / "x").read_bytes() == CONTAINER_PASSWD
    with pytest.raises(NotFound):
        copy_out(world.rootfd, "/tmp/y", str(world.host), follow_link=True)
    assert not (world.host / "y").exists()


def test_copy_out_cannot_reach_a_host_dir_through_a_link(world: World) -> None:
    with pytest.raises(NotFound):
        copy_out(world.rootfd, "/hostdir/sentinel", str(world.host / "got"))
    with pytest.raises(NotFound):
        copy_out(world.rootfd, "/hostdir/.", str(world.host / "got"))
    assert listing(world.host) == []
    # the host path, recreated inside the root, is what the container gets to name
    inner = world.root / str(world.outside).lstrip("/")
    write(inner / "sentinel", b"in the container")
    copy_out(world.rootfd, "/hostdir/sentinel", str(world.host / "got"))
    assert (world.host / "got").read_bytes() == b"in the container"


def test_copy_out_of_the_whole_root_keeps_hostile_links_as_links(world: World) -> None:
    # a containment bug would otherwise have this copy the whole host filesystem
    copy_out(world.rootfd, "/evil/etc/shadow", str(world.host / "probe"))
    assert (world.host / "probe").read_bytes() == CONTAINER_SHADOW
    (world.host / "probe").unlink()
    copy_out(world.rootfd, "/", str(world.host / "all"))
    all_ = world.host / "all"
    assert os.readlink(all_ / "evil") == "/"
    assert os.readlink(all_ / "evil2") == "../../.."
    assert os.readlink(all_ / "tmp" / "x") == "/etc/passwd"
    assert os.readlink(all_ / "hostdir") == str(world.outside)
    assert (all_ / "etc" / "shadow").read_bytes() == CONTAINER_SHADOW
    assert listing(all_) == listing(world.root)


def copy_in_as_me(src: Path | str, world: World, dest: str, **kw: bool) -> None:
    copy_in(str(src), world.rootfd, dest, uid=os.geteuid(), gid=os.getegid(), **kw)


@pytest.mark.parametrize("dest", ["/evil/tmp/x", "/evil2/tmp/x", "/tmp/x", "/evil/evil2/tmp/"])
def test_copy_in_through_hostile_links_lands_in_the_root(world: World, dest: str) -> None:
    host_files = (Path("/etc/passwd"), Path("/etc/shadow"), world.outside / "sentinel")
    before = host_state(*host_files)
    src = write(world.host / "x", b"written by cp")
    copy_in_as_me(src, world, dest)
    got = world.root / "tmp" / "x"
    assert not got.is_symlink()
    assert got.read_bytes() == b"written by cp"
    assert (world.root / "etc" / "passwd").read_bytes() == CONTAINER_PASSWD
    assert host_state(*host_files) == before


def test_copy_in_replaces_a_link_to_a_host_file(world: World) -> None:
    before = host_state(world.outside / "sentinel")
    copy_in_as_me(write(world.host / "f", b"new"), world, "/tmp/y")
    assert (world.root / "tmp" / "y").read_bytes() == b"new"
    assert host_state(world.outside / "sentinel") == before
    assert (world.outside / "sentinel").read_bytes() == SENTINEL


def test_copy_in_cannot_reach_a_host_dir_through_a_link(world: World) -> None:
    src = write(world.host / "f", b"new")
    with pytest.raises(InvalidSpec, match="does not exist"):
        copy_in_as_me(src, world, "/hostdir/")
    with pytest.raises(InvalidSpec, match="no such directory"):
        copy_in_as_me(src, world, "/hostdir/f")
    assert listing(world.outside) == ["sentinel"]
    # once the path exists inside the root, that is where the link leads
    inner = world.root / str(world.outside).lstrip("/")
    inner.mkdir(parents=True)
    copy_in_as_me(src, world, "/hostdir/")
    assert (inner / "f").read_bytes() == b"new"
    assert listing(world.outside) == ["sentinel"]
    # a dangling link is itself what gets replaced
    (inner / "f").unlink()
    inner.rmdir()
    copy_in_as_me(src, world, "/hostdir")
    assert (world.root / "hostdir").read_bytes() == b"new"
    assert listing(world.outside) == ["sentinel"]


def test_copy_in_of_a_tree_over_hostile_links(world: World) -> None:
    host_files = (Path("/etc/passwd"), Path("/etc/shadow"), world.outside / "sentinel")
    before = host_state(*host_files)
    tree = world.host / "tree"
    write(tree / "evil" / "etc" / "shadow", b"via evil")
    write(tree / "hostdir" / "sentinel", b"via hostdir")
    write(tree / "tmp" / "x", b"via tmp/x")
    (tree / "tmp" / "y").mkdir()
    copy_in_as_me(f"{tree}/.", world, "/evil/.")
    # checked first: reading through a link still in place would read the host's files
    for name in ("evil", "hostdir", "tmp/x", "tmp/y"):
        assert not (world.root / name).is_symlink(), name
    assert (world.root / "evil" / "etc" / "shadow").read_bytes() == b"via evil"
    assert (world.root / "hostdir" / "sentinel").read_bytes() == b"via hostdir"
    assert (world.root / "tmp" / "x").read_bytes() == b"via tmp/x"
    assert (world.root / "tmp" / "y").is_dir()
    assert (world.root / "etc" / "shadow").read_bytes() == CONTAINER_SHADOW
    assert host_state(*host_files) == before
    assert listing(world.outside) == ["sentinel"]


def test_copy_in_follow_link_resolves_on_the_host(world: World) -> None:
    src = write(world.host / "real", b"host data")
    (world.host / "link").symlink_to(src)
    copy_in_as_me(world.host / "link", world, "/tmp/", follow_link=True)
    assert (world.root / "tmp" / "link").read_bytes() == b"host data"


# -- ownership (root only) -----------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="chown to other ids needs root")
def test_copy_in_owns_every_entry_to_the_given_ids(world: World) -> None:
    make_tree(world.host / "tree")
    copy_in(str(world.host / "tree"), world.rootfd, "/t", uid=1234, gid=5678)
    copy_in(str(world.host / "tree" / "a.txt"), world.rootfd, "/tmp/x", uid=1234, gid=5678)
    for p in [world.root / "t", *entries(world.root / "t"), world.root / "tmp" / "x"]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (1234, 5678), p
    mode = stat.S_IMODE((world.root / "t" / "run.sh").stat().st_mode)
    assert mode == 0o755


@pytest.mark.skipif(not ROOT, reason="chown to other ids needs root")
def test_copy_out_leaves_ownership_to_the_caller(world: World) -> None:
    make_tree(world.root / "tree")
    for p in [world.root / "tree", *entries(world.root / "tree")]:
        os.chown(p, 1234, 5678, follow_symlinks=False)
    copy_out(world.rootfd, "/tree", str(world.host / "tree"))
    for p in [world.host / "tree", *entries(world.host / "tree")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), p
