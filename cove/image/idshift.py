"""Copies of unpacked layers with their owners shifted through an id map (rootless keep-id).

Why copies: a container in a user namespace of its own sees the layers' owners through its
id map. As root, cove idmaps the lower layers (``mount_setattr(MOUNT_ATTR_IDMAP)``) so they
show the image's ids; rootless it cannot: an idmapped mount needs CAP_SYS_ADMIN in the user
namespace that owns the file system's superblock, the initial one for the host's ext4 or
xfs, and fuse-overlayfs (Podman's other route) needs /dev/fuse, which is root's alone here.
So, as containers/storage does without either, each layer is copied once per id map with
every owner rewritten (``chown`` within the user's own range needs nothing but the
namespace), and the copies are shared by every container with the same map.

Layout: ``<store>/idmapped/<key>/<layer hex>``, ``key`` a digest of the map. Made under the
store's ingest lock (garbage collection waits), in ``tmp/`` and renamed into place under
the layer's lock; ``ImageStore.collect`` removes them with the layer they copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable

from cove.image.store import IDMAPPED, ImageStore
from cove.sys.syscalls import flocked

Rows = list[tuple[int, int, int]]


def map_key(uid_rows: Rows, gid_rows: Rows) -> str:
    text = f"u{uid_rows}g{gid_rows}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def shifted_layers(
    store: ImageStore, layers: list[str], uid_rows: Rows, gid_rows: Rows
) -> tuple[str, list[str]]:
    """The directory holding the shifted copies and their paths, one per layer of
    ``layers`` (paths under ``store.layers_dir``), made where missing."""
    from cove.sys.userns import map_id

    top = os.path.join(os.path.dirname(store.layers_dir), IDMAPPED, map_key(uid_rows, gid_rows))
    os.makedirs(top, 0o700, exist_ok=True)

    def ids(uid: int, gid: int) -> tuple[int, int]:
        # parent ids are the image's (the layer was unpacked by our namespace's root);
        # an id the map lacks cannot be in a layer we unpacked (it would not have chowned)
        u, g = map_id(uid_rows, uid), map_id(gid_rows, gid)
        if u is None or g is None:
            raise ValueError(f"id {uid}:{gid} is outside the container's id map")
        return u, g

    out = []
    with store.ingest_lock():
        for src in layers:
            name = os.path.basename(src)
            final = os.path.join(top, name)
            out.append(final)
            if os.path.isdir(final):
                continue
            tmp = tempfile.mkdtemp(dir=store.tmpdir, prefix="idmap-")
            try:
                copy_tree(src, tmp, ids)
                with flocked(os.path.join(store.locks, f"layer-{name}.lock")):
                    if os.path.isdir(final):
                        shutil.rmtree(tmp)
                    else:
                        os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return top, out


_Ids = Callable[[int, int], tuple[int, int]]
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC


def copy_tree(src: str, dest: str, ids: _Ids) -> None:
    """Copy the layer ``src`` into the empty directory ``dest``, every entry's owner passed
    through ``ids``: modes (setuid kept: chmod after chown), times, xattrs (overlay's
    user.overlay.opaque included), hard links, symlinks, whiteouts (0/0 character devices,
    which a user namespace may make), FIFOs. Nothing is followed: every step is relative to
    an O_NOFOLLOW directory fd."""
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | _OPEN)
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | _OPEN)
    try:
        links: dict[tuple[int, int], str] = {}
        _copy_dir(sfd, dfd, dfd, "", ids, links)
        _meta(sfd, dfd, os.fstat(sfd), ids)
    finally:
        os.close(sfd)
        os.close(dfd)


def _copy_dir(
    sfd: int, dfd: int, droot: int, rel: str, ids: _Ids, links: dict[tuple[int, int], str]
) -> None:
    for name in sorted(os.listdir(sfd)):
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        path = f"{rel}/{name}" if rel else name
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            cs = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _OPEN, dir_fd=sfd)
            cd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _OPEN, dir_fd=dfd)
            try:
                _copy_dir(cs, cd, droot, path, ids, links)
                _meta(cs, cd, st, ids)
            finally:
                os.close(cs)
                os.close(cd)
            continue
        if st.st_nlink > 1 and not stat.S_ISDIR(mode):
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:  # a hard link to an entry already copied
                os.link(first, name, src_dir_fd=droot, dst_dir_fd=dfd, follow_symlinks=False)
                continue
            links[(st.st_dev, st.st_ino)] = path
        if stat.S_ISREG(mode):
            s = os.open(name, os.O_RDONLY | _OPEN, dir_fd=sfd)
            try:
                d = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN, 0o600, dir_fd=dfd)
                try:
                    _copy_data(s, d, st.st_size)
                    _meta(s, d, st, ids)
                finally:
                    os.close(d)
            finally:
                os.close(s)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            uid, gid = ids(st.st_uid, st.st_gid)
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            # 0/0 character devices are overlay whiteouts (the only devices a rootless
            # layer holds: others became placeholder files at unpack)
            os.mknod(name, mode, st.st_rdev, dir_fd=dfd)
            uid, gid = ids(st.st_uid, st.st_gid)
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dfd, follow_symlinks=True)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
        # sockets: an unpacked layer has none (tar cannot carry them)


def _meta(s: int, d: int, st: os.stat_result, ids: _Ids) -> None:
    uid, gid = ids(st.st_uid, st.st_gid)
    os.fchown(d, uid, gid)
    os.fchmod(d, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid/setgid
    for key in os.listxattr(s):
        try:
            os.setxattr(d, key, os.getxattr(s, key))
        except OSError as e:
            # trusted.* and security.* of the initial namespace are not ours to set; the
            # keys overlay reads in a user namespace are user.* and are always copied
            if key.startswith("user.") or e.errno not in (errno.EPERM, errno.ENOTSUP):
                raise
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_data(src: int, dst: int, size: int) -> None:
    left = size
    while left > 0:
        n = os.copy_file_range(src, dst, min(left, 1 << 30))
        if n == 0:
            break
        left -= n
