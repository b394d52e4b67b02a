"""The on-disk image store: content-addressable blobs, the image index, unpacked layers.

Layout under the state root (see docs/design.md)::

    images/oci-layout, images/index.json   an OCI image layout: the store is one
    images/blobs/sha256/<hex>              blobs, verified on write and on read
    layers/<hex-of-diff-id>/               one unpacked layer (an overlayfs lowerdir)
    layers/<hex>.json                      its uncompressed size
    tmp/                                   ingest temp files, never visible as content
    locks/                                 flock files

Concurrency: blob and layer writes go to ``tmp/`` and are renamed into place,
so no reader ever sees a partial one. Ingest holds ``gc.lock`` shared until
its image is in the index; garbage collection holds it exclusive, so it never
deletes content an ingest has written but not yet referenced. Index updates
are read-modify-write under ``index.lock`` with an atomic rename.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from cove.errors import Conflict, CorruptContent, InvalidSpec, NotFound
from cove.image import streams
from cove.spec import image as spec
from cove.spec import reference as refs
from cove.sys.syscalls import flocked, fsync_dir

if TYPE_CHECKING:
    from cove.image.layers import LayerStats
    from cove.image.pipeline import Pipeline

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'

# gc.lock paths this process holds shared (ingest, pin): its own collection would wait on
# itself (flock locks of two open files conflict within one process too), so it is skipped
_SHARED_HELD: dict[str, int] = {}


def _hex(digest: str) -> str:
    return spec.check_digest(digest).split(":", 1)[1]


class VerifyingReader:
    """Reads a blob file; raises ``CorruptContent`` once the bytes disagree with the digest."""

    def __init__(self, f: BinaryIO, digest: str, size: int) -> None:
        self._f = f
        self._digest = digest
        self._size = size
        self._hash = streams.Hasher()
        self._count = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.write(data)
        self._count += len(data)
        if (not data or self._count >= self._size) and not self._checked:
            self._check(eof=not data)
        return data

    def _check(self, *, eof: bool) -> None:
        if self._count > self._size or (eof and self._count != self._size):
            raise CorruptContent(
                f"blob {self._digest} has size {self._count}, expected {self._size}"
            )
        if self._count == self._size:
            self._checked = True
            if self._hash.digest != self._digest:
                raise CorruptContent(f"blob {self._digest} does not match its digest")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._f.close()


class BlobWriter:
    """Writes a blob to a temp file; ``commit`` verifies and renames it into place.

    ``adopt``: a file in the store's tmp dir that the bytes are written to by someone else
    (a resumable download): they are only hashed here, and the file itself is renamed into
    place once verified (one copy of a layer on disk, not two); ``abort`` leaves it."""

    def __init__(self, blobs: BlobStore, adopt: str | None = None) -> None:
        self._blobs = blobs
        self._adopted = adopt is not None
        self._f: BinaryIO | None = None
        if adopt is not None:
            self._tmp = adopt
        else:
            import tempfile  # (shutil and tempfile: imported where used, off the run path)

            fd, self._tmp = tempfile.mkstemp(dir=blobs.tmpdir, prefix="blob-")
            self._f = os.fdopen(fd, "wb")
        self._hash = streams.Hasher()
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._f is not None:
            self._f.write(data)
        self._hash.write(data)
        self.size += len(data)

    @property
    def digest_so_far(self) -> streams.Hasher:
        return self._hash

    def sync(self) -> None:
        """Flush what is written to disk now (the reading thread calls it at the end of the
        blob, while the layer still unpacks), so the fsync in ``commit`` finds it clean."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            return
        fd = os.open(self._tmp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, expected: str | None = None, expected_size: int | None = None) -> str:
        digest = self._hash.digest
        try:
            if expected is not None and digest != expected:
                raise CorruptContent(f"blob {expected} does not match its digest (got {digest})")
            if expected_size is not None and self.size != expected_size:
                raise CorruptContent(
                    f"blob {digest} has size {self.size}, expected {expected_size}"
                )
            if self._f is not None:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
            else:
                fd = os.open(self._tmp, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    # what was hashed is what the file holds: its writer wrote every byte
                    # it handed on, unbuffered
                    if os.fstat(fd).st_size != self.size:
                        raise CorruptContent(
                            f"blob {digest}: {self._tmp} holds {os.fstat(fd).st_size} bytes, "
                            f"{self.size} were hashed"
                        )
                    os.fsync(fd)
                finally:
                    os.close(fd)
            final = self._blobs.path(digest)
            # invariant: final is named by the verified digest of these very bytes
            os.rename(self._tmp, final)
            return digest
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._adopted:
            return  # the caller's file: kept to resume from, or removed by the caller
        with contextlib.suppress(OSError):
            if self._f is not None:
                self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class BlobStore:
    def __init__(self, layout: str, tmpdir: str) -> None:
        self.dir = os.path.join(layout, "blobs", "sha256")
        self.tmpdir = tmpdir

    def path(self, digest: str) -> str:
        return os.path.join(self.dir, _hex(digest))

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def size(self, digest: str) -> int:
        return os.stat(self.path(digest)).st_size

    def writer(self, adopt: str | None = None) -> BlobWriter:
        return BlobWriter(self, adopt)

    def put(self, data: bytes, expected: str | None = None) -> str:
        digest = spec.sha256_digest(data)
        if expected is not None and digest != expected:
            raise CorruptContent(f"blob {expected} does not match its digest (got {digest})")
        if self.has(digest):
            return digest
        w = self.writer()
        w.write(data)
        return w.commit(digest)

    def ingest(self, src: Any, expected: str | None = None, size: int | None = None) -> str:
        w = self.writer()
        try:
            streams.copy_stream(src, w)
        except BaseException:
            w.abort()
            raise
        return w.commit(expected, size)

    def open(self, digest: str, size: int | None = None) -> VerifyingReader:
        try:
            f = open(self.path(digest), "rb")  # closed by the reader
        except FileNotFoundError as e:
            raise NotFound(f"blob {digest} is not in the store") from e
        if size is None:
            size = os.fstat(f.fileno()).st_size
        return VerifyingReader(f, digest, size)

    def read(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError as e:
            raise NotFound(f"blob {digest} is not in the store") from e
        if spec.sha256_digest(data) != digest:
            raise CorruptContent(f"blob {digest} does not match its digest")
        return data

    def digests(self) -> Iterator[str]:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                yield "sha256:" + name


@dataclass(frozen=True)
class Image:
    """A manifest in the store and the names pointing at it."""

    manifest_digest: str
    manifest: spec.Manifest
    config: spec.ImageConfig
    names: tuple[refs.Reference, ...]
    # a multi-platform image: the OCI index of every platform's manifest (this one is the
    # default, the host's where the index has it); None for a single-platform image
    index_digest: str | None = None

    @property
    def id(self) -> str:
        return self.manifest.config.digest


@dataclass(frozen=True)
class IndexEntry:
    manifest: spec.Descriptor
    name: refs.Reference | None
    index: str | None = None  # the multi-platform index this name also stands for


# on a store index entry: the digest of the OCI index of every platform of that image
ANNOTATION_PLATFORM_INDEX = "io.cove.image.platform-index"


class ImageStore:
    """Blobs, the index of named images, and the unpacked layers of one state root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.layout = os.path.join(root, "images")
        self.tmpdir = os.path.join(root, "tmp")
        self.layers_dir = os.path.join(root, "layers")
        self.locks = os.path.join(root, "locks")
        self.blobs = BlobStore(self.layout, self.tmpdir)
        self.index_path = os.path.join(self.layout, "index.json")
        # the image ids (config digests) containers use, set by the engine (the store knows
        # nothing of containers); read by garbage collection under the exclusive gc.lock
        self.in_use: Callable[[], set[str]] | None = None

    def ensure(self) -> None:
        for d in (self.blobs.dir, self.tmpdir, self.layers_dir, self.locks):
            os.makedirs(d, mode=0o700, exist_ok=True)
        layout_file = os.path.join(self.layout, "oci-layout")
        if not os.path.exists(layout_file):
            self._atomic_write(layout_file, OCI_LAYOUT)

    # -- locks ------------------------------------------------------------

    @contextlib.contextmanager
    def ingest_lock(self) -> Iterator[int]:
        """Held (shared) while content is written but not yet referenced by the index."""
        path = os.path.join(self.locks, "gc.lock")
        with flocked(path, shared=True) as fd:
            _SHARED_HELD[path] = _SHARED_HELD.get(path, 0) + 1
            try:
                yield fd
            finally:
                _SHARED_HELD[path] -= 1

    def pin(self) -> contextlib.AbstractContextManager[int]:
        """Held (shared) from resolving an image until a container record naming it is
        committed: garbage collection and rmi (exclusive) then see either no such use yet
        or the record, never a container whose image they are deleting."""
        self.ensure()
        return self.ingest_lock()

    def gc_lock(self) -> contextlib.AbstractContextManager[int]:
        self.ensure()
        return flocked(os.path.join(self.locks, "gc.lock"))

    def _index_lock(self) -> contextlib.AbstractContextManager[int]:
        return flocked(os.path.join(self.locks, "index.lock"))

    # -- index ------------------------------------------------------------

    def _atomic_write(self, path: str, data: bytes) -> None:
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            fsync_dir(os.path.dirname(path))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def entries(self) -> list[IndexEntry]:
        try:
            with open(self.index_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        index = spec.Index.parse(data, f"store index {self.index_path}")
        out = []
        for desc in index.manifests:
            name = desc.annotations.get(spec.ANNOTATION_IMAGE_NAME)
            multi = desc.annotations.get(ANNOTATION_PLATFORM_INDEX)
            out.append(IndexEntry(desc, refs.parse(name) if name else None, multi))
        return out

    def _write_entries(self, entries: list[IndexEntry]) -> None:
        manifests = []
        for e in entries:
            annotations = {}
            if e.name:
                annotations[spec.ANNOTATION_IMAGE_NAME] = str(e.name)
                annotations[spec.ANNOTATION_REF_NAME] = str(e.name)
            if e.index:
                annotations[ANNOTATION_PLATFORM_INDEX] = e.index
            manifests.append(
                spec.Descriptor(
                    e.manifest.media_type, e.manifest.digest, e.manifest.size, annotations
                ).to_json()
            )
        doc = {"schemaVersion": 2, "mediaType": spec.OCI_INDEX, "manifests": manifests}
        self._atomic_write(self.index_path, json.dumps(doc, indent=2).encode() + b"\n")

    @contextlib.contextmanager
    def edit_index(self) -> Iterator[list[IndexEntry]]:
        """Yield the entries to mutate in place; they are written back atomically."""
        self.ensure()
        with self._index_lock():
            entries = self.entries()
            yield entries
            self._write_entries(entries)

    def add_image(self, manifest: spec.Descriptor, names: list[refs.Reference]) -> list[str]:
        """Point ``names`` at ``manifest``; an image that loses its last name stays, untagged.

        Returns the manifest digests that were left without a name by this change.
        """
        orphaned: list[str] = []
        with self.edit_index() as entries:
            keyed = {str(n) for n in names}
            # a new name of a multi-platform image's manifest (tag) stands for its index too
            multi = next((e.index for e in entries
                          if e.index and e.manifest.digest == manifest.digest), None)  # fmt: skip
            moved = [e for e in entries if e.name and str(e.name) in keyed]
            entries[:] = [e for e in entries if e not in moved]
            entries[:] = [e for e in entries if e.manifest.digest != manifest.digest or e.name]
            for n in names:
                entries.append(IndexEntry(manifest, n, multi))
            if not names and not any(e.manifest.digest == manifest.digest for e in entries):
                entries.append(IndexEntry(manifest, None))
            for e in moved:
                if e.manifest.digest != manifest.digest and not any(
                    x.manifest.digest == e.manifest.digest for x in entries
                ):
                    entries.append(IndexEntry(e.manifest, None))
                    orphaned.append(e.manifest.digest)
        return orphaned

    def add_platforms(
        self, manifests: Sequence[spec.Descriptor], names: list[refs.Reference]
    ) -> str:
        """Store an OCI index over ``manifests`` (each with its platform, all in the store)
        and point ``names`` at it: the entries name the default manifest (the host's, else
        the first) and carry the index, which garbage collection then keeps whole. The
        children's own unnamed entries go: the index keeps them. Returns the index digest.
        """
        host = spec.Platform.host()
        index = spec.Index(spec.OCI_INDEX, tuple(manifests))
        digest = self.blobs.put(index.to_bytes())
        default = next(
            (m for m in manifests if m.platform and (m.platform.os, m.platform.architecture)
             == (host.os, host.architecture)), manifests[0],
        )  # fmt: skip
        plain = spec.Descriptor(default.media_type, default.digest, default.size)
        children = {m.digest for m in manifests}
        with self.edit_index() as entries:
            keyed = {str(n) for n in names}
            entries[:] = [
                e for e in entries
                if not (e.name and str(e.name) in keyed)
                and not (e.name is None and e.manifest.digest in children)
            ]  # fmt: skip
            for n in names:
                entries.append(IndexEntry(plain, n, digest))
            if not names:
                entries.append(IndexEntry(plain, None, digest))
        return digest

    def platform_index(self, img: Image) -> spec.Index | None:
        if not img.index_digest:
            return None
        return spec.Index.parse(self.blobs.read(img.index_digest), f"index {img.index_digest}")

    def for_platform(self, img: Image, platform: spec.Platform) -> Image:
        """The manifest of ``img`` for ``platform`` (a multi-platform image's child); the
        image itself when it has no index or is that platform already."""
        have = img.config.platform
        index = self.platform_index(img)
        if index is None or (have.os, have.architecture) == (platform.os, platform.architecture):
            return img
        for m in index.manifests:
            p = m.platform
            if (
                p
                and (p.os, p.architecture) == (platform.os, platform.architecture)
                and (not platform.variant or p.variant == platform.variant)
            ):
                child = self.load_image(m.digest, img.names)
                return Image(child.manifest_digest, child.manifest, child.config, child.names,
                             img.index_digest)  # fmt: skip
        return img  # the caller refuses the mismatch with its own message

    def put_image(
        self, config: dict[str, Any], layers: Sequence[spec.Descriptor]
    ) -> tuple[Image, spec.Descriptor]:
        """Store an image config document and the OCI manifest over ``layers`` (blobs only:
        ``add_image`` names it); the image and its manifest's descriptor."""
        raw = spec.canonical_json(config)
        config_digest = self.blobs.put(raw)
        manifest = spec.Manifest(
            spec.OCI_MANIFEST,
            spec.Descriptor(spec.OCI_CONFIG, config_digest, len(raw)),
            tuple(layers),
        )
        mraw = manifest.to_bytes()
        desc = spec.Descriptor(spec.OCI_MANIFEST, self.blobs.put(mraw), len(mraw))
        return Image(desc.digest, manifest, spec.ImageConfig.parse(raw), ()), desc

    def load_image(self, manifest_digest: str, names: tuple[refs.Reference, ...]) -> Image:
        manifest = spec.Manifest.parse(
            self.blobs.read(manifest_digest), f"manifest {manifest_digest}"
        )
        config = spec.ImageConfig.parse(
            self.blobs.read(manifest.config.digest), f"image config {manifest.config.digest}"
        )
        return Image(manifest_digest, manifest, config, names)

    def images(self) -> list[Image]:
        """Every image in the index, each once, names gathered, in index order."""
        grouped: dict[str, list[refs.Reference]] = {}
        indexes: dict[str, str] = {}
        for e in self.entries():
            names = grouped.setdefault(e.manifest.digest, [])
            if e.name:
                names.append(e.name)
            if e.index:
                indexes[e.manifest.digest] = e.index
        out = []
        for d, n in grouped.items():
            img = self.load_image(d, tuple(n))
            if d in indexes:
                img = Image(img.manifest_digest, img.manifest, img.config, img.names, indexes[d])
            out.append(img)
        return out

    def resolve(self, text: str, platform: str | None = None) -> Image:
        """Find an image by name, by ``name@digest``, by id, or by a unique id prefix; with
        ``platform``, a multi-platform image's manifest for it."""
        img = self._resolve(text)
        return self.for_platform(img, spec.Platform.parse(platform)) if platform else img

    def _resolve(self, text: str) -> Image:
        images = self.images()
        bare = text.removeprefix("sha256:")
        if 0 < len(bare) <= 64 and all(c in "0123456789abcdef" for c in bare):
            hits = {i.id: i for i in images if i.id.removeprefix("sha256:").startswith(bare)}
            hits |= {i.id: i for i in images if i.manifest_digest == "sha256:" + bare}
            if len(hits) == 1:
                return next(iter(hits.values()))
            if len(hits) > 1:
                raise Conflict(f"image id prefix {bare!r} is ambiguous")
            if text.startswith("sha256:"):
                raise NotFound(f"no such image: {text}")
        ref = refs.parse(text)
        for img in images:
            if ref.digest:
                if img.manifest_digest == ref.digest and (ref.tag is None or ref in img.names):
                    return img
            elif ref in img.names:
                return img
        raise NotFound(f"no such image: {text}")

    # -- layers -----------------------------------------------------------

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir, _hex(diff_id))

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isdir(self.layer_path(diff_id))

    def layer_size(self, diff_id: str) -> int | None:
        try:
            with open(self.layer_path(diff_id) + ".json", "rb") as f:
                return int(json.load(f)["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def ingest_layer(
        self,
        src: Any,
        compression: str,
        *,
        what: str,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        expected_diff_id: str | None = None,
        store_as: str | None = None,
        blob_file: str | None = None,
    ) -> tuple[spec.Descriptor, str]:
        """Store a layer blob and unpack it, reading ``src`` once.

        ``compression`` is that of ``src``; ``store_as`` recompresses (only
        'gzip' is supported) for inputs that OCI has no media type for.
        ``blob_file``: ``src`` itself writes every byte it returns to this file (unbuffered,
        in the store's tmp dir), which becomes the blob once verified.
        Returns the blob's descriptor and the layer's diff id.
        """
        import shutil
        import tempfile

        from cove.image.layers import default_workers, unpack_stream
        from cove.image.pipeline import Pipeline

        if blob_file is not None and store_as is not None:
            raise ValueError("a blob_file is the blob as received: nothing to recompress")
        writer = self.blobs.writer(blob_file)
        diff_hash = streams.Hasher()
        tmp = tempfile.mkdtemp(dir=self.tmpdir, prefix="layer-")
        gz = streams.GzipSink(writer) if store_as == "gzip" else None
        # one thread reads the blob (storing and hashing it), one inflates it (hashing the
        # tar), this one unpacks: each byte stream is hashed once, by the thread holding it
        pipe = Pipeline()
        try:
            raw_sinks: list[streams.Sink] = [] if gz else [writer]
            tar_sinks: list[streams.Sink] = [diff_hash, *([gz] if gz else [])]
            at_end = None if gz else writer.sync
            if compression == "":
                pipe.add(src, [*raw_sinks, *tar_sinks], "layer-read", at_end)
            else:
                raw = pipe.add(src, raw_sinks, "layer-read", at_end)
                pipe.add(streams.decompressor(raw, compression, what), tar_sinks, "layer-inflate")
            stats = unpack_stream(pipe.out, tmp, what, workers=default_workers(), fresh=True)
            pipe.out.drain()  # the digest covers the bytes after the end-of-archive marker too
            pipe.finish()
            if gz:
                gz.close()
            diff_id = diff_hash.digest
            if expected_diff_id is not None and diff_id != expected_diff_id:
                raise CorruptContent(
                    f"{what}: uncompressed content {diff_id} does not match diff id "
                    f"{expected_diff_id}"
                )
            digest = writer.commit(expected_digest, expected_size)
            self._place_layer(tmp, diff_id, stats)
        except CorruptContent as e:
            # bad bytes often surface as a decompression error first: name the real cause
            if expected_digest and not gz:
                _blame_digest(pipe, writer.digest_so_far, expected_digest, e)
            raise
        finally:
            pipe.stop()  # no stage writes to the blob after this
            if sys.exc_info()[0] is not None:
                writer.abort()
                shutil.rmtree(tmp, ignore_errors=True)
        media_type = spec.OCI_LAYER_FOR[store_as if store_as is not None else compression]
        return spec.Descriptor(media_type, digest, writer.size), diff_id

    def _place_layer(self, tmp: str, diff_id: str, stats: LayerStats) -> None:
        import shutil

        final = self.layer_path(diff_id)
        with flocked(os.path.join(self.locks, f"layer-{_hex(diff_id)}.lock")):
            if os.path.isdir(final):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            # "disk": what a walk of the directory finds (the root included; regular bytes
            # counted once per inode); `cove system check` compares the layer against it,
            # since opaque markers and repeated tar entries make the tar's figures differ
            # (counted by the writer as it went when it could, else a walk)
            disk = stats.disk or layer_figures(tmp)
            meta = json.dumps({"size": stats.bytes, "entries": stats.entries, "disk": disk})
            with open(final + ".json", "wb") as f:
                f.write(meta.encode())
            # invariant: tmp is a complete, verified unpack of exactly diff_id
            os.rename(tmp, final)

    def unpack_layer(self, desc: spec.Descriptor, diff_id: str) -> str:
        """Make sure layer ``diff_id`` is unpacked, from its (verified) blob if need be."""
        path = self.layer_path(diff_id)
        if os.path.isdir(path):
            return path
        compression = spec.LAYER_COMPRESSION.get(desc.media_type)
        if compression is None:
            raise InvalidSpec(f"layer {desc.digest} has unsupported media type {desc.media_type}")
        import shutil
        import tempfile

        from cove.image.layers import default_workers, unpack_stream
        from cove.image.pipeline import Pipeline

        what = f"layer {desc.digest}"
        src = self.blobs.open(desc.digest, desc.size)
        tmp = tempfile.mkdtemp(dir=self.tmpdir, prefix="layer-")
        diff_hash = streams.Hasher()
        pipe = Pipeline()
        try:
            if compression == "":
                pipe.add(src, [diff_hash], "layer-read")
            else:
                raw = pipe.add(src, [], "layer-read")  # src verifies the blob's digest
                pipe.add(streams.decompressor(raw, compression, what), [diff_hash],
                         "layer-inflate")  # fmt: skip
            stats = unpack_stream(pipe.out, tmp, what, workers=default_workers(), fresh=True)
            pipe.out.drain()
            pipe.finish()
            if diff_hash.digest != diff_id:
                raise CorruptContent(
                    f"{what}: uncompressed content does not match diff id {diff_id}"
                )
            self._place_layer(tmp, diff_id, stats)
        except CorruptContent as e:
            # if the blob itself is corrupt, say so instead
            try:
                pipe.drain_source()
            except CorruptContent as blob_error:
                raise blob_error from e
            except Exception:
                pass
            raise
        finally:
            pipe.stop()
            if sys.exc_info()[0] is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            src.close()
        return path

    # -- garbage collection -----------------------------------------------

    def collect(
        self, keep_diff_ids: set[str] | None = None, *, held: bool = False
    ) -> tuple[list[str], int]:
        """Delete blobs and layers no image and no container references, and stale temp
        files. ``held``: the caller holds ``gc_lock`` already.

        Returns the deleted blob digests and the bytes reclaimed.
        """
        removed: list[str] = []
        freed = 0
        if not held and _SHARED_HELD.get(os.path.join(self.locks, "gc.lock")):
            return removed, freed  # this process ingests: the next collection takes it
        with contextlib.nullcontext() if held else self.gc_lock():
            live_blobs: set[str] = set()
            live_layers: set[str] = set(keep_diff_ids or ())
            # invariant: every container being created holds pin() until its record is
            # committed, so under the exclusive lock this is every image a container uses.
            # An unreadable record store raises: nothing is collected then; an in-use
            # image whose config is unreadable keeps every layer (which are its is unknown)
            keep_all_layers = False
            for config_digest in self.in_use() if self.in_use else ():
                live_blobs.add(config_digest)
                try:
                    cfg = spec.ImageConfig.parse(
                        self.blobs.read(config_digest), f"image config {config_digest}"
                    )
                    live_layers.update(cfg.diff_ids)
                except (NotFound, CorruptContent, InvalidSpec):
                    keep_all_layers = True
            manifests = []
            for e in self.entries():
                manifests.append(e.manifest.digest)
                if e.index:  # a multi-platform image keeps its index and every platform
                    live_blobs.add(e.index)
                    with contextlib.suppress(NotFound, CorruptContent, InvalidSpec):
                        idx = spec.Index.parse(self.blobs.read(e.index), f"index {e.index}")
                        manifests += [m.digest for m in idx.manifests]
            for digest in manifests:
                live_blobs.add(digest)
                with contextlib.suppress(NotFound, CorruptContent, InvalidSpec):
                    img = self.load_image(digest, ())
                    live_blobs.add(img.manifest.config.digest)
                    live_blobs.update(layer.digest for layer in img.manifest.layers)
                    live_layers.update(img.config.diff_ids)
            for digest in list(self.blobs.digests()):
                if digest not in live_blobs:
                    with contextlib.suppress(FileNotFoundError):
                        freed += self.blobs.size(digest)
                        os.unlink(self.blobs.path(digest))
                        removed.append(digest)
            live_hex = {_hex(d) for d in live_layers}
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.layers_dir):
                    if keep_all_layers or name.split(".", 1)[0] in live_hex:
                        continue
                    path = os.path.join(self.layers_dir, name)
                    if name.endswith(".json"):
                        os.unlink(path)
                    else:
                        _remove_tree(path, self.tmpdir)
            # rootless keep-id's copies of layers with shifted owners (cove.image.idshift)
            # go with the layer they copy
            idmapped = os.path.join(os.path.dirname(self.layers_dir), IDMAPPED)
            with contextlib.suppress(FileNotFoundError):
                for key in os.listdir(idmapped):
                    for name in os.listdir(os.path.join(idmapped, key)):
                        if not keep_all_layers and name not in live_hex:
                            _remove_tree(os.path.join(idmapped, key, name), self.tmpdir)
            # nothing is being ingested while the exclusive lock is held: all temp is stale
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.tmpdir):
                    _remove_tree(os.path.join(self.tmpdir, name), None)
        return removed, freed


IDMAPPED = "idmapped"  # <store>/idmapped/<map key>/<layer hex>: cove.image.idshift


def layer_figures(path: str) -> list[int]:
    """[entries, bytes] of an unpacked layer: every entry below ``path`` plus the root
    itself, and the size of its regular files, each inode once (hard links)."""
    entries = 1
    total = 0
    seen: set[int] = set()
    for dirpath, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return [entries, total]


def _blame_digest(pipe: Pipeline, hasher: streams.Hasher, expected: str, cause: Exception) -> None:
    """Read the rest of the blob; raise a digest mismatch (caused by ``cause``) if there is
    one."""
    try:
        pipe.drain_source()
    except Exception:
        return
    if hasher.digest != expected:
        raise CorruptContent(f"blob {expected} does not match its digest") from cause


def _remove_tree(path: str, trash: str | None) -> None:
    """Remove ``path``; move it to ``trash`` first so it vanishes from view at once."""
    import shutil
    import tempfile

    if trash and os.path.isdir(path) and not os.path.islink(path):
        dest = tempfile.mkdtemp(dir=trash, prefix="trash-")
        try:
            os.rename(path, os.path.join(dest, "t"))
            path = dest
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
