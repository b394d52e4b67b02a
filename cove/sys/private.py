"""The state root is private to root: the umask, directory modes, and tightening old roots.

cove runs with umask 077, so every file and directory it makes is private by default
(state.db and its WAL/SHM, bundles, logs, sockets, caches). Modes that must differ are set
explicitly with chmod, never through the mode argument of a creating call alone (the umask
masks it):

- the root itself and ``containers/``, ``runtime/``: 0711, searchable but not listable (as
  Docker's root), because a container's mapped root (``--userns``) opens its bundle and exec
  fifo by path;
- a container's bundle and runtime state dir: 0700, or 0710 owned by the mapped root's group
  when the container has a user namespace;
- container content (``upper/``, volume ``_data/``, the bind-mounted /etc files, layer
  contents) keeps its own modes: its parents are what keeps other users out (the
  CVE-2021-41091 class: a setuid file planted in an upper dir must not be reachable).

Containers get Docker's umask (0022) back in the runtime before they make anything.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

DEFAULT_ROOT = "/var/lib/cove"  # --root and $COVE_ROOT move it (cove.engine.default_root)
PRIVATE_UMASK = 0o077
CONTAINER_UMASK = 0o022
ROOT_MODE = 0o711  # searchable, not listable: a mapped root reaches its own bundle by path
SHARED_MODE = 0o711  # containers/ and runtime/, for the same reason
MARKER = ".private-v1"  # present once the root's modes are known tight (see ensure_private)

# inside a bundle: content the container sees with its own modes; never loosened or tightened
BUNDLE_CONTENT = frozenset({"upper", "work", "rootfs", "lower", "hosts", "hostname", "resolv.conf"})


def set_private_umask() -> None:
    os.umask(PRIVATE_UMASK)


@contextlib.contextmanager
def content_umask() -> Iterator[None]:
    """Docker's umask (0022) for what cove makes outside its root on the user's behalf (a
    missing ``-v`` host directory and its parents: MkdirAll 0755 in Docker)."""
    old = os.umask(CONTAINER_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def make_dir(path: str, mode: int = 0o700, *, parents: bool = True) -> None:
    """mkdir (``-p``) and then chmod ``mode`` exactly, whatever the umask."""
    if parents:
        os.makedirs(path, mode=mode, exist_ok=True)
    else:
        os.mkdir(path, mode)
    os.chmod(path, mode)


def bundle_mode(gid: int) -> int:
    """A container's own directory: the mapped root's group may only traverse it."""
    return 0o710 if gid else 0o700


def own_dir(path: str, gid: int = 0) -> None:
    """Give a container's directory to the mapped root's group (0710), or keep it root's."""
    os.chown(path, 0, gid)
    os.chmod(path, bundle_mode(gid))  # after chown: the mode is what the invariant names


def _strip(path: str, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.chmod(path, mode & ~0o077)


def _private_tree(top: str, skip: frozenset[str] = frozenset()) -> None:
    """Take group and other access off ``top`` and everything below it (symlinks untouched;
    entries named in ``skip`` directly below ``top`` are neither changed nor entered)."""
    with contextlib.suppress(FileNotFoundError):
        _strip(top, os.lstat(top))
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            if dirpath == top and name in skip:
                continue
            path = os.path.join(dirpath, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode):
                    _strip(path, st)
        if dirpath == top:
            dirnames[:] = [d for d in dirnames if d not in skip]


def _entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _mapped_gid(path: str, st: os.stat_result) -> int:
    """The group of a container's mapped root: the directory's own, or (a bundle an older
    cove made, reached through o+x) its upper dir's or exec fifo's, which that root owns."""
    if st.st_gid:
        return st.st_gid
    for name in ("upper", "exec.fifo"):
        with contextlib.suppress(FileNotFoundError):
            gid = os.lstat(os.path.join(path, name)).st_gid
            if gid:
                return gid
    return 0


def tighten(root: str) -> None:
    """Make an existing root private (a root made by an older cove had 0755/0644 modes)."""
    os.chmod(root, ROOT_MODE)
    for name in _entries(root):
        path = os.path.join(root, name)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            continue
        if not stat.S_ISDIR(st.st_mode):
            _strip(path, st)
        elif name in ("containers", "runtime"):
            os.chmod(path, SHARED_MODE)
            for entry in _entries(path):
                sub = os.path.join(path, entry)
                est = os.lstat(sub)
                if stat.S_ISDIR(est.st_mode):
                    _private_tree(sub, BUNDLE_CONTENT)
                    own_dir(sub, _mapped_gid(sub, est))
                elif not stat.S_ISLNK(est.st_mode):
                    _strip(sub, est)
        elif name == "layers":  # a layer's directory is content (an overlay lowerdir)
            _strip(path, st)
            for entry in _entries(path):
                sub = os.path.join(path, entry)
                est = os.lstat(sub)
                if stat.S_ISREG(est.st_mode):
                    _strip(sub, est)
        elif name == "volumes":  # <name>/ private, <name>/_data is the volume's content
            _strip(path, st)
            for entry in _entries(path):
                _private_tree(os.path.join(path, entry), frozenset({"_data"}))
        elif name == "tmp":  # ingest in progress (layer dirs being unpacked): only shut it
            _strip(path, st)
        else:
            _private_tree(path)


def ensure_private(root: str) -> None:
    """Create the root private, or tighten an old one once; afterwards one stat per command."""
    marker = os.path.join(root, MARKER)
    if os.path.exists(marker):
        return
    if not os.path.isdir(root):
        os.makedirs(root, exist_ok=True)
    tighten(root)
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
