"""Unpack one layer tar stream into a directory usable as an overlayfs lowerdir.

Safety model (the part that matters): every path in the archive is resolved
relative to the layer directory with ``openat2(RESOLVE_IN_ROOT)``, so ``..``,
absolute paths and symlinks planted earlier in the same archive all resolve
*inside* the layer directory, never outside it. Entries whose cleaned name
climbs above the root (``../x``) are refused outright, as Docker does. The
final component is never followed (``O_NOFOLLOW``, ``*at`` calls without
follow). Hardlink targets are resolved the same way.

OCI whiteouts become overlayfs whiteouts: ``.wh.NAME`` a 0/0 character device,
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on the directory.

Speed: one thread parses the tar (it must: entries apply in order) and resolves every
directory; creating a file's inode is most of the kernel's work, so regular files and
symlinks can be handed to worker threads (``workers``), each creating one name in a
directory fd the parser resolved. The parser waits for the workers ("flush") before
anything whose outcome could depend on a name still being made: resolving a directory it
has not cached, removing or replacing a name, a hardlink, and the directory metadata at the
end; and before reusing a name a worker has not finished. So every entry lands as it would
one at a time.
"""

from __future__ import annotations

import errno
import os
import posixpath
import queue
import shutil
import stat
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cove.errors import CorruptContent, UnsafeArchive, Unsupported
from cove.sys import safepath
from cove.sys.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2
from cove.sys.userns import rootless

WHITEOUT_PREFIX = ".wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# what overlayfs reads instead when mounted with "userxattr" (inside a user namespace)
USER_OPAQUE_XATTR = "user.overlay.opaque"
# xattrs an archive may not set: they would steer overlayfs itself
_FORBIDDEN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_XATTR_PAX = "SCHILY.xattr."
_CHUNK = 1 << 20
_ZERO = bytes(_CHUNK)
_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
# directory fds the parser keeps (O_PATH): entries of a tar come grouped by directory, but
# a directory's files and its subdirectories interleave
_MAX_DIRS = 256
# a regular file up to this size is read whole by the parser and written by a worker;
# bigger ones are streamed by the parser itself
_ASYNC_MAX = 8 << 20
# file bytes handed to workers and not yet written: past this the parser waits
_INFLIGHT_MAX = 64 << 20
# names remembered to skip existence checks in a fresh unpack; past this, stat again
_MAX_KNOWN = 1 << 20


def default_workers() -> int:
    """Worker threads for an unpack: inode creation scales with cores (measured: two
    threads make files in about half the time of one on a 2-core host)."""
    return max(2, min(4, os.cpu_count() or 1))


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0  # regular file content written
    # [entries, bytes] as a walk of the result finds them (store.layer_figures: the root and
    # every name below it; regular bytes once per inode), when the writer could count them
    # itself: nothing was removed and no parent was made implicitly. None: walk the tree
    disk: list[int] | None = None


@dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: float
    xattrs: dict[str, bytes] = field(default_factory=dict)


class _Pool:
    """Worker threads running the parser's file creations; the first failure is kept and
    raised by ``wait`` (later tasks are skipped)."""

    def __init__(self, n: int) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._cond = threading.Condition()
        self._sent = 0
        self._done = 0
        self.error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"unpack-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self.error is not None:
            self.wait()
        self._sent += 1
        self._q.put((fn, args))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            fn, args = item
            try:
                if self.error is None:
                    fn(*args)
            except BaseException as e:
                if self.error is None:
                    self.error = e
            finally:
                with self._cond:
                    self._done += 1
                    self._cond.notify()

    def wait(self, *, check: bool = True) -> None:
        """Until every task submitted so far is done; raise the first failure."""
        with self._cond:
            while self._done < self._sent:
                self._cond.wait()
        if check and self.error is not None:
            raise self.error

    def close(self) -> None:
        self.wait(check=False)
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join()


def clean_name(name: str) -> str:
    """The entry's path relative to the layer root, '' for the root itself.

    Absolute paths are made relative (contained, as Docker does); a path that
    climbs above the root after cleaning is refused.
    """
    if "\0" in name:
        raise UnsafeArchive(f"tar entry {name!r} has a nul byte in its name")
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    raw = posixpath.normpath(name.lstrip("/")) if name.lstrip("/") else "."
    if raw == ".." or raw.startswith("../"):
        raise UnsafeArchive(f"tar entry {name!r} points outside the rootfs")
    return "" if cleaned in (".", "") else cleaned


class LayerWriter:
    """Writes the entries of one tar stream below ``root`` (an empty directory)."""

    def __init__(
        self,
        root: str,
        *,
        privileged: bool | None = None,
        whiteouts: bool = True,
        workers: int = 0,
        fresh: bool = False,
    ) -> None:
        self.root = root
        # False for archives that are not layers (ADD, a build context): ".wh." names are
        # files there, as Docker extracts them
        self.whiteouts = whiteouts
        self.privileged = os.geteuid() == 0 if privileged is None else privileged
        # rootless (root of the user's namespace): chown works within the mapped range, but
        # trusted.* xattrs and device nodes are the initial namespace's alone
        self.rootless = rootless()
        self.rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stats = LayerStats()
        self._dirs: dict[str, _DirMeta] = {}
        # rel -> (O_PATH fd, inode) of directories resolved inside the root. Valid while no
        # name is removed: creating names never changes what an existing path resolves to
        self._cache: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._retired: list[int] = []  # fds out of the cache that a worker may still use
        # (directory inode, name) handed to workers since the last flush
        self._pending: set[tuple[int, str]] = set()
        self._inflight = 0
        self._pool = _Pool(workers) if workers > 0 else None
        # a new inode takes the creator's ids unless its directory is setgid, when it takes
        # the directory's group. In a fresh unpack no directory is: this writer makes them
        # without S_ISGID and sets their modes at the end, so a chown to the creator's very
        # ids can be skipped, unless the root itself has it. Anywhere else (a build's ADD
        # extracting into an existing rootfs) a directory already there may be setgid: always
        # chown then, or a 0:0 set-id file would keep that directory's group
        self._own_ids: tuple[int, int] | None = (os.geteuid(), os.getegid())
        rst = os.fstat(self.rootfd)
        if not fresh or rst.st_mode & stat.S_ISGID:
            self._own_ids = None
        # fresh (the root starts empty and only this writer adds to it): directory inode ->
        # every name made in it, so a name not there needs no stat to know it is absent.
        # Directories this writer made hold only what it made, until anything is removed
        self._known: dict[int, set[str]] | None = {rst.st_ino: set()} if fresh else None
        self._known_count = 0
        # what a walk of the result will find (LayerStats.disk); None once it cannot be told
        self._disk: list[int] | None = [1, 0] if fresh else None

    def _count(self, size: int = 0) -> None:
        """One new name (of ``size`` regular bytes in a new inode)."""
        if self._disk is not None:
            self._disk[0] += 1
            self._disk[1] += size

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()  # no worker may still use an fd closed below
        for fd, _ in self._cache.values():
            os.close(fd)
        self._cache.clear()
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()
        os.close(self.rootfd)

    # -- path resolution ------------------------------------------------

    def _flush(self) -> None:
        """Wait for the workers: every name handed to them exists (or the unpack fails)."""
        if self._pool is not None:
            self._pool.wait()
        self._pending.clear()
        self._inflight = 0
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _remember(self, rel: str, fd: int, ino: int) -> None:
        self._cache[rel] = (fd, ino)
        if len(self._cache) > _MAX_DIRS:
            self._retired.append(self._cache.popitem(last=False)[1][0])

    def _forget_dirs(self) -> None:
        """A name was removed: cached resolutions may be stale (the caller's fd stays open
        until the next flush), and so may the names known (an inode number can come back)."""
        self._retired.extend(fd for fd, _ in self._cache.values())
        self._cache.clear()
        if self._known is not None:
            self._known.clear()

    def _made(self, ino: int, base: str) -> None:
        """``base`` now exists in directory ``ino``."""
        if self._known is None:
            return
        names = self._known.get(ino)
        if names is not None:
            names.add(base)
            self._known_count += 1
            if self._known_count > _MAX_KNOWN:
                self._known = None

    def _open_dir(self, rel: str, *, create: bool) -> tuple[int, int]:
        """An O_PATH fd (and its inode) for directory ``rel`` resolved inside the root,
        creating it if asked."""
        hit = self._cache.get(rel)
        if hit is not None:
            self._cache.move_to_end(rel)
            return hit
        # the resolution may pass through names the workers are still making
        self._flush()
        try:
            try:
                fd = safepath.open_dir(self.rootfd, rel, create=False)
            except FileNotFoundError:
                if not create:
                    raise
                if self._known is not None:
                    self._known.clear()  # what make_dirs adds is not noted one by one
                self._disk = None
                fd = safepath.open_dir(self.rootfd, rel, create=True)
        except safepath.NotADirectory as e:
            raise UnsafeArchive(f"tar entry parent {rel!r} is not a directory") from e
        ino = os.fstat(fd).st_ino
        self._remember(rel, fd, ino)
        return fd, ino

    def _remove(self, pfd: int, ino: int, base: str, *, keep_dir: bool) -> bool:
        """Remove whatever is at ``base`` in ``pfd``, unless it is a dir and ``keep_dir``;
        True if a directory is (still) there."""
        if self._known is not None:
            names = self._known.get(ino)
            if names is not None and base not in names:
                return False  # never made here, and nothing else writes here
        if (ino, base) in self._pending:
            self._flush()  # a worker is making this very name
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode) and keep_dir:
            return True
        self._flush()  # a worker may be making names below what goes away
        if stat.S_ISDIR(st.st_mode):
            # pfd is the parent, never below what goes away
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        self._forget_dirs()
        self._disk = None
        return False

    def _ids(self, member: tarfile.TarInfo) -> tuple[int, int] | None:
        """The owner to set on a new inode; None when it has it already (or cannot)."""
        if not self.privileged or (member.uid, member.gid) == self._own_ids:
            return None
        return member.uid, member.gid

    def _hand_off(self, ino: int, base: str, size: int, fn: Callable[..., None],
                  *args: Any) -> None:  # fmt: skip
        assert self._pool is not None
        self._pending.add((ino, base))
        self._pool.submit(fn, *args)
        self._inflight += size
        if self._inflight > _INFLIGHT_MAX:
            self._flush()

    # -- entries ----------------------------------------------------------

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.stats.entries += 1
        rel = clean_name(member.name)
        parent, base = posixpath.split(rel)
        if self.whiteouts and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base)
            return
        xattrs = _xattrs(member)
        if member.isdir():
            if rel:
                pfd, ino = self._open_dir(parent, create=True)
                made = not self._remove(pfd, ino, base, keep_dir=True)
                if made:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                    self._made(ino, base)
                    self._count()
                if made or rel not in self._cache:
                    # invariant: base is a real directory in pfd (just made or kept, never a
                    # symlink: O_NOFOLLOW), so this fd is what rel resolves to in the root
                    fd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, dir_fd=pfd)  # fmt: skip
                    dino = os.fstat(fd).st_ino
                    if rel in self._cache:
                        self._retired.append(self._cache.pop(rel)[0])
                    self._remember(rel, fd, dino)
                    if made and self._known is not None:
                        self._known[dino] = set()  # empty, and only this writer adds to it
            self._dirs[rel] = _DirMeta(member.mode, member.uid, member.gid, member.mtime, xattrs)
            return
        if not rel:
            raise UnsafeArchive(f"tar entry {member.name!r} would replace the rootfs itself")
        pfd, ino = self._open_dir(parent, create=True)
        if member.islnk():
            self._flush()  # the target may be a name a worker is making
            self._hardlink(member, pfd, ino, base)
            return
        self._remove(pfd, ino, base, keep_dir=False)
        self._made(ino, base)  # noted before it is made: a name noted but absent is harmless
        if member.issym():
            self._count()
            if self._pool is not None:
                self._hand_off(ino, base, 0, _make_symlink, pfd, base, member.linkname,
                               self._ids(member), xattrs, _ns(member.mtime))  # fmt: skip
            else:
                _make_symlink(pfd, base, member.linkname, self._ids(member), xattrs,
                              _ns(member.mtime))  # fmt: skip
        elif member.isreg():
            if self._pool is not None and member.size <= _ASYNC_MAX:
                data = _read_member(member, tar)
                self.stats.bytes += len(data)
                self._count(len(data))
                self._hand_off(ino, base, len(data), _make_file, pfd, base, data,
                               self._ids(member), member.mode & 0o7777, xattrs,
                               _ns(member.mtime))  # fmt: skip
            else:
                self._regular(member, tar, pfd, base, xattrs)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._special(member, pfd, base, xattrs)
        else:
            raise UnsafeArchive(f"tar entry {member.name!r} has unsupported type {member.type!r}")

    def _whiteout(self, parent: str, base: str) -> None:
        pfd, ino = self._open_dir(parent, create=True)
        if base == WHITEOUT_OPAQUE:
            meta = self._dirs.setdefault(parent, _DirMeta(-1, -1, -1, -1.0))
            meta.xattrs[OVERLAY_OPAQUE_XATTR] = b"y"
            meta.xattrs[USER_OPAQUE_XATTR] = b"y"
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if name in ("", ".", "..") or "/" in name:
            raise UnsafeArchive(f"bad whiteout entry {base!r} in {parent or '/'!r}")
        if not self.privileged:
            raise Unsupported("whiteouts need root (overlay whiteouts are 0/0 device nodes)")
        self._remove(pfd, ino, name, keep_dir=False)
        self._made(ino, name)
        # invariant: pfd was resolved inside the root and name has no slash
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        self._count()

    def _hardlink(self, member: tarfile.TarInfo, pfd: int, ino: int, base: str) -> None:
        target = clean_name(member.linkname)
        missing = f"hardlink {member.name!r} target {member.linkname!r} is not in the layer"
        if not target:
            raise UnsafeArchive(f"hardlink {member.name!r} points at the rootfs itself")
        tparent, tbase = posixpath.split(target)
        try:
            tfd = openat2(self.rootfd, tparent or ".", os.O_PATH | os.O_DIRECTORY, _RESOLVE)
        except OSError as e:
            raise UnsafeArchive(missing) from e
        try:
            try:
                st = os.stat(tbase, dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError as e:
                raise UnsafeArchive(missing) from e
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeArchive(f"hardlink {member.name!r} targets a directory")
            try:
                if os.path.samestat(st, os.stat(base, dir_fd=pfd, follow_symlinks=False)):
                    return
            except FileNotFoundError:
                pass
            self._remove(pfd, ino, base, keep_dir=False)
            self._made(ino, base)
            # invariant: both fds were resolved inside the root; neither name is followed
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            self._count()  # a name, no new bytes: a walk counts an inode's bytes once
        finally:
            os.close(tfd)

    def _regular(
        self,
        member: tarfile.TarInfo,
        tar: tarfile.TarFile,
        pfd: int,
        base: str,
        xattrs: dict[str, bytes],
    ) -> None:
        fd = os.open(
            base,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=pfd,
        )
        try:
            src = tar.extractfile(member)
            size = 0
            if src is not None:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if len(chunk) == _CHUNK and chunk == _ZERO:
                        os.lseek(fd, _CHUNK, os.SEEK_CUR)  # keep holes: sparse stays sparse
                    else:
                        _write_all(fd, chunk)
                if size != member.size:
                    raise CorruptContent(f"tar entry {member.name!r} is truncated")
                os.ftruncate(fd, size)
            self.stats.bytes += size
            self._count(size)
            _set_meta(fd, self._ids(member), member.mode & 0o7777, xattrs, _ns(member.mtime))
        finally:
            os.close(fd)

    def _special(
        self, member: tarfile.TarInfo, pfd: int, base: str, xattrs: dict[str, bytes]
    ) -> None:
        if member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
        elif not self.privileged:
            return  # unprivileged users cannot make device nodes; rootless mode skips them
        elif self.rootless:
            # no mknod in a user namespace: an empty regular file keeps the name (Podman's
            # placeholder); never a 0/0 device, which overlayfs would take for a whiteout
            os.close(os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=pfd))  # fmt: skip
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
        self._count()
        if self.privileged:
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        os.chmod(base, member.mode & 0o7777, dir_fd=pfd)
        _meta_nofollow(pfd, base, xattrs, _ns(member.mtime))

    def finish(self) -> None:
        """Apply directory metadata deepest first, so restrictive modes do not block writes."""
        self._flush()
        self.stats.disk = list(self._disk) if self._disk is not None else None
        for rel in sorted(self._dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            meta = self._dirs[rel]
            try:
                fd = openat2(self.rootfd, rel or ".", os.O_RDONLY | os.O_DIRECTORY,
                             _RESOLVE | RESOLVE_NO_SYMLINKS)  # fmt: skip
            except OSError as e:
                # a later entry replaced this directory (or a parent) with something else
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                if meta.mode >= 0:
                    if self.privileged:
                        os.fchown(fd, meta.uid, meta.gid)
                    os.fchmod(fd, meta.mode & 0o7777)
                for key, value in meta.xattrs.items():
                    if key == OVERLAY_OPAQUE_XATTR and self.rootless:
                        continue  # overlay mounted with userxattr reads user.overlay.opaque
                    if key == OVERLAY_OPAQUE_XATTR and not self.privileged:
                        raise Unsupported("opaque whiteouts need root (trusted.* xattrs)")
                    os.setxattr(fd, key, value)
                if meta.mtime >= 0:
                    os.utime(fd, ns=(_ns(meta.mtime),) * 2)
            finally:
                os.close(fd)


# -- what a worker (or the parser) does for one entry; each makes one new name in a
# directory fd the parser resolved inside the root, and never follows it


def _read_member(member: tarfile.TarInfo, tar: tarfile.TarFile) -> bytes:
    src = tar.extractfile(member)
    data = src.read() if src is not None else b""
    if len(data) != member.size:
        raise CorruptContent(f"tar entry {member.name!r} is truncated")
    return data


def _make_file(pfd: int, base: str, data: bytes, ids: tuple[int, int] | None, mode: int,
               xattrs: dict[str, bytes], ns: int) -> None:  # fmt: skip
    # O_EXCL|O_NOFOLLOW: never writes through anything already at base
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=pfd)  # fmt: skip
    try:
        if len(data) < _CHUNK:
            _write_all(fd, data)
        else:
            view, hole = memoryview(data), False
            for off in range(0, len(data), _CHUNK):
                chunk = view[off : off + _CHUNK]
                hole = len(chunk) == _CHUNK and chunk == _ZERO
                if hole:
                    os.lseek(fd, _CHUNK, os.SEEK_CUR)  # keep holes: sparse stays sparse
                else:
                    _write_all(fd, chunk)
            if hole:
                os.ftruncate(fd, len(data))
        _set_meta(fd, ids, mode, xattrs, ns)
    finally:
        os.close(fd)


def _set_meta(fd: int, ids: tuple[int, int] | None, mode: int, xattrs: dict[str, bytes],
              ns: int) -> None:  # fmt: skip
    if ids is not None:
        os.fchown(fd, *ids)
    os.fchmod(fd, mode)  # after the chown, which clears set-id bits
    for key, value in xattrs.items():
        os.setxattr(fd, key, value)
    os.utime(fd, ns=(ns, ns))


def _make_symlink(pfd: int, base: str, target: str, ids: tuple[int, int] | None,
                  xattrs: dict[str, bytes], ns: int) -> None:  # fmt: skip
    os.symlink(target, base, dir_fd=pfd)
    if ids is not None:
        os.chown(base, *ids, dir_fd=pfd, follow_symlinks=False)
    _meta_nofollow(pfd, base, xattrs, ns)


def _meta_nofollow(pfd: int, base: str, xattrs: dict[str, bytes], ns: int) -> None:
    proc = f"/proc/self/fd/{pfd}/{base}"  # fd is fixed, last component not followed
    for key, value in xattrs.items():
        os.setxattr(proc, key, value, follow_symlinks=False)
    os.utime(base, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000)


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith(_XATTR_PAX):
            name = key[len(_XATTR_PAX) :]
            if name.startswith(_FORBIDDEN_XATTR_PREFIXES):
                continue
            out[name] = value.encode("utf-8", "surrogateescape")
    return out


def unpack_stream(
    stream: Any,
    dest: str,
    what: str,
    *,
    privileged: bool | None = None,
    whiteouts: bool = True,
    workers: int = 0,
    fresh: bool = False,
) -> LayerStats:
    """Extract tar ``stream`` below the empty directory ``dest``; the caller removes it on error.

    ``workers``: threads that create files and symlinks beside the parsing one (0: none).
    ``fresh``: ``dest`` is empty and nothing else writes below it while this runs."""
    writer = LayerWriter(
        dest, privileged=privileged, whiteouts=whiteouts, workers=workers, fresh=fresh
    )
    try:
        try:
            tar = tarfile.open(
                fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
            )
            for member in tar:
                writer.add(member, tar)
        except (tarfile.ReadError, tarfile.HeaderError, EOFError) as e:
            raise CorruptContent(f"{what}: truncated or invalid tar: {e}") from e
        writer.finish()
        return writer.stats
    except OSError as e:
        raise CorruptContent(f"{what}: cannot unpack entry: {e}") from e
    finally:
        writer.close()
