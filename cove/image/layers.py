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
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
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


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0  # regular file content written


@dataclass
class _DirMeta:
    mode: int
    uid: int
    gid: int
    mtime: float
    xattrs: dict[str, bytes] = field(default_factory=dict)


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
        self, root: str, *, privileged: bool | None = None, whiteouts: bool = True
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
        self._cache: tuple[str, int] | None = None

    def close(self) -> None:
        self._drop_cache()
        os.close(self.rootfd)

    # -- path resolution ------------------------------------------------

    def _drop_cache(self) -> None:
        if self._cache:
            os.close(self._cache[1])
            self._cache = None

    def _open_dir(self, rel: str, *, create: bool) -> int:
        """An O_PATH fd for directory ``rel`` resolved inside the root, creating it if asked."""
        if self._cache and self._cache[0] == rel:
            return self._cache[1]
        try:
            fd = safepath.open_dir(self.rootfd, rel, create=create)
        except safepath.NotADirectory as e:
            raise UnsafeArchive(f"tar entry parent {rel!r} is not a directory") from e
        self._drop_cache()
        self._cache = (rel, fd)
        return fd

    def _remove(self, pfd: int, base: str, *, keep_dir: bool) -> None:
        """Remove whatever is at ``base`` in ``pfd``, unless it is a dir and ``keep_dir``."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            # the cached fd is pfd itself (the parent), never below what goes away
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)

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
                pfd = self._open_dir(parent, create=True)
                self._remove(pfd, base, keep_dir=True)
                if not _exists(pfd, base):
                    os.mkdir(base, 0o700, dir_fd=pfd)
            self._dirs[rel] = _DirMeta(member.mode, member.uid, member.gid, member.mtime, xattrs)
            return
        if not rel:
            raise UnsafeArchive(f"tar entry {member.name!r} would replace the rootfs itself")
        pfd = self._open_dir(parent, create=True)
        if member.islnk():
            self._hardlink(member, pfd, base)
            return
        self._remove(pfd, base, keep_dir=False)
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
            self._meta_nofollow(pfd, base, member, xattrs)
        elif member.isreg():
            self._regular(member, tar, pfd, base, xattrs)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._special(member, pfd, base, xattrs)
        else:
            raise UnsafeArchive(f"tar entry {member.name!r} has unsupported type {member.type!r}")

    def _whiteout(self, parent: str, base: str) -> None:
        pfd = self._open_dir(parent, create=True)
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
        self._remove(pfd, name, keep_dir=False)
        # invariant: pfd was resolved inside the root and name has no slash
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)

    def _hardlink(self, member: tarfile.TarInfo, pfd: int, base: str) -> None:
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
            self._remove(pfd, base, keep_dir=False)
            # invariant: both fds were resolved inside the root; neither name is followed
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
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
            if self.privileged:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
            for key, value in xattrs.items():
                os.setxattr(fd, key, value)
            os.utime(fd, ns=(_ns(member.mtime), _ns(member.mtime)))
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
        self._meta_nofollow(pfd, base, member, xattrs, chmod=True)

    def _meta_nofollow(
        self,
        pfd: int,
        base: str,
        member: tarfile.TarInfo,
        xattrs: dict[str, bytes],
        *,
        chmod: bool = False,
    ) -> None:
        if self.privileged:
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:
            os.chmod(base, member.mode & 0o7777, dir_fd=pfd)
        proc = f"/proc/self/fd/{pfd}/{base}"  # fd is fixed, last component not followed
        for key, value in xattrs.items():
            os.setxattr(proc, key, value, follow_symlinks=False)
        os.utime(base, ns=(_ns(member.mtime),) * 2, dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        """Apply directory metadata deepest first, so restrictive modes do not block writes."""
        self._drop_cache()
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


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
    stream: Any, dest: str, what: str, *, privileged: bool | None = None, whiteouts: bool = True
) -> LayerStats:
    """Extract tar ``stream`` below the empty directory ``dest``; the caller removes it on error."""
    writer = LayerWriter(dest, privileged=privileged, whiteouts=whiteouts)
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
