"""Image archives: load docker-archive, OCI archive or layout; save docker-archive or OCI archive.

A docker-archive written by cove follows ``docker save`` since Docker 25: an
OCI layout (``oci-layout``, ``index.json``, ``blobs/``) plus the legacy
``manifest.json``, so the one file loads exactly (same manifest digests) in
cove and as a docker-archive elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from cove.errors import CorruptContent, InvalidReference, InvalidSpec, NotFound
from cove.image import streams
from cove.image.store import Image, ImageStore
from cove.spec import image as spec
from cove.spec import reference as refs
from cove.sys.syscalls import RESOLVE_IN_ROOT, openat2

# -- sources ---------------------------------------------------------------


class _Source:
    """Named files of an archive or layout, read with their size known."""

    what: str

    def open(self, name: str) -> tuple[IO[bytes], int]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        f, size = self.open(name)
        with f:
            if size > limit:
                raise InvalidSpec(f"{self.what}: {name} is too large ({size} bytes)")
            data = f.read(size + 1)
        if len(data) != size:
            raise CorruptContent(f"{self.what}: {name} is truncated")
        return data

    def close(self) -> None:
        pass


class _DirSource(_Source):
    def __init__(self, path: str) -> None:
        self.what = path
        self._fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def open(self, name: str) -> tuple[IO[bytes], int]:
        try:
            # a layout is untrusted input: its symlinks must not reach host files
            fd = openat2(self._fd, name, os.O_RDONLY, RESOLVE_IN_ROOT)
        except FileNotFoundError as e:
            raise CorruptContent(f"{self.what}: {name} is missing") from e
        f = os.fdopen(fd, "rb")
        return f, os.fstat(fd).st_size

    def exists(self, name: str) -> bool:
        try:
            os.close(openat2(self._fd, name, os.O_PATH, RESOLVE_IN_ROOT))
        except OSError:
            return False
        return True

    def close(self) -> None:
        os.close(self._fd)


class _TarSource(_Source):
    def __init__(self, path: str, tmpdir: str) -> None:
        self.what = path
        self._tmp: str | None = None
        raw: Any = sys.stdin.buffer if path == "-" else open(path, "rb")
        try:
            peek = streams.PeekReader(raw)
            compression = streams.detect_compression(peek.peek(8))
            seekable = path != "-" and compression == ""
            if not seekable:  # random access needs a plain file: spill once
                fd, self._tmp = tempfile.mkstemp(dir=tmpdir, prefix="load-")
                with os.fdopen(fd, "wb") as out:
                    streams.copy_stream(streams.decompressor(peek, compression, path), out)
        finally:
            if raw is not sys.stdin.buffer:
                raw.close()
        try:
            self._tar = tarfile.open(self._tmp or path, "r:")
            self._members = {_norm(m.name): m for m in self._tar.getmembers()}
        except (tarfile.TarError, EOFError) as e:
            self.close()
            raise CorruptContent(f"{path}: not a readable tar archive: {e}") from e

    def _member(self, name: str) -> tarfile.TarInfo:
        name = _norm(name)
        for _ in range(16):
            m = self._members.get(name)
            if m is None:
                raise CorruptContent(f"{self.what}: {name} is missing")
            if not (m.issym() or m.islnk()):
                return m
            base = posixpath.dirname(name) if m.issym() else ""
            name = _norm(posixpath.normpath(posixpath.join(base, m.linkname)))
            if name.startswith("../"):
                raise CorruptContent(f"{self.what}: link {m.name} points outside the archive")
        raise CorruptContent(f"{self.what}: too many links resolving {name}")

    def open(self, name: str) -> tuple[IO[bytes], int]:
        m = self._member(name)
        f = self._tar.extractfile(m)
        if f is None:
            raise CorruptContent(f"{self.what}: {name} is not a regular file")
        return f, m.size

    def exists(self, name: str) -> bool:
        return _norm(name) in self._members

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self._tar.close()
        if self._tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _norm(name: str) -> str:
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _blob_name(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


@contextlib.contextmanager
def open_source(path: str, tmpdir: str) -> Iterator[_Source]:
    if path != "-" and not os.path.exists(path):
        raise NotFound(f"no such file: {path}")
    src: _Source = _DirSource(path) if os.path.isdir(path) else _TarSource(path, tmpdir)
    try:
        yield src
    finally:
        src.close()


# -- load --------------------------------------------------------------------


@dataclass
class Loaded:
    image_id: str
    manifest_digest: str
    names: list[refs.Reference]


def _read_blob(src: _Source, desc: spec.Descriptor) -> bytes:
    data = src.read(_blob_name(desc.digest))
    if len(data) != desc.size or spec.sha256_digest(data) != desc.digest:
        raise CorruptContent(f"{src.what}: blob {desc.digest} does not match its digest")
    return data


def _names_from(annotations: dict[str, str]) -> list[refs.Reference]:
    name = annotations.get(spec.ANNOTATION_IMAGE_NAME)
    if not name:
        ref_name = annotations.get(spec.ANNOTATION_REF_NAME, "")
        # a bare tag ("3.20") names no repository; only full references are used
        name = ref_name if ("/" in ref_name or ":" in ref_name) else ""
    if not name:
        return []
    try:
        ref = refs.parse(name)
    except InvalidReference:
        return []
    return [ref] if ref.tag else []


def _select_platform(src: _Source, desc: spec.Descriptor) -> spec.Descriptor:
    index = spec.Index.parse(_read_blob(src, desc), f"{src.what}: index {desc.digest}")
    host = spec.Platform.host()
    for m in index.manifests:
        if m.platform and (m.platform.os, m.platform.architecture) == (host.os, host.architecture):
            return m
    raise NotFound(f"{src.what}: index {desc.digest} has no manifest for {host}")


def _ingest_image(
    store: ImageStore,
    manifest_bytes: bytes,
    media_type: str,
    config_bytes: bytes,
    open_layer: Any,
) -> tuple[spec.Descriptor, spec.Manifest]:
    digest = spec.sha256_digest(manifest_bytes)
    manifest = spec.Manifest.parse(manifest_bytes, f"manifest {digest}")
    config = spec.ImageConfig.parse(config_bytes, f"image config {manifest.config.digest}")
    if len(config.diff_ids) != len(manifest.layers):
        raise InvalidSpec(
            f"manifest {digest}: {len(manifest.layers)} layers but "
            f"{len(config.diff_ids)} diff ids in its config"
        )
    for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
        if store.blobs.has(layer.digest) and store.has_layer(diff_id):
            continue
        f = open_layer(layer)
        with f:
            store.ingest_layer(
                f,
                spec.LAYER_COMPRESSION[layer.media_type],
                what=f"layer {layer.digest}",
                expected_digest=layer.digest,
                expected_size=layer.size,
                expected_diff_id=diff_id,
            )
    store.blobs.put(config_bytes, manifest.config.digest)
    store.blobs.put(manifest_bytes, digest)
    return spec.Descriptor(media_type, digest, len(manifest_bytes)), manifest


def _load_oci(store: ImageStore, src: _Source) -> list[Loaded]:
    index = spec.Index.parse(src.read("index.json"), f"{src.what}: index.json")
    out = []
    for desc in index.manifests:
        names = _names_from(desc.annotations)
        if desc.media_type in spec.INDEX_TYPES:
            desc = _select_platform(src, desc)
        manifest_bytes = _read_blob(src, desc)
        manifest = spec.Manifest.parse(manifest_bytes, f"{src.what}: manifest {desc.digest}")
        config_bytes = _read_blob(src, manifest.config)

        def open_layer(layer: spec.Descriptor) -> IO[bytes]:
            return src.open(_blob_name(layer.digest))[0]

        mdesc, _ = _ingest_image(
            store,
            manifest_bytes,
            desc.media_type or manifest.media_type,
            config_bytes,
            open_layer,
        )
        store.add_image(mdesc, names)
        out.append(Loaded(manifest.config.digest, mdesc.digest, names))
    return out


def _digest_from_path(path: str) -> str | None:
    """The digest a docker-archive path names: ``blobs/sha256/HEX`` or ``HEX.json``."""
    base = posixpath.basename(path).removesuffix(".json")
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        return "sha256:" + base
    return None


def _load_docker(store: ImageStore, src: _Source) -> list[Loaded]:
    try:
        entries = json.loads(src.read("manifest.json"))
        if not isinstance(entries, list):
            raise ValueError("not a list")
    except ValueError as e:
        raise InvalidSpec(f"{src.what}: manifest.json is invalid: {e}") from e
    out = []
    for entry in entries:
        try:
            config_path, layer_paths = entry["Config"], list(entry["Layers"])
            tags = list(entry.get("RepoTags") or [])
        except (KeyError, TypeError) as e:
            raise InvalidSpec(f"{src.what}: manifest.json entry is invalid") from e
        config_bytes = src.read(config_path)
        config_digest = spec.sha256_digest(config_bytes)
        named = _digest_from_path(config_path)
        if named and named != config_digest:
            raise CorruptContent(f"{src.what}: config {named} does not match its digest")
        config = spec.ImageConfig.parse(config_bytes, f"{src.what}: config {config_path}")
        if len(config.diff_ids) != len(layer_paths):
            raise InvalidSpec(
                f"{src.what}: {config_path} lists {len(config.diff_ids)} diff ids "
                f"for {len(layer_paths)} layers"
            )
        layers = []
        for path, diff_id in zip(layer_paths, config.diff_ids, strict=True):
            f, size = src.open(path)
            with f:
                peek = streams.PeekReader(f)
                compression = streams.detect_compression(peek.peek(8))
                if compression not in ("", "gzip", "zstd"):
                    raise InvalidSpec(f"{src.what}: layer {path} uses {compression}")
                desc, _ = store.ingest_layer(
                    peek,
                    compression,
                    what=f"{src.what}: layer {path}",
                    expected_digest=_digest_from_path(path),
                    expected_size=size,
                    expected_diff_id=diff_id,
                )
            layers.append(desc)
        manifest = spec.Manifest(
            spec.OCI_MANIFEST,
            spec.Descriptor(spec.OCI_CONFIG, config_digest, len(config_bytes)),
            tuple(layers),
        )
        manifest_bytes = manifest.to_bytes()
        store.blobs.put(config_bytes, config_digest)
        digest = store.blobs.put(manifest_bytes)
        names = [refs.parse(t) for t in tags]
        store.add_image(spec.Descriptor(spec.OCI_MANIFEST, digest, len(manifest_bytes)), names)
        out.append(Loaded(config_digest, digest, names))
    return out


def load(store: ImageStore, path: str) -> list[Loaded]:
    store.ensure()
    with open_source(path, store.tmpdir) as src, store.ingest_lock():
        if src.exists("index.json"):
            return _load_oci(store, src)
        if src.exists("manifest.json"):
            return _load_docker(store, src)
        raise InvalidSpec(
            f"{path}: not a docker-archive or OCI archive (no index.json or manifest.json)"
        )


# -- save --------------------------------------------------------------------


def _tarinfo(name: str, size: int, *, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def save(
    store: ImageStore,
    images: list[tuple[Image, list[refs.Reference]]],
    out: str | None,
    fmt: str,
) -> None:
    """Write ``images`` (each with the names to record) to ``out`` (None: stdout)."""
    if fmt not in ("docker-archive", "oci-archive"):
        raise InvalidSpec(f"unknown archive format {fmt!r}: want docker-archive or oci-archive")
    tmp = None
    if out is None:
        target: IO[bytes] = sys.stdout.buffer
    else:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".cove-")
        target = os.fdopen(fd, "wb")
    try:
        with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _write_archive(store, tar, images, fmt)
        target.flush()
        if tmp and out:
            os.fsync(target.fileno())
            target.close()
            os.chmod(tmp, 0o644)
            os.rename(tmp, out)
            tmp = None
    finally:
        if tmp:
            target.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _write_archive(
    store: ImageStore,
    tar: tarfile.TarFile,
    images: list[tuple[Image, list[refs.Reference]]],
    fmt: str,
) -> None:
    written: set[str] = set()

    def add_blob(desc: spec.Descriptor) -> None:
        if desc.digest in written:
            return
        written.add(desc.digest)
        reader = store.blobs.open(desc.digest, desc.size)
        with contextlib.closing(reader):
            tar.addfile(_tarinfo(_blob_name(desc.digest), desc.size), reader)

    def add_bytes(name: str, data: bytes) -> None:
        tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))

    for d in ("blobs", "blobs/sha256"):
        tar.addfile(_dirinfo(d))
    index_entries = []
    docker_entries = []
    for img, names in images:
        mdesc = spec.Descriptor(
            img.manifest.media_type, img.manifest_digest, store.blobs.size(img.manifest_digest)
        )
        for layer in img.manifest.layers:
            add_blob(layer)
        add_blob(img.manifest.config)
        add_blob(mdesc)
        named: list[refs.Reference | None] = list(names) or [None]
        for n in named:
            ann = {}
            if n is not None:
                ann = {spec.ANNOTATION_IMAGE_NAME: str(n), spec.ANNOTATION_REF_NAME: str(n)}
            index_entries.append(
                spec.Descriptor(mdesc.media_type, mdesc.digest, mdesc.size, ann).to_json()
            )
        docker_entries.append(
            {
                "Config": _blob_name(img.manifest.config.digest),
                "RepoTags": [n.familiar() for n in names],
                "Layers": [_blob_name(layer.digest) for layer in img.manifest.layers],
            }
        )
    index = {"schemaVersion": 2, "mediaType": spec.OCI_INDEX, "manifests": index_entries}
    add_bytes("index.json", json.dumps(index).encode())
    if fmt == "docker-archive":
        add_bytes("manifest.json", json.dumps(docker_entries).encode())
    add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def _dirinfo(name: str) -> tarfile.TarInfo:
    info = _tarinfo(name, 0, mode=0o755)
    info.type = tarfile.DIRTYPE
    return info
