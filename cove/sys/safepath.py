"""Path resolution inside an untrusted tree (a layer being unpacked, a container rootfs).

Everything resolves as if the tree's root were ``/``: symlinks and ``..`` can
never lead outside it (``openat2(RESOLVE_IN_ROOT)``, kernel >= 5.6).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from cove.sys.syscalls import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2

IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


class NotADirectory(OSError):
    """A path component that must be a directory is something else."""


def open_dir(rootfd: int, rel: str, *, create: bool) -> int:
    """An O_PATH fd for directory ``rel`` inside ``rootfd``, making missing ones if asked."""
    try:
        return openat2(rootfd, rel or ".", os.O_PATH | os.O_DIRECTORY, IN_ROOT)
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise NotADirectory(errno.ENOTDIR, f"{rel!r} is not a directory", rel) from e
        if e.errno != errno.ENOENT or not create:
            raise
    return make_dirs(rootfd, rel)


def make_dirs(rootfd: int, rel: str, mode: int = 0o755) -> int:
    """Create the missing directories of ``rel``, following symlinks as if the root were /.

    ``done`` only ever holds real directories below the root (``..`` at the root
    stays there), so each mkdir lands inside it, the way RESOLVE_IN_ROOT resolves.
    """
    parts = deque(rel.split("/"))
    done: list[str] = []
    hops = 0
    while parts:
        comp = parts.popleft()
        if comp in ("", "."):
            continue
        if comp == "..":
            if done:
                done.pop()
            continue
        pfd = openat2(
            rootfd, "/".join(done) or ".", os.O_PATH | os.O_DIRECTORY, IN_ROOT | RESOLVE_NO_SYMLINKS
        )
        try:
            try:
                st = os.stat(comp, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                os.mkdir(comp, mode, dir_fd=pfd)
                # the mode exactly, not masked by cove's private umask (this is image or
                # container content); through an fd that refuses a symlink swapped in
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                fd = openat2(pfd, comp, flags, RESOLVE_NO_SYMLINKS)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                done.append(comp)
                continue
            if stat.S_ISDIR(st.st_mode):
                done.append(comp)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {rel!r}", rel)
                target = os.readlink(comp, dir_fd=pfd)
                if target.startswith("/"):
                    done = []
                parts.extendleft(reversed(target.split("/")))
            else:
                raise NotADirectory(errno.ENOTDIR, f"{rel!r} is not a directory", rel)
        finally:
            os.close(pfd)
    return openat2(
        rootfd, "/".join(done) or ".", os.O_PATH | os.O_DIRECTORY, IN_ROOT | RESOLVE_NO_SYMLINKS
    )
