"""Read one file of an image (or a container's upper over it) on the host, as the container
would see it, without mounting anything.

``--user NAME`` is resolved on the host from the image's /etc/passwd and /etc/group before
the container exists. The layers are untrusted content: /etc, /etc/passwd or any parent
may be a symlink, absolute or full of ``..``, meant for the container's root and pointing
at a host file (/etc/shadow) from the host's point of view; the file may be a FIFO or a
device. So paths are resolved here the way the kernel would inside the container's
overlay: component by component over the merged layer view, every symlink read (never
followed by the kernel) and its target resolved again from the image's ``/`` (``..`` stops
at it), at most 40 of them (the kernel's limit). Each lookup inside a layer goes through
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``, so nothing a layer holds can lead out
of it. Only a regular file is read, checked on an ``O_PATH`` fd before it is opened (a
FIFO or device node is never opened), and only up to a size cap.

Overlay rules (as the kernel's lookup): the highest layer that has a name decides what it
is; a whiteout (a 0/0 character device) there hides it in every layer below; a
non-directory stops the lookup; same-named directories merge downwards until a layer whose
directory is opaque. This costs a few syscalls per component, no mount or fork.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from cove.errors import InvalidSpec
from cove.sys.syscalls import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, openat2

# nothing found in a layer is ever followed by the kernel: symlinks are read and resolved here
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
# the names cove.image.layers writes for an OCI opaque whiteout (not imported: it pulls
# tarfile onto the container start path)
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
MAXSYMLINKS = 40  # the kernel's limit on symlinks followed in one lookup
MAX_SIZE = 4 << 20  # /etc/passwd and /etc/group of real images are kilobytes
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(parent: int, name: str) -> bool:
    try:
        fd = openat2(parent, name, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
    except OSError as e:
        if e.errno in _GONE:
            return False
        raise
    try:
        for attr in _OPAQUE_XATTRS:
            try:
                if os.getxattr(fd, attr) == b"y":
                    return True
            except OSError as e:
                if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
        return False
    finally:
        os.close(fd)


class _View:
    """The layer roots, held open (top first)."""

    def __init__(self, layers_top_first: list[str]) -> None:
        self.roots: list[int] = []
        try:
            for path in layers_top_first:
                self.roots.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.roots:
            os.close(fd)
        self.roots = []

    def dir_fd(self, layer: int, rel: str) -> int | None:
        try:
            return openat2(self.roots[layer], rel or ".", os.O_PATH | os.O_DIRECTORY, _RESOLVE)
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise

    def lookup(
        self, below: list[int], rel: str, name: str
    ) -> tuple[int, os.stat_result, list[int], str] | None:
        """``name`` in the merged directory ``rel`` (made of the layers ``below``): the
        deciding layer, its stat, the layers a directory merges from, a symlink's target."""
        first: tuple[int, os.stat_result] | None = None
        merged: list[int] = []
        target = ""
        for layer in below:
            dfd = self.dir_fd(layer, rel)
            if dfd is None:
                continue
            try:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if first is None:
                    if _is_whiteout(st):
                        return None
                    first = (layer, st)
                    if stat.S_ISLNK(st.st_mode):
                        target = os.readlink(name, dir_fd=dfd)
                    if not stat.S_ISDIR(st.st_mode):
                        break
                elif not stat.S_ISDIR(st.st_mode):
                    break  # a whiteout or a non-directory ends the merge
                merged.append(layer)
                if _opaque(dfd, name):
                    break
            finally:
                os.close(dfd)
        if first is None:
            return None
        return first[0], first[1], merged, target

    def read(self, layer: int, rel: str, where: str) -> bytes | None:
        try:
            pfd = openat2(self.roots[layer], rel, os.O_PATH | os.O_NOFOLLOW, _RESOLVE)
        except OSError as e:
            if e.errno in _GONE:
                return None
            raise
        try:
            # checked on the O_PATH fd, so a FIFO or device node is never opened
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > MAX_SIZE:
                raise InvalidSpec(f"image file {where} is larger than {MAX_SIZE >> 20} MiB")
            # reopening the O_PATH fd reaches exactly the inode just checked
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(pfd)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_SIZE + 1)
        if len(data) > MAX_SIZE:
            raise InvalidSpec(f"image file {where} is larger than {MAX_SIZE >> 20} MiB")
        return data


def read_image_file(layers_top_first: list[str], path: str) -> bytes | None:
    """The regular file at ``path`` in the merged view of the layers, symlinks resolved
    inside the image; None if it is missing, whited out, not a regular file, or its
    resolution loops (as an open in the container would fail)."""
    view = _View(layers_top_first)
    try:
        top: list[int] = []
        for layer, root in enumerate(view.roots):
            top.append(layer)
            if _opaque(root, "."):
                break  # an opaque root hides every layer below
        parts = deque(path.split("/"))
        done: list[str] = []
        stack: list[list[int]] = []  # the layers of each directory in ``done``
        below = top
        hops = 0
        while parts:
            comp = parts.popleft()
            if comp in ("", "."):
                continue
            if comp == "..":  # at the root, ``..`` stays there (as RESOLVE_IN_ROOT)
                if done:
                    done.pop()
                    below = stack.pop()
                continue
            rel = "/".join(done)
            found = view.lookup(below, rel, comp)
            if found is None:
                return None
            layer, st, merged, target = found
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAXSYMLINKS:
                    return None
                if target.startswith("/"):
                    done, stack, below = [], [], top
                parts.extendleft(reversed(target.split("/")))
            elif stat.S_ISDIR(st.st_mode):
                done.append(comp)
                stack.append(below)
                below = merged
            elif any(p not in ("", ".") for p in parts):
                return None  # a non-directory in the middle of the path
            else:
                return view.read(layer, f"{rel}/{comp}" if rel else comp, path)
        return None  # a directory
    finally:
        view.close()
