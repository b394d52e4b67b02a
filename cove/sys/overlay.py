"""Overlay mounts of image layers, for every caller, and the private mount namespace they
are made in.

Every place that stacks layers (the runtime's root, with or without idmapped lowers; ``cp``
on a stopped container; a build step; a ``run --vm`` root file system) goes through
:func:`mount`, so all of them reach Docker's depth of 127 layers the same way.

Why not one ``mount(2)`` option string: the kernel copies at most one page of mount data,
and 127 lower paths of a 64-hex layer id do not fit; a cut string names a directory that
does not exist (``mount overlay ... No such file or directory``). Two ways around it:

- the new mount API (the default): ``fsopen("overlay")``, one ``fsconfig(FSCONFIG_SET_STRING,
  "lowerdir+", path)`` per layer (kernel >= 6.8), ``fsmount``, ``move_mount``. No string
  holds more than one path; the kernel limits each to 255 bytes, so a longer path is given
  as ``/proc/self/fd/N`` of an O_PATH fd.
- the fallback (older kernels, or a seccomp filter without fsopen): one ``mount(2)`` whose
  paths are all ``/proc/self/fd/N`` of O_PATH fds opened here: at most 18 bytes a layer
  whatever the layers' real paths, and no ``,`` ``:`` or ``\\`` to escape. overlayfs
  resolves each with LOOKUP_FOLLOW, which follows the magic link to the very directory.

Beyond :data:`MAX_DEPTH` lower layers cove refuses, as Docker does ("max depth exceeded").
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cove import errors
from cove.errors import CoveError, Unsupported
from cove.sys import syscalls as sc

MAX_DEPTH = 127  # lower layers of one overlay: what Docker and Podman stack at most
_PAGE = 4096  # mount(2) copies at most one page of data (copy_mount_options)
_FSCONFIG_MAX = 255  # fsconfig(2) copies at most this many bytes of a string value

Api = Literal["new", "legacy"]


@dataclass(frozen=True)
class Layers:
    """An overlay to mount: ``lowers`` top first (overlayfs's order), and ``upper`` with
    ``work`` for a writable one (read-only without). ``userxattr`` inside a user namespace
    (overlayfs keeps its own xattrs in user.overlay.* there)."""

    lowers: Sequence[str]
    upper: str | None = None
    work: str | None = None
    userxattr: bool = False


def check_depth(count: int, what: str) -> None:
    """Refuse more than :data:`MAX_DEPTH` layers, with Docker's words."""
    if count > MAX_DEPTH:
        raise Unsupported(f"max depth exceeded: {what} has {count} layers, at most {MAX_DEPTH}")


def legacy_options(lowers: Sequence[str], upper: str | None, work: str | None,
                   userxattr: bool) -> str:  # fmt: skip
    """The ``mount(2)`` data for already-short layer names (pure)."""
    data = "lowerdir=" + ":".join(lowers)
    if upper is not None:
        data += f",upperdir={upper},workdir={work}"
    if userxattr:
        data += ",userxattr"
    return data


def fsconfig_steps(lowers: Sequence[str], upper: str | None, work: str | None,
                   userxattr: bool) -> list[tuple[int, str, str | None]]:  # fmt: skip
    """The ``fsconfig(2)`` calls, in order, that describe the overlay (pure)."""
    steps: list[tuple[int, str, str | None]] = [
        (sc.FSCONFIG_SET_STRING, "lowerdir+", p) for p in lowers
    ]
    if upper is not None:
        steps += [(sc.FSCONFIG_SET_STRING, "upperdir", upper),
                  (sc.FSCONFIG_SET_STRING, "workdir", str(work))]  # fmt: skip
    if userxattr:
        steps.append((sc.FSCONFIG_SET_FLAG, "userxattr", None))
    return steps


_new_api_works: bool | None = None  # learnt on first use, per process


def mount(layers: Layers, target: str, *, api: Api | None = None) -> None:
    """Mount ``layers`` on ``target`` in the caller's mount namespace.

    ``api`` forces one way (tests exercise both); by default the new mount API, and the
    fallback when this kernel lacks ``lowerdir+`` (EINVAL) or fsopen (ENOSYS, or EPERM from
    a seccomp filter). A single read-only layer is bind-mounted read-only: overlayfs wants
    two lowers when there is no upper.
    """
    global _new_api_works
    lowers = list(layers.lowers)
    if not lowers:
        raise Unsupported(f"no layers to mount on {target}")
    check_depth(len(lowers), f"the overlay on {target}")
    if layers.upper is None and len(lowers) == 1:
        sc.mount(lowers[0], target, None, sc.MS_BIND)
        # invariant: MS_REMOUNT|MS_BIND changes this mount's flags only, not the layer's
        sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
        return
    if api == "legacy" or (api is None and _new_api_works is False):
        _mount_legacy(layers, target)
        return
    try:
        _mount_new(layers, target)
        _new_api_works = True
    except _NoNewApi:
        if api == "new":
            raise Unsupported("overlay: this kernel has no fsconfig lowerdir+ (6.8)") from None
        _new_api_works = False
        _mount_legacy(layers, target)


class _NoNewApi(Exception):
    pass


class _Fds:
    """O_PATH fds named ``/proc/self/fd/N``, closed together."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def name(self, path: str) -> str:
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _mount_new(layers: Layers, target: str) -> None:
    fds = _Fds()
    try:
        fs = sc.fsopen("overlay")
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM):
            raise _NoNewApi from e
        raise
    try:

        def short(p: str) -> str:
            return p if len(os.fsencode(p)) <= _FSCONFIG_MAX else fds.name(p)

        steps = fsconfig_steps([short(p) for p in layers.lowers],
                               None if layers.upper is None else short(layers.upper),
                               None if layers.work is None else short(layers.work),
                               layers.userxattr)  # fmt: skip
        for i, (cmd, key, value) in enumerate(steps):
            try:
                sc.fsconfig(fs, cmd, key, value)
            except OSError as e:
                # an unknown key fails with EINVAL: "lowerdir+" is kernel 6.8
                if i == 0 and e.errno == errno.EINVAL:
                    raise _NoNewApi from e
                raise OSError(e.errno, f"mount overlay: {key} {e.strerror}", value) from e
        try:
            sc.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        except OSError as e:
            raise OSError(e.errno, f"mount overlay on {target}: {e.strerror}") from e
        mnt = sc.fsmount(fs, 0 if layers.upper is not None else sc.MOUNT_ATTR_RDONLY)
        try:
            sc.move_mount_fd(mnt, target)
        finally:
            os.close(mnt)
    finally:
        os.close(fs)
        fds.close()


def _mount_legacy(layers: Layers, target: str) -> None:
    fds = _Fds()
    try:
        data = legacy_options(
            [fds.name(p) for p in layers.lowers],
            None if layers.upper is None else fds.name(layers.upper),
            None if layers.work is None else fds.name(layers.work),
            layers.userxattr,
        )
        if len(data) >= _PAGE:  # cannot happen below MAX_DEPTH: 18 bytes a layer
            raise Unsupported(f"overlay options for {target} exceed a page")
        sc.mount("overlay", target, "overlay", 0 if layers.upper else sc.MS_RDONLY, data)
    finally:
        fds.close()


def in_private_mount_ns(action: Callable[[], None], *,
                        default: type[CoveError] = CoveError) -> None:  # fmt: skip
    """Run ``action`` in a forked child in a new, private mount namespace, so whatever it
    mounts vanishes with the child and never reaches the host; wait for it.

    A failure in the child is raised here: the same cove error class when it was one of
    :mod:`cove.errors`, else ``default``, with the child's one-line message.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.close(r)
        try:
            # invariant: a new mount namespace made private from / down: no mount made
            # below propagates to the host's namespace, and all of them die with the child
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            action()
            os._exit(0)
        except BaseException as e:
            msg = str(e)
            if isinstance(e, OSError) and not isinstance(e, CoveError):
                msg = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            os.write(w, f"{type(e).__name__}\0{msg}".encode()[:8000])
            os._exit(1)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            report = f.read().decode(errors="replace")
    except BaseException:
        os.kill(pid, 9)  # an interrupt: the child must be gone before the caller cleans up
        os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if status != 0:
        kind, _, msg = report.partition("\0")
        found = getattr(errors, kind, None)
        cls = (
            found
            if isinstance(found, type) and issubclass(found, CoveError) and found is not CoveError
            else default
        )
        raise cls(msg or f"exit status {status}")
