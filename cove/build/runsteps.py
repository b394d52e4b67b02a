"""RUN steps: a dispatched RUN (``dispatch.RunPlan``) executed in a real cove container.

The container starts from the stage's state stored as an unnamed image, so it gets the
runtime's whole confinement (seccomp filter, capabilities, the network asked for). Its
upper directory, less the empty mount points only the runtime made, is the step's layer.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from cove.build import dispatch
from cove.build.dispatch import PIPES, BuildError, Layer, RunPlan, State

if TYPE_CHECKING:
    from cove.build.builder import Builder
    from cove.build.dockerfile import Instruction
    from cove.bundle import RunOptions
    from cove.engine import Engine
    from cove.image.store import Image
    from cove.spec.runtime import Spec
    from cove.state import Record, Store


class Containers(Protocol):
    """What a build needs of the container engine (``ContainerEngine``): RUN steps are
    its containers. A protocol, so the build layer names no containers module."""

    engine: Engine
    store: Store

    def create(self, opts: RunOptions, *, op: str = ..., image: Image | None = ...) -> str: ...

    def run_captured(self, cid: str, echo: Callable[[int, bytes], None]) -> int: ...

    def layers_top_first(self, rec: Record) -> list[str]: ...

    def oci_spec(self, rec: Record) -> Spec: ...

    def discard(self, rec: Record, *, volumes: bool) -> None: ...


def intermediate(b: Builder, state: State) -> Image:
    """The state as an unnamed store image a container can start from. Without its
    VOLUMEs: BuildKit keeps what a RUN writes below them."""
    doc = dispatch.image_doc(state)
    doc.get("config", {}).pop("Volumes", None)
    img, _ = b.store.put_image(doc, [la.desc for la in state.layers])
    return img


def run(b: Builder, state: State, ins: Instruction, plan: RunPlan) -> Layer | None:
    """Run ``plan`` on ``state`` in a container; its upper directory as a layer."""
    from cove.bundle import RunOptions
    from cove.state import OP_CREATE

    img = intermediate(b, state)
    volumes: list[str] = []
    if plan.script is not None:
        fd, path = tempfile.mkstemp(dir=b.store.tmpdir, prefix="pipe-")
        with os.fdopen(fd, "w") as f:
            f.write(plan.script.content)
        os.chmod(path, 0o755)
        b.downloads[path] = path  # removed with the build's other temp files
        # under /dev, a tmpfs: the mount point never reaches the layer
        volumes.append(f"{path}:{PIPES}/{plan.script.name}:ro")
    opts = RunOptions(
        volumes=volumes,
        image=f"cove-build:{img.id.removeprefix('sha256:')[:12]}",
        command=plan.argv,
        entrypoint="",
        env=[f"{k}={v}" for k, v in plan.env.items()],
        network=plan.network,
        user=state.config.get("User") or None,
        workdir=state.workdir(),
        hostname="buildkitsandbox",
        pull="never",
    )
    ce = b.ce
    cid = ce.create(opts, op=OP_CREATE, image=img)
    try:
        code = ce.run_captured(cid, b.progress.output)
        if code != 0:
            b.progress.failed()
            raise BuildError(
                f"{b.file.filename}:{ins.line}: {ins.original[:200]} "
                f"returned a non-zero code: {code}"
            )
        rec = ce.store.get(cid)
        upper = ce.layers_top_first(rec)[0]
        drop_mount_targets(upper, b._lowers(state), ce.oci_spec(rec))
        return b._commit_upper(upper)
    finally:
        with contextlib.suppress(Exception):
            ce.discard(ce.store.get(cid), volumes=True)


def _parent(dirfd: int, rel: str) -> tuple[int, str] | None:
    """An O_PATH fd of ``rel``'s parent below ``dirfd``, reached without following any
    symlink on the way (a step's upper directory and an image's layers are the
    container's to shape), and ``rel``'s last name; None when there is no such parent."""
    from cove.sys.syscalls import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, openat2

    parent, base = posixpath.split(rel)
    try:
        pfd = openat2(dirfd, parent or ".", os.O_PATH | os.O_DIRECTORY,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)  # fmt: skip
    except OSError:
        return None
    return pfd, base


def _lookup(dirfd: int, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` below ``dirfd`` without following any symlink on the way, or None."""
    found = _parent(dirfd, rel)
    if found is None:
        return None
    pfd, base = found
    try:
        return os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _remove_empty(dirfd: int, rel: str) -> bool:
    """Remove ``rel`` below ``dirfd`` if it is an empty directory or empty file, reached
    without following symlinks; whether it went."""
    found = _parent(dirfd, rel)
    if found is None:
        return False
    pfd, base = found
    try:
        st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(base, dir_fd=pfd)  # only when empty: anything in it is the step's work
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(base, dir_fd=pfd)
        else:
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(pfd)


def drop_mount_targets(upper: str, lowers: list[str], oci: Spec) -> None:
    """Take out of a RUN's upper directory what only the runtime made: empty files and
    directories created as mount points (/etc/hosts, /proc, ...) that no layer has, and
    parents left empty without them. Every path is resolved below its directory fd with
    no symlink followed: the step may have planted ``/x -> /`` in the upper directory."""
    ufd = os.open(upper, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    lfds = [os.open(lo, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for lo in lowers]
    try:
        for m in oci.mounts:
            rel = posixpath.normpath("/" + m.destination).strip("/")
            if not rel or any(_lookup(fd, rel) is not None for fd in lfds):
                continue
            if not _remove_empty(ufd, rel):
                continue
            parent = posixpath.dirname(rel)
            while parent:
                below = [_lookup(fd, parent) for fd in lfds]
                if any(st is not None and not stat.S_ISDIR(st.st_mode) for st in below):
                    break
                if not _remove_empty(ufd, parent):
                    break
                parent = posixpath.dirname(parent)
    finally:
        for fd in (ufd, *lfds):
            os.close(fd)
