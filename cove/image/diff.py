"""A container's filesystem as data: what changed, the change as a layer, the whole, a subtree.

These back ``diff``, ``commit``, ``export`` and the seeding of new volumes with image
content. They read the layer directories themselves instead of a mounted overlay: a
mount needs the container's namespaces (or a stopped container), shows nothing of
what a whiteout or an opaque directory removed, and a commit has to see the upper
directory's own whiteouts to write them as OCI whiteouts.

The layers are untrusted content and a running container rewrites its upper
directory while we read it. So nothing found in a layer is ever followed: every
path is resolved from the layer's root with ``openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS)``, names are looked at with ``*at`` calls that do not follow,
and a regular file is opened as ``O_PATH`` and checked before it is read, so a
device node or fifo swapped in meanwhile is never opened. An entry that changes
type or vanishes during the walk is left out, as if the walk had come a moment later.

The overlay rules followed (those of the kernel's lookup): the highest layer that
has a name decides what it is; a whiteout (a 0/0 character device) there hides the
name in every layer below; a non-directory stops the lookup; directories of the
same name merge downwards until a layer whose directory is opaque.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO

from cove.errors import Conflict, CorruptContent, CoveError, HostFailure, NotFound, Unsupported
from cove.image.layers import (
    OVERLAY_OPAQUE_XATTR,
    USER_OPAQUE_XATTR,
    WHITEOUT_OPAQUE,
    WHITEOUT_PREFIX,
)
from cove.sys.syscalls import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2

_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# overlayfs's own bookkeeping: meaningless (or harmful) anywhere but in this overlay
_OVERLAY_PRIVATE = ("trusted.overlay.", "user.overlay.")
# layouts where an entry's data or a directory's lower half lives under another name:
# a walk by name would silently show the wrong tree, so these are refused instead
_REDIRECTS = frozenset(
    f"{ns}.overlay.{key}" for ns in ("trusted", "user") for key in ("redirect", "metacopy")
)
_XATTR_PAX = "SCHILY.xattr."
# an entry that is not there (any more) or became a symlink: skipped, never followed
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
_CHUNK = 1 << 20
_NS = 1_000_000_000


@dataclass(eq=False)
class _Node:
    """One name of the merged tree, described by the layer that decides it."""

    rel: str
    st: os.stat_result
    layer: int
    below: list[int] = field(default_factory=list)  # dirs: layers merging into it, top first
    merging: bool = True  # may a layer further down still add to this directory
    opaque: bool = False  # dirs: set once listed
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _read_error(where: str, e: OSError) -> CorruptContent:
    return CorruptContent(f"cannot read {where}: {e.strerror or e}")


def _write_error(where: str, e: OSError) -> CoveError:
    return CoveError(f"cannot write {where}: {e.strerror or e}")


def _clean(rel: str) -> str:
    """``rel`` as a path below the root; ``..`` cannot climb out (it stops at the root)."""
    return posixpath.normpath("/" + rel).lstrip("/")


class _Layers:
    """The layer directories, held open so every lookup starts from the same roots."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.fds: list[int] = []
        try:
            for path in self.paths:
                try:
                    self.fds.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
                except (FileNotFoundError, NotADirectoryError) as e:
                    raise NotFound(f"layer directory {path} does not exist") from e
                except OSError as e:
                    raise _read_error(path, e) from e
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> _Layers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def where(self, layer: int, rel: str) -> str:
        return os.path.join(self.paths[layer], rel) if rel else self.paths[layer]

    def top(self, below: list[int]) -> _Node:
        st = os.fstat(self.fds[below[0]])
        return _Node("", st, below[0], below=list(below))

    def open_dir(self, layer: int, rel: str) -> int | None:
        try:
            return openat2(self.fds[layer], rel or ".", os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise _read_error(self.where(layer, rel), e) from e

    def open_file(self, node: _Node) -> tuple[int, os.stat_result] | None:
        """``node``'s file opened for reading, with its current stat; None if no longer one."""
        where = self.where(node.layer, node.rel)
        try:
            pfd = openat2(self.fds[node.layer], node.rel, os.O_PATH | os.O_NOFOLLOW, _RESOLVE)
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise _read_error(where, e) from e
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                return None
            # reopening the O_PATH fd reaches exactly the inode just checked
            return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC), st
        except OSError as e:
            raise _read_error(where, e) from e
        finally:
            os.close(pfd)


def _xattr_names(target: int | str, where: str) -> list[str]:
    """The xattr names of ``target`` (an fd, or a path whose last component is not followed)."""
    try:
        names = os.listxattr(target, follow_symlinks=isinstance(target, int))
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return []
        raise
    for name in names:
        if name in _REDIRECTS:
            raise Unsupported(
                f"{where} uses overlay redirects or metacopy ({name}), which cove cannot read"
            )
    return sorted(names)


def _public_xattrs(target: int | str, names: list[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in names:
        if name.startswith(_OVERLAY_PRIVATE):
            continue
        try:
            out[name] = os.getxattr(target, name, follow_symlinks=isinstance(target, int))
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed since it was listed
                raise
    return out


def _is_opaque(fd: int, names: list[str]) -> bool:
    for name in (OVERLAY_OPAQUE_XATTR, USER_OPAQUE_XATTR):
        if name in names:
            try:
                if os.getxattr(fd, name) == b"y":
                    return True
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    return False


def _children(layers: _Layers, node: _Node, *, details: bool) -> dict[str, _Node]:
    """The merged entries of directory ``node``, whiteouts included; sets ``node.opaque``.

    ``details`` also reads symlink targets and xattrs (of the deciding layer only).
    """
    found: dict[str, _Node] = {}
    for n, layer in enumerate(node.below):
        fd = layers.open_dir(layer, node.rel)
        if fd is None:
            continue
        where = layers.where(layer, node.rel)
        try:
            names = _xattr_names(fd, where)
            opaque = _is_opaque(fd, names)
            if n == 0:
                node.opaque = opaque
                if details:
                    node.xattrs = _public_xattrs(fd, names)
            with os.scandir(fd) as entries:
                for entry in entries:
                    prev = found.get(entry.name)
                    if prev is not None:
                        if not prev.merging:
                            continue
                        if entry.is_dir(follow_symlinks=False):
                            prev.below.append(layer)
                        else:
                            prev.merging = False  # a whiteout or a file ends the merge
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    child = _Node(posixpath.join(node.rel, entry.name), st, layer)
                    if stat.S_ISDIR(st.st_mode):
                        child.below.append(layer)
                    else:
                        child.merging = False
                        if details and not _is_whiteout(st):
                            try:
                                _details(child, fd, entry.name, where)
                            except OSError as e:
                                if e.errno not in (errno.ENOENT, errno.EINVAL):
                                    raise
                                continue  # gone, or no longer a symlink, since it was listed
                    found[entry.name] = child
        except OSError as e:
            raise _read_error(where, e) from e
        finally:
            os.close(fd)
        if opaque:
            break
    return found


def _details(node: _Node, dfd: int, name: str, where: str) -> None:
    at = f"/proc/self/fd/{dfd}/{name}"  # the fd is fixed; the last component is not followed
    if stat.S_ISLNK(node.st.st_mode):
        node.target = os.readlink(name, dir_fd=dfd)
    node.xattrs = _public_xattrs(at, _xattr_names(at, posixpath.join(where, name)))


def _sort_key(node: _Node) -> bytes:
    return os.fsencode(node.rel)


def _walk(layers: _Layers, top: _Node, *, whiteouts: bool, details: bool) -> Iterator[_Node]:
    """``top`` and everything below it, depth first, each directory's names in byte order.

    Iterative, holding no directory open between steps: a deep tree costs neither
    recursion nor file descriptors.
    """
    stack = [top]
    while stack:
        node = stack.pop()
        if stat.S_ISDIR(node.st.st_mode):
            kids = _children(layers, node, details=details).values()
            yield node
            kept = (k for k in kids if whiteouts or not _is_whiteout(k.st))
            stack.extend(sorted(kept, key=_sort_key, reverse=True))
        else:
            yield node


def changes(upper: str, lowers_top_first: list[str]) -> list[tuple[str, str]]:
    """``docker diff``: ("A"|"C"|"D", "/abs/path") sorted by path.

    A: added, not in the lower view. C: changed, in the lower view (every directory of
    the upper that exists below is one, as Docker reports the parents of changes).
    D: a whiteout in the upper. What an opaque directory hides is not listed entry by
    entry: the directory is C and everything in it A, being new since it was emptied.
    """
    out: list[tuple[str, str]] = []
    with _Layers([upper, *lowers_top_first]) as layers:
        # each upper directory waits with the lower layers whose same directory it covers
        stack: list[tuple[_Node, list[int]]] = [
            (layers.top([0]), list(range(1, len(layers.paths))))
        ]
        while stack:
            node, below = stack.pop()
            mine = _children(layers, node, details=False)
            theirs: dict[str, _Node] = {}
            if below and not node.opaque:
                view = _Node(node.rel, node.st, below[0], below=below)
                theirs = _children(layers, view, details=False)
            for name, child in mine.items():
                path = "/" + child.rel
                if _is_whiteout(child.st):
                    out.append(("D", path))
                    continue
                prev = theirs.get(name)
                there = prev is not None and not _is_whiteout(prev.st)
                out.append(("C" if there else "A", path))
                if stat.S_ISDIR(child.st.st_mode):
                    covers = prev.below if prev is not None and there else []
                    stack.append((child, covers))
    return sorted(out, key=lambda change: os.fsencode(change[1]))


# -- tar ----------------------------------------------------------------------------


class _PaxInfo(tarfile.TarInfo):
    """A TarInfo whose PAX extended header carries the entry's mtime.

    tarfile stamps PAX headers with 0; with SOURCE_DATE_EPOCH every header of the
    archive is expected to carry the given time, and tools comparing archives do check.
    """

    def create_pax_header(
        self, info: Mapping[str, str | int | bytes | Mapping[str, str]], encoding: str
    ) -> bytes:
        buf = super().create_pax_header(info, encoding)
        if len(buf) > tarfile.BLOCKSIZE and buf[156:157] == tarfile.XHDTYPE:
            head = bytearray(buf[: tarfile.BLOCKSIZE])
            head[136:148] = b"%011o\0" % min(max(int(self.mtime), 0), 8**11 - 1)
            head[148:156] = b" " * 8  # the checksum counts its own field as spaces
            head[148:155] = b"%06o\0" % sum(head)
            buf = bytes(head) + buf[tarfile.BLOCKSIZE :]
        return buf


class _Content:
    """Exactly ``size`` bytes of ``fd`` for tarfile, which has already written the size.

    A file that shrinks while read (a running container's log) is padded with zeros,
    as GNU tar does, so the archive stays well-formed; growth past ``size`` is cut off.
    """

    def __init__(self, fd: int, size: int, where: str) -> None:
        self.fd = fd
        self.left = size
        self.where = where

    def read(self, size: int = -1, /) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        parts: list[bytes] = []
        got = 0
        while got < want:
            try:
                data = os.read(self.fd, min(want - got, _CHUNK))
            except OSError as e:
                raise _read_error(self.where, e) from e
            if not data:
                parts.append(bytes(want - got))
                break
            parts.append(data)
            got += len(data)
        self.left -= want
        return b"".join(parts)


# (layer, stat) -> the owner to record
Ids = Callable[[int, os.stat_result], tuple[int, int]]


class _TarWriter:
    def __init__(self, out: BinaryIO, layers: _Layers, ids: Ids, mtime: int | None) -> None:
        self.layers = layers
        self.ids = ids
        self.mtime = mtime
        name = getattr(out, "name", None)
        self.what = f"archive {name}" if isinstance(name, str) else "the archive"
        self.links: dict[tuple[int, int], str] = {}
        try:
            # stream mode: ``out`` may be a pipe; nothing is ever sought
            self.tar = tarfile.open(
                fileobj=out,
                mode="w|",
                format=tarfile.PAX_FORMAT,
                encoding="utf-8",
                errors="surrogateescape",
            )
        except OSError as e:
            raise _write_error(self.what, e) from e

    def close(self) -> None:
        try:
            self.tar.close()
        except OSError as e:
            raise _write_error(self.what, e) from e

    def _emit(self, info: tarfile.TarInfo, content: _Content | None = None) -> None:
        try:
            self.tar.addfile(info, content)
        except OSError as e:
            raise _write_error(self.what, e) from e

    def _info(self, node: _Node, name: str, kind: bytes, st: os.stat_result) -> _PaxInfo:
        info = _PaxInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = self.ids(node.layer, st)
        info.uname = info.gname = ""
        info.mtime = self.mtime if self.mtime is not None else st.st_mtime_ns // _NS
        info.pax_headers = {
            _XATTR_PAX + key: value.decode("utf-8", "surrogateescape")
            for key, value in sorted(node.xattrs.items())
        }
        return info

    def marker(self, node: _Node, name: str, mode: int) -> None:
        """An empty regular file standing for a whiteout, owned and dated like ``node``."""
        info = self._info(node, name, tarfile.REGTYPE, node.st)
        info.mode = mode
        info.pax_headers = {}
        self._emit(info)

    def add(self, node: _Node) -> None:
        st = node.st
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._emit(self._info(node, node.rel, tarfile.DIRTYPE, st))
            return
        if stat.S_ISSOCK(mode):
            return  # tar has no socket type; a socket is its server's, not content
        key = (st.st_dev, st.st_ino)
        first = self.links.get(key) if st.st_nlink > 1 else None
        if first is not None:
            info = self._info(node, node.rel, tarfile.LNKTYPE, st)
            info.linkname = first
            self._emit(info)
            return
        if stat.S_ISREG(mode):
            self._file(node)
        elif stat.S_ISLNK(mode):
            info = self._info(node, node.rel, tarfile.SYMTYPE, st)
            info.linkname = node.target
            self._emit(info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info = self._info(node, node.rel, kind, st)
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._emit(info)
        elif stat.S_ISFIFO(mode):
            self._emit(self._info(node, node.rel, tarfile.FIFOTYPE, st))
        else:
            return
        if st.st_nlink > 1:
            self.links[key] = node.rel

    def _file(self, node: _Node) -> None:
        opened = self.layers.open_file(node)
        if opened is None:
            return
        fd, st = opened
        try:
            info = self._info(node, node.rel, tarfile.REGTYPE, st)
            info.size = st.st_size
            self._emit(info, _Content(fd, st.st_size, self.layers.where(node.layer, node.rel)))
        finally:
            os.close(fd)


def _shifted_top(uid_shift: int, gid_shift: int) -> Ids:
    """Owners as the container sees them: only its upper (layer 0) holds shifted ids."""

    def ids(layer: int, st: os.stat_result) -> tuple[int, int]:
        if layer > 0:
            return st.st_uid, st.st_gid
        return max(st.st_uid - uid_shift, 0), max(st.st_gid - gid_shift, 0)

    return ids


def write_layer_tar(
    upper: str,
    out: BinaryIO,
    *,
    uid_shift: int = 0,
    gid_shift: int = 0,
    mtime: int | None = None,
) -> None:
    """The upper directory as an uncompressed OCI layer tar on ``out`` (``commit``).

    Whiteouts become empty ``.wh.NAME`` files, an opaque directory its entry followed by
    ``DIR/.wh..wh..opq``; overlay-private xattrs are dropped, others go in PAX
    ``SCHILY.xattr.`` records; hardlinks within the tree are tar hardlinks. Entries come
    parents first, names in byte order, so the same tree gives the same bytes. Owners
    are written as (id - shift), at least 0: a user-namespaced container's files belong
    on the host to its shifted ids. ``mtime`` (SOURCE_DATE_EPOCH) replaces every
    entry's own whole-second mtime.
    """
    with _Layers([upper]) as layers:
        writer = _TarWriter(out, layers, _shifted_top(uid_shift, gid_shift), mtime)
        for node in _walk(layers, layers.top([0]), whiteouts=True, details=True):
            if not node.rel:
                continue
            if _is_whiteout(node.st):
                parent, name = posixpath.split(node.rel)
                writer.marker(node, posixpath.join(parent, WHITEOUT_PREFIX + name), 0o600)
                continue
            writer.add(node)
            if node.opaque:
                mode = stat.S_IMODE(node.st.st_mode) & 0o777
                writer.marker(node, posixpath.join(node.rel, WHITEOUT_OPAQUE), mode)
        writer.close()


def write_merged_tar(
    layers_top_first: list[str],
    out: BinaryIO,
    *,
    uid_shift: int = 0,
    gid_shift: int = 0,
) -> None:
    """The merged view of the layers as one plain tar on ``out`` (``export``).

    No whiteouts and no overlay xattrs appear; symlinks are stored, never followed;
    sorted and deterministic. The shift applies to the first layer only, the
    container's upper, written through the user namespace and so owned by shifted
    host ids; the image layers below hold the image's own ids and are written as they
    are (the container sees them through an idmapped mount).
    """
    with _Layers(layers_top_first) as layers:
        writer = _TarWriter(out, layers, _shifted_top(uid_shift, gid_shift), None)
        top = layers.top(list(range(len(layers.paths))))
        for node in _walk(layers, top, whiteouts=False, details=True):
            if node.rel:
                writer.add(node)
        writer.close()


# -- copy -----------------------------------------------------------------------------


class _Copier:
    """Recreates merged nodes below ``destfd``, a directory cove made and nobody else writes."""

    def __init__(self, layers: _Layers, destfd: int, dest: str, base: str, ids: Ids) -> None:
        self.layers = layers
        self.destfd = destfd
        self.dest = dest
        self.base = base
        self.ids = ids
        self.links: dict[tuple[int, int], str] = {}
        self.dirs: list[tuple[str, _Node]] = []
        self._parent: tuple[str, int] | None = None

    def close(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _open_parent(self, rel: str) -> int:
        if self._parent is not None and self._parent[0] == rel:
            return self._parent[1]
        fd = openat2(self.destfd, rel or ".", os.O_PATH | os.O_DIRECTORY, _RESOLVE)
        self.close()
        self._parent = (rel, fd)
        return fd

    def copy(self, node: _Node) -> None:
        out = node.rel[len(self.base) :].lstrip("/") if self.base else node.rel
        if not out:
            self.dirs.append(("", node))
            return
        try:
            self._copy(node, out)
        except OSError as e:
            raise _write_error(os.path.join(self.dest, out), e) from e

    def _copy(self, node: _Node, out: str) -> None:
        parent, name = posixpath.split(out)
        pfd = self._open_parent(parent)
        mode = node.st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=pfd)  # opened up (and dated) once filled
            self.dirs.append((out, node))
            return
        if stat.S_ISREG(mode):
            self._file(node, pfd, name, out)
            return
        if stat.S_ISLNK(mode):
            os.symlink(node.target, name, dir_fd=pfd)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, node.st.st_rdev, dir_fd=pfd)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            return  # sockets belong to their servers
        uid, gid = self.ids(node.layer, node.st)
        os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(name, stat.S_IMODE(mode), dir_fd=pfd)  # just made here: not a symlink
        _set_xattrs(f"/proc/self/fd/{pfd}/{name}", node.xattrs)
        times = (node.st.st_atime_ns, node.st.st_mtime_ns)
        os.utime(name, ns=times, dir_fd=pfd, follow_symlinks=False)

    def _file(self, node: _Node, pfd: int, name: str, out: str) -> None:
        opened = self.layers.open_file(node)
        if opened is None:
            return
        src, st = opened
        try:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                first = self.links.get(key)
                if first is not None:
                    os.link(first, name, src_dir_fd=self.destfd, dst_dir_fd=pfd,
                            follow_symlinks=False)  # fmt: skip
                    return
                self.links[key] = out
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dst = os.open(name, flags, 0o600, dir_fd=pfd)
            try:
                try:
                    _copy_data(src, dst)
                except OSError as e:
                    where = self.layers.where(node.layer, node.rel)
                    raise HostFailure(
                        f"cannot copy {where} to {self.dest}/{out}: {e.strerror}"
                    ) from e
                uid, gid = self.ids(node.layer, st)
                os.fchown(dst, uid, gid)  # before chmod: chown clears setuid bits
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
                _set_xattrs(dst, node.xattrs)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def finish(self) -> None:
        """Directory owners, modes and times, children first: filling a directory re-dates it."""
        self.close()
        for out, node in reversed(self.dirs):
            try:
                fd = openat2(self.destfd, out or ".", os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
                try:
                    uid, gid = self.ids(node.layer, node.st)
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, stat.S_IMODE(node.st.st_mode))
                    _set_xattrs(fd, node.xattrs)
                    os.utime(fd, ns=(node.st.st_atime_ns, node.st.st_mtime_ns))
                finally:
                    os.close(fd)
            except OSError as e:
                raise _write_error(os.path.join(self.dest, out), e) from e


def _copy_data(src: int, dst: int) -> None:
    fast = True  # copy_file_range shares extents where the filesystem can (reflinks)
    while True:
        if fast:
            try:
                n = os.copy_file_range(src, dst, _CHUNK)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                fast = False
                continue
        else:
            data = os.read(src, _CHUNK)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]
        if n == 0:
            return


def _set_xattrs(target: int | str, xattrs: dict[str, bytes]) -> None:
    for key, value in xattrs.items():
        try:
            os.setxattr(target, key, value, follow_symlinks=isinstance(target, int))
        except OSError as e:
            if e.errno not in _NO_XATTRS:  # the volume's filesystem cannot hold them
                raise


def _lookup_dir(layers: _Layers, rel: str) -> _Node | None:
    node = layers.top(list(range(len(layers.paths))))
    for part in rel.split("/") if rel else []:
        child = _children(layers, node, details=False).get(part)
        if child is None or not stat.S_ISDIR(child.st.st_mode):
            return None  # missing, whited out, a file, or a symlink (never followed)
        node = child
    return node


def copy_merged(
    layers_top_first: list[str],
    rel: str,
    dest: str,
    *,
    uid_shift: int = 0,
    gid_shift: int = 0,
) -> bool:
    """Copy the merged view of directory ``rel`` into the empty host directory ``dest``.

    Docker's copy-up of image content into a new volume: modes, owners, times,
    symlinks, hardlinks, xattrs (not overlay's) kept; ``dest`` itself takes the
    directory's owner and mode. A symlink anywhere in ``rel`` is not followed: the
    caller resolves it first. The shifts are added to every id, for a user-namespaced
    container, which sees the volume through no id map (the layers passed are the
    image's, with its own ids). Returns False, copying nothing, if ``rel`` is not a
    directory in the merged view.
    """
    with _Layers(layers_top_first) as layers:
        top = _lookup_dir(layers, _clean(rel))
        if top is None:
            return False
        try:
            destfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise NotFound(f"volume directory {dest} does not exist: {e.strerror}") from e
        try:
            if os.listdir(destfd):
                raise Conflict(f"volume directory {dest} is not empty")

            def ids(layer: int, st: os.stat_result) -> tuple[int, int]:
                return st.st_uid + uid_shift, st.st_gid + gid_shift

            copier = _Copier(layers, destfd, dest, top.rel, ids)
            try:
                for node in _walk(layers, top, whiteouts=False, details=True):
                    copier.copy(node)
                copier.finish()
            finally:
                copier.close()
        finally:
            os.close(destfd)
    return True
