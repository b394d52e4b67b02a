"""A container's files from the host: ``cp``, ``diff``, ``export``, ``commit``.

``cp`` resolves every container path inside the container's root (``cove.sys.fscopy``):
a running container's root is its ``/proc/PID/root``; a stopped one's is its overlay,
mounted for the copy in a private mount namespace of a short-lived child, so the host
never sees the mount. ``diff``, ``export`` and ``commit`` read the upper directory and
the image layers directly (``cove.image.diff``) and never follow a link in them.
"""

from __future__ import annotations

import contextlib
import copy as copymod
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from cove.containers.record import config_of
from cove.state import Record, Status


def _in_root(ce: Any, rec: Record, action: Callable[[int], None]) -> None:
    if rec.status in (Status.RUNNING, Status.PAUSED) and rec.pid:
        fd = os.open(f"/proc/{rec.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            action(fd)
        finally:
            os.close(fd)
        return
    _in_mounted_root(ce, rec, action)


def _in_mounted_root(ce: Any, rec: Record, action: Callable[[int], None]) -> None:
    """Run ``action`` in a child with the stopped container's rootfs mounted privately."""
    from cove.sys import overlay, safepath
    from cove.sys import syscalls as sc

    layers = ce.layers_top_first(rec)
    upper, lowers = layers[0], layers[1:]
    cdir = ce.cdir(rec.id)
    userns = ce.oci_spec(rec).namespace("user") is not None
    rootfs = os.path.join(cdir, "rootfs")

    def mounted() -> None:
        work = os.path.join(cdir, "work")
        overlay.mount(overlay.Layers(lowers, upper, work, userxattr=userns), rootfs)
        rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
        for m in config_of(rec).mounts:
            if m.get("Type") not in ("bind", "volume") or not m.get("Source"):
                continue
            with contextlib.suppress(OSError):
                target = safepath.open_dir(rootfd, m["Destination"].lstrip("/"), create=False)
                sc.mount(m["Source"], f"/proc/self/fd/{target}", None, sc.MS_BIND | sc.MS_REC)
                os.close(target)
        action(os.open(rootfs, os.O_PATH | os.O_DIRECTORY))

    overlay.in_private_mount_ns(mounted)


def copy(
    ce: Any,
    src_ctr: str | None,
    src: str,
    dst_ctr: str | None,
    dst: str,
    *,
    follow_link: bool = False,
) -> None:
    from cove.sys import fscopy

    ref = src_ctr or dst_ctr
    assert ref is not None
    rec = ce.get(ref)
    from cove.containers.isolation import driver

    driver(rec, "cp")  # refused unless the driver supports it
    if src_ctr is not None:
        _in_root(ce, rec, lambda fd: fscopy.copy_out(fd, src, dst, follow_link=follow_link))
    else:
        uid, gid = ce.id_shift(rec)
        _in_root(
            ce,
            rec,
            lambda fd: fscopy.copy_in(src, fd, dst, uid=uid, gid=gid, follow_link=follow_link),
        )


def diff(ce: Any, ref: str) -> list[tuple[str, str]]:
    from cove.image.diff import changes

    rec = ce.get(ref)
    from cove.containers.isolation import driver

    driver(rec, "diff")  # refused unless the driver supports it
    layers = ce.layers_top_first(rec)
    result: list[tuple[str, str]] = changes(layers[0], layers[1:])
    return result


def export(ce: Any, ref: str, output: str | None, *, stream: Any = None) -> None:
    """The container's filesystem as a tar: to ``output``, else ``stream``, else stdout."""
    from cove.image.diff import write_merged_tar

    rec = ce.get(ref)
    from cove.containers.isolation import driver

    driver(rec, "export")  # refused unless the driver supports it
    layers = ce.layers_top_first(rec)
    uid, gid = ce.id_shift(rec)
    if output:
        tmp = output + ".tmp"
        try:
            with open(tmp, "wb") as f:
                write_merged_tar(layers, f, uid_shift=uid, gid_shift=gid)
            os.replace(tmp, output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    elif stream is not None:
        write_merged_tar(layers, stream, uid_shift=uid, gid_shift=gid)
    else:
        write_merged_tar(layers, sys.stdout.buffer, uid_shift=uid, gid_shift=gid)
        sys.stdout.buffer.flush()


# what ``commit`` carries from the container's config into the image's
_IMAGE_KEYS = (
    "User",
    "ExposedPorts",
    "Env",
    "Cmd",
    "Healthcheck",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "Labels",
    "StopSignal",
)


def commit(
    ce: Any,
    ref: str,
    repository: str | None,
    *,
    changes: list[str],
    message: str = "",
    author: str = "",
    pause: bool = True,
) -> str:
    from cove.image.diff import write_layer_tar
    from cove.image.importer import now_rfc3339
    from cove.spec import changes as changes_spec
    from cove.spec import reference as refs

    rec = ce.get(ref)
    from cove.containers.isolation import driver

    driver(rec, "commit")  # refused unless the driver supports it
    names = [refs.parse(repository)] if repository else []
    if repository and not names[0].tag and not names[0].digest:
        names = [refs.parse(repository + ":latest")]
    store = ce.engine.images
    img = store.resolve(rec.image_id)
    layers = ce.layers_top_first(rec)
    uid, gid = ce.id_shift(rec)
    store.ensure()
    frozen = False
    fd, tmp = tempfile.mkstemp(dir=store.tmpdir, prefix="commit-")
    try:
        if pause and rec.status == Status.RUNNING:
            ce.pause(rec.id)
            frozen = True
        try:
            with os.fdopen(fd, "wb") as f:
                write_layer_tar(layers[0], f, uid_shift=uid, gid_shift=gid)
        finally:
            if frozen:
                ce.unpause(rec.id)
        cfg = rec.config.get("Config", {})
        container_config = dict(img.config.config)
        for key in _IMAGE_KEYS:
            if cfg.get(key) is not None:
                container_config[key] = copymod.deepcopy(cfg[key])
        for change in changes:
            changes_spec.apply_change(container_config, change)
        with store.ingest_lock():
            with open(tmp, "rb") as src:
                desc, diff_id = store.ingest_layer(
                    src, "", what=f"commit of {rec.name}", store_as="gzip"
                )
            created = now_rfc3339()
            doc = copymod.deepcopy(img.config.raw)
            doc["created"] = created
            doc["config"] = container_config
            doc["rootfs"] = {"type": "layers", "diff_ids": [*img.config.diff_ids, diff_id]}
            if author:
                doc["author"] = author
            history = list(doc.get("history") or [])
            entry: dict[str, Any] = {
                "created": created,
                "created_by": " ".join([config_of(rec).path, *config_of(rec).args]),
            }
            if message:
                entry["comment"] = message
            if author:
                entry["author"] = author
            history.append(entry)
            doc["history"] = history
            new, manifest_desc = store.put_image(doc, [*img.manifest.layers, desc])
            store.add_image(manifest_desc, names)
        return str(new.id)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- the Engine API's archive endpoints (docker cp through a server) ----------------------

# Go's os.FileMode type bits, as Docker's container path stat reports them
_GO_MODE = (
    (0o040000, 1 << 31),  # directory
    (0o120000, 1 << 27),  # symlink
    (0o060000, 1 << 26),  # block device
    (0o020000, (1 << 26) | (1 << 21)),  # char device
    (0o010000, 1 << 25),  # fifo
    (0o140000, 1 << 24),  # socket
)


def go_mode(st_mode: int) -> int:
    import stat

    mode = st_mode & 0o777
    for kind, bit in _GO_MODE:
        if stat.S_IFMT(st_mode) == kind:
            mode |= bit
    if st_mode & stat.S_ISUID:
        mode |= 1 << 23
    if st_mode & stat.S_ISGID:
        mode |= 1 << 22
    if st_mode & stat.S_ISVTX:
        mode |= 1 << 20
    return mode


def stat_path(ce: Any, ref: str, path: str) -> dict[str, Any]:
    """``{name, size, mode (Go's FileMode), mtime, linkTarget}`` of ``path`` in the
    container, resolved inside its root (the last component is not followed)."""
    import json
    import posixpath
    import stat
    import time

    from cove.containers.isolation import driver
    from cove.errors import NotFound

    rec = ce.get(ref)
    driver(rec, "cp")
    full = posixpath.normpath("/" + path)
    parent, base = posixpath.split(full)
    r, w = os.pipe2(os.O_CLOEXEC)

    def action(rootfd: int) -> None:
        from cove.sys import safepath

        doc: dict[str, Any]
        try:
            pfd = safepath.open_dir(rootfd, parent.lstrip("/"), create=False)
            try:
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False) if base else os.stat(pfd)
                link = os.readlink(base, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else ""
            finally:
                os.close(pfd)
            doc = {
                "name": base or "/",
                "size": st.st_size,
                "mode": go_mode(st.st_mode),
                "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
                "linkTarget": link,
            }
        except OSError as e:
            doc = {"error": f"{e.strerror or e}"}
        os.write(w, json.dumps(doc).encode())

    try:
        _in_root(ce, rec, action)
    finally:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
    doc: dict[str, Any] = json.loads(data or b'{"error": "no answer"}')
    if "error" in doc:
        raise NotFound(f"could not find the file {path} in container {ref}: {doc['error']}")
    return doc


def archive_get(ce: Any, ref: str, path: str, out: Any) -> None:
    """Write a tar of ``path`` in the container to ``out`` (the entry named by its base
    name), through the same copy as ``cp``: out to a private scratch directory, then tar."""
    import posixpath
    import shutil
    import tarfile

    base = posixpath.basename(posixpath.normpath("/" + path)) or "."
    scratch = tempfile.mkdtemp(prefix="cp-", dir=ce.engine.images.tmpdir)
    try:
        copy(ce, ref, path, None, os.path.join(scratch, base))
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(os.path.join(scratch, base), arcname=base)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def archive_put(ce: Any, ref: str, path: str, stream: Any) -> None:
    """Extract the tar ``stream`` into the directory ``path`` of the container: unpacked
    safely to a private scratch directory, then each top entry copied in as ``cp`` does."""
    import shutil

    from cove.errors import InvalidSpec
    from cove.image.layers import unpack_stream

    st = stat_path(ce, ref, path)
    if not st["mode"] & (1 << 31):
        raise InvalidSpec(f"extraction point is not a directory: {path}")
    scratch = tempfile.mkdtemp(prefix="cp-", dir=ce.engine.images.tmpdir)
    try:
        unpack_stream(stream, scratch, "archive", whiteouts=False)
        for name in sorted(os.listdir(scratch)):
            copy(ce, None, os.path.join(scratch, name), ref, path.rstrip("/") + "/")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
