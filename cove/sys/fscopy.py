"""Copies between a container's root filesystem and the host: the engine of ``cove cp``.

The container is untrusted. Whatever it planted (``/evil -> /``, ``/tmp/x ->
/etc/shadow``, a directory swapped for a symlink while we copy) must neither
make us read a host file nor write outside its root. So a container path is
resolved only with ``openat2(RESOLVE_IN_ROOT)`` against the root fd, as if that
fd were ``/``; from there on every step is fd-relative and never follows the
final component: names come from directory listings (no slashes, no ``..``),
entries are pinned with ``O_PATH | O_NOFOLLOW`` and their type is taken from
``fstat`` of that very fd, so a check and the use that follows it concern the
same inode. A host path string that passes through the container's tree is
never handed to ``open``/``stat`` (the CVE-2018-15664 class).

The host side goes through the same code with plain resolution: its paths come
from the user, who may mean their own symlinks. Directory trees are walked with
an explicit stack, because a hostile tree can be deeper than Python's
recursion limit.

Semantics are ``docker cp``'s, with two deliberate differences: an existing
symlink where an entry is written is replaced, never written through (a
top-level DEST symlink is followed only when it resolves, on its own side, to a
directory, as ``/lib -> usr/lib`` must keep working); and copying out drops the
setuid/setgid bits of regular files, since ownership is not preserved (the
rule of GNU ``cp``): a container's setuid binary must not become a host root's.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

from cove.errors import Conflict, CoveError, HostFailure, InvalidSpec, NotFound
from cove.sys.safepath import IN_ROOT
from cove.sys.syscalls import openat2

_AT_FDCWD = -100
_CHUNK = 1 << 23
# copy_file_range and sendfile refuse some pairs of filesystems or file kinds
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_SETID = stat.S_ISUID | stat.S_ISGID


def copy_out(rootfd: int, src: str, dest: str, *, follow_link: bool = False) -> None:
    """Copy ``src`` (a path inside the container) to ``dest`` (a host path), docker cp semantics.

    Created entries belong to the caller; modes (less setuid/setgid on files) and
    times follow the source. With ``follow_link`` a symlink named by ``src`` is
    resolved, still inside ``rootfd``, and its target is copied under the link's name.
    """
    container = _Side(rootfd, IN_ROOT, "the container")
    host = _Side(_AT_FDCWD, 0, "the host")
    _copy(container, src, host, dest, _Copier(owner=None, keep_setid=False), follow_link)


def copy_in(
    src: str, rootfd: int, dest: str, *, uid: int = 0, gid: int = 0, follow_link: bool = False
) -> None:
    """Copy host path ``src`` to ``dest`` inside the container; created entries get uid/gid.

    ``uid``/``gid`` are host ids as the caller sees them (already mapped for a
    user-namespaced container); every entry written, directories merged into
    included, gets them, so the caller needs the right to chown to them. Modes
    and times follow the source.
    """
    host = _Side(_AT_FDCWD, 0, "the host")
    container = _Side(rootfd, IN_ROOT, "the container")
    _copy(host, src, container, dest, _Copier(owner=(uid, gid), keep_setid=True), follow_link)


@dataclass(frozen=True)
class _Side:
    """How path strings of one side resolve: contained in a root fd, or as the host sees them."""

    anchor: int
    resolve: int
    where: str

    def open(self, path: str, flags: int) -> int:
        # RESOLVE_IN_ROOT answers EAGAIN when a rename races with a ".." walk; the kernel
        # asks callers to retry rather than risk a wrong answer
        for _ in range(16):
            try:
                return openat2(self.anchor, path, flags, self.resolve)
            except BlockingIOError:
                continue
        return openat2(self.anchor, path, flags, self.resolve)


@dataclass(frozen=True)
class _PathSpec:
    path: str  # without trailing slashes, "/" for the root
    parent: str
    base: str  # "" for the root itself
    asserts_dir: bool  # docker: a trailing "/" or a last component "." demands a directory

    @property
    def names_dir(self) -> bool:
        """Whether the whole path, not a parent plus an entry, names the object (".", "/")."""
        return self.base in ("", ".", "..")


def _parse(path: str, what: str) -> _PathSpec:
    if not path:
        raise InvalidSpec(f"empty {what} path")
    if "\0" in path:
        raise InvalidSpec(f"{what} path {path!r} has a nul byte")
    trimmed = path.rstrip("/") or "/"
    parent, base = posixpath.split(trimmed)
    asserts_dir = path.endswith("/") or base == "."
    return _PathSpec(trimmed, parent or ".", base, asserts_dir)


@dataclass(frozen=True)
class _Source:
    fd: int  # O_PATH, pinned: a symlink stays the symlink unless it was followed
    st: os.stat_result
    name: str  # what it is called inside an existing destination directory
    contents: bool  # "SRC/.": what is in the directory, not the directory itself


@dataclass(frozen=True)
class _Dest:
    parent: int | None  # O_PATH fd of the directory that holds ``name``
    name: str
    dir: int | None  # O_PATH fd of DEST when it is, or a symlink resolves to, a directory
    exists: bool
    is_link: bool
    asserts_dir: bool


def _copy(
    src_side: _Side, src: str, dst_side: _Side, dest: str, copier: _Copier, follow_link: bool
) -> None:
    try:
        with ExitStack() as fds:
            source = _open_source(src_side, src, follow_link, fds)
            target = _open_dest(dst_side, dest, fds)
            _place(source, target, src, dest, copier)
    except CoveError:
        raise
    except OSError as e:
        at = f"{copier.current}: " if copier.current else ""
        raise HostFailure(f"cannot copy {src} to {dest}: {at}{e.strerror}") from e


def _open_source(side: _Side, src: str, follow_link: bool, fds: ExitStack) -> _Source:
    spec = _parse(src, "source")
    try:
        if spec.names_dir:
            fd = side.open(spec.path, os.O_PATH | os.O_DIRECTORY)
        elif follow_link:
            # resolved from the anchor, not from the parent: an absolute target must
            # land at the container's root, which only the root fd knows
            fd = side.open(spec.path, os.O_PATH)
        else:
            pfd = side.open(spec.parent, os.O_PATH | os.O_DIRECTORY)
            fds.callback(os.close, pfd)
            fd = os.open(spec.base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    except FileNotFoundError as e:
        raise NotFound(f"could not find {src} in {side.where}") from e
    except NotADirectoryError as e:
        if spec.asserts_dir:
            raise InvalidSpec(f"source {src} is not a directory") from e
        raise NotFound(f"could not find {src} in {side.where}") from e
    fds.callback(os.close, fd)
    st = os.fstat(fd)
    if spec.asserts_dir and not stat.S_ISDIR(st.st_mode):
        raise InvalidSpec(f"source {src} is not a directory")
    return _Source(fd, st, spec.base, contents=spec.names_dir)


def _open_dest(side: _Side, dest: str, fds: ExitStack) -> _Dest:
    spec = _parse(dest, "destination")
    if spec.names_dir:
        try:
            fd = side.open(spec.path, os.O_PATH | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise InvalidSpec(f"destination directory {dest} does not exist") from e
        fds.callback(os.close, fd)
        return _Dest(None, "", fd, exists=True, is_link=False, asserts_dir=True)
    try:
        pfd = side.open(spec.parent, os.O_PATH | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise InvalidSpec(f"cannot copy to {dest}: no such directory {spec.parent}") from e
    fds.callback(os.close, pfd)
    try:
        st = os.stat(spec.base, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return _Dest(
            pfd, spec.base, None, exists=False, is_link=False, asserts_dir=spec.asserts_dir
        )
    dfd: int | None = None
    if stat.S_ISDIR(st.st_mode):
        dfd = os.open(
            spec.base, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd
        )
    elif stat.S_ISLNK(st.st_mode):
        try:
            dfd = side.open(spec.path, os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            # dangling, looping or not a directory: the link itself is what gets replaced
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
    if dfd is not None:
        fds.callback(os.close, dfd)
    is_link = stat.S_ISLNK(st.st_mode)
    return _Dest(pfd, spec.base, dfd, exists=True, is_link=is_link, asserts_dir=spec.asserts_dir)


def _place(source: _Source, target: _Dest, src: str, dest: str, copier: _Copier) -> None:
    """Decide where SRC goes, by docker cp's table; the copier does the writing."""
    if stat.S_ISDIR(source.st.st_mode):
        if target.dir is None:
            if target.exists and not target.is_link:
                raise InvalidSpec(f"cannot copy a directory to a file: {dest}")
            assert target.parent is not None
            copier.entry(source.fd, source.st, target.parent, target.name, dest)
        elif source.contents:
            copier.contents(source.fd, target.dir, dest)
        else:
            shown = posixpath.join(dest, source.name)
            copier.entry(source.fd, source.st, target.dir, source.name, shown)
        return
    if target.dir is not None:
        copier.entry(
            source.fd, source.st, target.dir, source.name, posixpath.join(dest, source.name)
        )
        return
    if target.asserts_dir:
        if target.exists and not target.is_link:
            raise InvalidSpec(f"destination {dest} is not a directory")
        raise InvalidSpec(f"destination directory {dest} does not exist")
    assert target.parent is not None
    copier.entry(source.fd, source.st, target.parent, target.name, dest)


@dataclass
class _Frame:
    """One directory being copied: its source and destination fds and what is left to do."""

    src: int
    dst: int
    meta: os.stat_result | None  # applied once the directory is complete; None keeps DEST's own
    shown: str
    names: Iterator[str]
    rel: str = ""  # the directory's path below the copy's source root (for ``skip``)


@dataclass
class _Copier:
    """Writes entries below destination directory fds, never following a name it writes."""

    owner: tuple[int, int] | None  # chown every written entry (copy_in); None keeps the caller's
    keep_setid: bool
    current: str = ""  # the destination path being written, for error messages
    made: set[tuple[int, int]] = field(default_factory=set)  # directories this copy created
    chmod: int | None = None  # a build's COPY --chmod: every file and directory gets it
    keep_owner: bool = False  # COPY --from: entries keep their source's uid/gid
    # a build's COPY never swaps a symlink for a directory (BuildKit: "cannot copy to
    # non-directory"): /bin -> usr/bin must survive ``COPY rootfs/ /``
    keep_links: bool = False
    # a build's .dockerignore: skip(path below the source root, is_dir) leaves an entry out
    skip: Callable[[str, bool], bool] | None = None

    def entry(
        self, fd: int, st: os.stat_result, dirfd: int, name: str, shown: str, rel: str = ""
    ) -> None:
        """Copy the pinned source ``fd`` to ``name`` in directory ``dirfd``."""
        self.current = shown
        if not stat.S_ISDIR(st.st_mode):
            self._leaf(fd, st, dirfd, name, shown)
            return
        src = _reopen_dir(fd)
        try:
            dst = self._mkdir(dirfd, name, st, shown)
        except BaseException:
            os.close(src)
            raise
        self._walk(src, dst, st, shown, rel)

    def contents(self, fd: int, dirfd: int, shown: str, rel: str = "") -> None:
        """Copy what is in source directory ``fd`` into the existing directory ``dirfd``."""
        self.current = shown
        mine, theirs = os.fstat(fd), os.fstat(dirfd)
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            raise InvalidSpec(f"cannot copy a directory into itself: {shown}")
        src = _reopen_dir(fd)
        try:
            dst = os.dup(dirfd)
        except BaseException:
            os.close(src)
            raise
        self._walk(src, dst, None, shown, rel)

    def _walk(
        self, src: int, dst: int, meta: os.stat_result | None, shown: str, rel: str = ""
    ) -> None:
        """Copy the tree below ``src`` into ``dst``; takes ownership of both fds."""
        frames: list[_Frame] = []
        try:
            frames.append(_Frame(src, dst, meta, shown, _names(src), rel))
        except BaseException:
            os.close(src)
            os.close(dst)
            raise
        try:
            while frames:
                top = frames[-1]
                name = next(top.names, None)
                if name is None:
                    frames.pop()
                    try:
                        if top.meta is not None:
                            self.current = top.shown
                            self._finish_dir(top.dst, top.meta)
                    finally:
                        os.close(top.src)
                        os.close(top.dst)
                    continue
                child_shown = posixpath.join(top.shown, name)
                child_rel = posixpath.join(top.rel, name) if top.rel else name
                self.current = child_shown
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top.src)
                except FileNotFoundError:
                    continue  # removed since the listing: a live container changes under us
                try:
                    st = os.fstat(fd)
                    if self.skip is not None and self.skip(child_rel, stat.S_ISDIR(st.st_mode)):
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        self._leaf(fd, st, top.dst, name, child_shown)
                        continue
                    if (st.st_dev, st.st_ino) in self.made:
                        raise InvalidSpec(f"cannot copy a directory into itself: {child_shown}")
                    csrc = _reopen_dir(fd)
                    try:
                        cdst = self._mkdir(top.dst, name, st, child_shown)
                    except BaseException:
                        os.close(csrc)
                        raise
                    try:
                        names = _names(csrc)
                    except BaseException:
                        os.close(csrc)
                        os.close(cdst)
                        raise
                    frames.append(_Frame(csrc, cdst, st, child_shown, names, child_rel))
                finally:
                    os.close(fd)
        finally:
            for frame in frames:
                os.close(frame.src)
                os.close(frame.dst)

    def _leaf(self, fd: int, st: os.stat_result, dirfd: int, name: str, shown: str) -> None:
        self.current = shown
        if stat.S_ISREG(st.st_mode):
            self._file(fd, st, dirfd, name, shown)
        elif stat.S_ISLNK(st.st_mode):
            self._symlink(fd, st, dirfd, name, shown)
        elif stat.S_ISFIFO(st.st_mode):
            self._fifo(st, dirfd, name, shown)
        # device nodes and sockets are skipped: a copy of one is not the thing itself

    def _clear(self, dirfd: int, name: str, shown: str, *, want_dir: bool) -> bool:
        """Make room for ``name``; True when an existing directory stays to be merged into.

        Like docker's extraction, a directory and a non-directory never replace each
        other; unlike it, a symlink always gives way, so nothing is written through it.
        """
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if want_dir:
                return True
            raise Conflict(f"cannot overwrite directory {shown} with a non-directory")
        if want_dir and (self.keep_links or not stat.S_ISLNK(st.st_mode)):
            raise Conflict(f"cannot overwrite non-directory {shown} with a directory")
        os.unlink(name, dir_fd=dirfd)
        return False

    def _mkdir(self, dirfd: int, name: str, st: os.stat_result, shown: str) -> int:
        """A readable fd for directory ``name`` in ``dirfd``, created (private) or merged into."""
        created = not self._clear(dirfd, name, shown, want_dir=True)
        if created:
            # private until complete; the source's mode is applied by _finish_dir
            os.mkdir(name, 0o700, dir_fd=dirfd)
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd
        )
        try:
            got = os.fstat(fd)
            if (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino):
                raise InvalidSpec(f"cannot copy a directory into itself: {shown}")
            if created:
                self.made.add((got.st_dev, got.st_ino))
            owner = self._owner_for(st)
            if owner is not None:
                os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _finish_dir(self, fd: int, st: os.stat_result) -> None:
        # after the children: their creation would move the mtime, a read-only mode block them
        os.fchmod(fd, stat.S_IMODE(st.st_mode) if self.chmod is None else self.chmod)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def _file(self, fd: int, st: os.stat_result, dirfd: int, name: str, shown: str) -> None:
        # reopening the pinned O_PATH fd reads exactly the inode whose type was checked;
        # opening the name again could meet a fifo or device swapped in meanwhile
        src = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._clear(dirfd, name, shown, want_dir=False)
            # O_EXCL: should something reappear at the name, fail instead of opening it
            out = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dirfd,
            )
            try:
                _copy_data(src, out, st.st_size)
                owner = self._owner_for(st)
                if owner is not None:
                    os.fchown(out, *owner)  # before fchmod: chown clears setuid bits
                os.fchmod(out, self._file_mode(st))
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(out)
        finally:
            os.close(src)

    def _owner_for(self, st: os.stat_result) -> tuple[int, int] | None:
        return (st.st_uid, st.st_gid) if self.keep_owner else self.owner

    def _file_mode(self, st: os.stat_result) -> int:
        if self.chmod is not None:
            return self.chmod
        mode = stat.S_IMODE(st.st_mode)
        return mode if self.keep_setid else mode & ~_SETID

    def _symlink(self, fd: int, st: os.stat_result, dirfd: int, name: str, shown: str) -> None:
        target = os.readlink("", dir_fd=fd)  # an O_PATH fd on the link itself
        self._clear(dirfd, name, shown, want_dir=False)
        os.symlink(target, name, dir_fd=dirfd)
        owner = self._owner_for(st)
        if owner is not None:
            os.chown(name, *owner, dir_fd=dirfd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dirfd, follow_symlinks=False)

    def _fifo(self, st: os.stat_result, dirfd: int, name: str, shown: str) -> None:
        self._clear(dirfd, name, shown, want_dir=False)
        os.mkfifo(name, 0o600, dir_fd=dirfd)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return  # replaced under us; what is there now is not ours to touch
            # there is no fchmod for an O_PATH fd and chmod by name follows a link
            # swapped in; the fd's magic link names exactly the fifo made above
            pinned = f"/proc/self/fd/{fd}"
            owner = self._owner_for(st)
            if owner is not None:
                os.chown(pinned, *owner)
            os.chmod(pinned, stat.S_IMODE(st.st_mode))
            os.utime(pinned, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)


def _reopen_dir(fd: int) -> int:
    """A readable fd on the directory pinned by O_PATH ``fd`` (listing needs one)."""
    return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)


def _names(fd: int) -> Iterator[str]:
    return iter(sorted(os.listdir(fd)))


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy the first ``size`` bytes of ``src`` to the empty ``dst``, keeping holes.

    Only data extents are copied (SEEK_DATA/SEEK_HOLE), so a sparse disk image
    stays sparse; a file that shrinks meanwhile is copied as far as it goes.
    """
    pump = _Pump()
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
            stop = min(os.lseek(src, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole up to end of file
                size = min(size, os.fstat(src).st_size)
                break
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, stop = pos, size  # no hole support here: all of it is data
        if start >= size:
            break
        reached = pump.copy(src, dst, start, stop)
        if reached < stop:
            size = reached
            break
        pos = stop
    os.ftruncate(dst, size)


class _Pump:
    """Moves byte ranges fd to fd in the kernel, stepping down to what the files allow."""

    def __init__(self) -> None:
        self.kernel = "copy_file_range"

    def copy(self, src: int, dst: int, start: int, stop: int) -> int:
        """Copy [start, stop) to the same offsets; returns how far it got (short at EOF)."""
        off = start
        while off < stop:
            n = self._step(src, dst, off, min(_CHUNK, stop - off))
            if n == 0:
                break
            off += n
        return off

    def _step(self, src: int, dst: int, off: int, count: int) -> int:
        if self.kernel == "copy_file_range":
            try:
                n = os.copy_file_range(src, dst, count, off, off)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = "sendfile"
            else:
                if n:
                    return n
        if self.kernel == "sendfile":
            try:
                os.lseek(dst, off, os.SEEK_SET)
                n = os.sendfile(dst, src, off, count)
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel = "none"
            else:
                if n:
                    return n
        # a 0 from the kernel paths is not trusted as EOF: some filesystems say 0 for
        # "not supported" (pseudo files); a plain read settles it
        data = os.pread(src, count, off)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(dst, view, off + len(data) - len(view)) :]
        return len(data)
