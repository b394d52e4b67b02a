"""The engine: the one API every face (CLI, later REST) calls.

Faces parse and format; the engine resolves names, enforces the rules
(Docker's semantics for rmi, tag, prune) and calls the stores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cove.errors import Conflict, CorruptContent, InvalidSpec, NotFound
from cove.image.store import Image, ImageStore, IndexEntry
from cove.spec import image as spec
from cove.spec import reference as refs
from cove.sys import events as log  # the events log (`docker events`)
from cove.sys.private import DEFAULT_ROOT

_RUNNING = ("running", "paused", "restarting")  # Docker's IsRunning; the rest are stopped


def default_root() -> str:
    if os.environ.get("COVE_ROOT"):
        return os.environ["COVE_ROOT"]
    from cove.sys import userns

    # rootless: the user's own root, as Podman's ~/.local/share/containers
    return userns.data_dir() if userns.rootless() else DEFAULT_ROOT


@dataclass(frozen=True)
class ImageRow:
    """One line of ``cove images``: an image under one of its names (or none)."""

    image: Image
    name: refs.Reference | None
    size: int


@dataclass(frozen=True)
class HistoryRow:
    image_id: str | None
    created: str
    created_by: str
    size: int
    comment: str


class Engine:
    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_root())
        self.images = ImageStore(self.root)
        self.images.in_use = self._images_in_use

    # -- images -------------------------------------------------------------

    def image(self, name: str) -> Image:
        return self.images.resolve(name)

    def image_size(self, img: Image) -> int:
        """Uncompressed size of the layers (as ``docker images`` shows), else blob sizes."""
        total = 0
        for layer, diff_id in zip(img.manifest.layers, img.config.diff_ids, strict=False):
            size = self.images.layer_size(diff_id)
            total += layer.size if size is None else size
        return total

    def import_image(
        self,
        path: str,
        name: str | None = None,
        changes: list[str] | None = None,
        platform: str | None = None,
        message: str = "",
        source: str | None = None,
    ) -> str:
        from cove.image.importer import import_rootfs

        names = [refs.parse(name)] if name else []
        plat = spec.Platform.parse(platform) if platform else spec.Platform.host()
        with self._collect_on_failure():
            image_id, _ = import_rootfs(
                self.images, path, names, changes or [], plat, message, source
            )
        log.emit(self.root, "image", "import", image_id, {"name": name or image_id})
        return image_id

    def load(self, path: str) -> list[Any]:
        from cove.image.archive import load

        with self._collect_on_failure():
            loaded = load(self.images, path)
        for x in loaded:
            for label in [n.familiar() for n in x.names] or [x.image_id]:
                log.emit(self.root, "image", "load", x.image_id, {"name": label})
        return loaded

    @contextlib.contextmanager
    def _collect_on_failure(self) -> Iterator[None]:
        """A failed ingest leaves no unreferenced blob or layer behind."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.images.collect()
            self.drop_vm_roots()
            raise

    def save(self, names: list[str], out: str | None, fmt: str = "docker-archive") -> None:
        from cove.image.archive import save

        if not names:
            raise InvalidSpec("save needs at least one image")
        chosen: dict[str, tuple[Image, list[refs.Reference]]] = {}
        for text in names:
            img = self.images.resolve(text)
            entry = chosen.setdefault(img.manifest_digest, (img, []))
            ref = _as_name(text)
            wanted = [ref] if ref and ref in img.names else ([] if ref else list(img.names))
            entry[1].extend(n for n in wanted if n not in entry[1])
        save(self.images, list(chosen.values()), out, fmt)

    def list_images(self) -> list[ImageRow]:
        rows = []
        for img in self.images.images():
            size = self.image_size(img)
            for name in img.names or (None,):
                rows.append(ImageRow(img, name, size))
        rows.sort(key=lambda r: r.image.config.created, reverse=True)
        return rows

    def inspect_image(self, name: str) -> dict[str, Any]:
        img = self.images.resolve(name)
        cfg = img.config
        history = cfg.history
        lower = [self.images.layer_path(d) for d in reversed(cfg.diff_ids)]
        repos = sorted({n.familiar_repository for n in img.names})
        out: dict[str, Any] = {
            "Id": img.id,
            "RepoTags": [n.familiar() for n in img.names],
            "RepoDigests": [f"{r}@{img.manifest_digest}" for r in repos],
            "Parent": "",
            "Comment": history[-1].get("comment", "") if history else "",
            "Created": cfg.created,
            "DockerVersion": "",
            "Author": cfg.raw.get("author", ""),
            "Config": cfg.config,
            "Architecture": cfg.platform.architecture,
            "Os": cfg.platform.os,
            "Size": self.image_size(img),
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDir": ":".join(p for p in lower if os.path.isdir(p))},
            },
            "RootFS": {"Type": "layers", "Layers": cfg.diff_ids},
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},  # Go's zero time: never tagged
            "Descriptor": {
                "mediaType": img.manifest.media_type,
                "digest": img.manifest_digest,
                "size": self.images.blobs.size(img.manifest_digest),
            },
        }
        if cfg.platform.variant:
            out["Variant"] = cfg.platform.variant
        return out

    def tag(self, source: str, target: str) -> None:
        img = self.images.resolve(source)
        ref = refs.parse(target)
        if ref.digest:
            raise InvalidSpec(f"refusing to create a tag with a digest reference: {target}")
        desc = spec.Descriptor(
            img.manifest.media_type,
            img.manifest_digest,
            self.images.blobs.size(img.manifest_digest),
        )
        self.images.add_image(desc, [*img.names, ref])
        log.emit(self.root, "image", "tag", img.id, {"name": ref.familiar()})

    def remove_image(self, name: str, *, force: bool = False) -> list[tuple[str, str]]:
        """Docker's rmi: untag a name; delete the image when no name is left and no
        container uses it. ``force`` never deletes what a container uses either: it only
        untags, and the image stays, dangling, until ``image prune`` after its last
        container is gone.

        Returns ("Untagged"|"Deleted", what) pairs in the order Docker prints them.
        """
        # invariant: exclusive gc.lock from reading the users to the end of the collection;
        # a container being created holds it shared (ImageStore.pin) from resolving its
        # image until its record is committed, so no user can appear unseen in between
        with self.images.gc_lock():
            img = self.images.resolve(name)
            ref = _as_name(name)
            users = self._users(img.id)
            running = [r.id for r in users if r.status.value in _RUNNING]
            stopped = [r.id for r in users if r.status.value not in _RUNNING]
            events: list[tuple[str, str]] = []
            by_name = ref is not None and ref in img.names
            if by_name and len(img.names) == 1 and users and not force:
                raise Conflict(
                    f'conflict: unable to remove repository reference "{name}" (must force) - '
                    f"container {users[0].id[:12]} is using its referenced image {_short(img.id)}"
                )
            if not by_name:
                if running:
                    raise Conflict(
                        f"conflict: unable to delete {_short(img.id)} (cannot be forced) - "
                        f"image is being used by running container {running[0][:12]}"
                    )
                if len(img.names) > 1 and not force:
                    raise Conflict(
                        f"conflict: unable to delete {_short(img.id)} (must be forced) - "
                        "image is referenced in multiple repositories"
                    )
                if stopped and not (force and img.names):
                    how = "must be forced" if not force else "cannot be forced"
                    raise Conflict(
                        f"conflict: unable to delete {_short(img.id)} ({how}) - "
                        f"image is being used by stopped container {stopped[0][:12]}"
                    )
            with self.images.edit_index() as entries:
                mine = [e for e in entries if e.manifest.digest == img.manifest_digest]
                drop = [e for e in mine if e.name == ref] if by_name else mine
                for e in drop:
                    entries.remove(e)
                    if e.name:
                        events.append(("Untagged", e.name.familiar()))
                if not any(e.manifest.digest == img.manifest_digest for e in entries):
                    if users:  # untagged only: the image stays, dangling, for its containers
                        entries.append(IndexEntry(mine[0].manifest, None))
                    else:
                        events.append(("Deleted", img.id))
            if events and events[-1][0] == "Deleted":
                self.images.collect(held=True)
                self._drop_vm_roots()
        for what, value in events:
            action = "untag" if what == "Untagged" else "delete"
            log.emit(self.root, "image", action, img.id, {"name": value})
        return events

    def _users(self, image_id: str) -> list[Any]:
        """The container records (cove.state.Record) using ``image_id``."""
        if not os.path.exists(os.path.join(self.root, "state.db")):
            return []
        from cove.state import Store

        store = Store(self.root)
        try:
            return store.image_users(image_id)
        finally:
            store.close()

    def _images_in_use(self) -> set[str]:
        """The image ids of every container record (garbage collection's extra roots)."""
        if not os.path.exists(os.path.join(self.root, "state.db")):
            return set()
        from cove.state import Store

        store = Store(self.root)
        try:
            return store.image_ids()
        finally:
            store.close()

    def prune_images(
        self, *, all_images: bool = False, only: Callable[[Image], bool] | None = None
    ) -> tuple[list[tuple[str, str]], int]:
        """Docker's image prune: dangling images (``all_images``: every image) that no
        container uses; ``only``: those it accepts too (the API's until/label filters)."""
        events: list[tuple[str, str]] = []
        # invariant: as in remove_image, the users are read under the exclusive gc.lock
        with self.images.gc_lock():
            in_use_ids = self._images_in_use()
            with self.images.edit_index() as entries:
                in_use: set[str] = set()
                for e in entries:
                    if e.manifest.digest in in_use:
                        continue
                    with contextlib.suppress(NotFound, CorruptContent, InvalidSpec):
                        img = self.images.load_image(e.manifest.digest, ())
                        if img.id in in_use_ids or (only is not None and not only(img)):
                            in_use.add(e.manifest.digest)  # kept
                doomed = [
                    e
                    for e in entries
                    if (all_images or e.name is None) and e.manifest.digest not in in_use
                ]
                for e in doomed:
                    entries.remove(e)
                    if e.name:
                        events.append(("untagged", e.name.familiar()))
                gone = {e.manifest.digest for e in doomed} - {e.manifest.digest for e in entries}
            for digest in sorted(gone):
                events.append(("deleted", digest))
            _, freed = self.images.collect(held=True)
            freed += self._drop_vm_roots()
        for what, value in events:
            log.emit(self.root, "image", "untag" if what == "untagged" else "delete", value,
                     {"name": value})  # fmt: skip
        return events, freed

    def drop_vm_roots(self) -> int:
        """Remove the cached VM root file systems (``run --vm``) of images that are gone;
        the bytes freed."""
        with self.images.gc_lock():
            return self._drop_vm_roots()

    def _drop_vm_roots(self) -> int:
        # an image a container (a VM run too) uses stays in the index, so its root stays;
        # a run building one holds pin(), which the caller's exclusive gc.lock excludes
        cache = os.path.join(self.root, "vmroot")
        try:
            names = os.listdir(cache)
        except FileNotFoundError:
            return 0
        live = {i.id.removeprefix("sha256:") for i in self.images.images()}
        live |= {i.removeprefix("sha256:") for i in self._images_in_use()}
        freed = 0
        for name in names:
            if name.endswith(".ext4") and name.removesuffix(".ext4") not in live:
                path = os.path.join(cache, name)
                with contextlib.suppress(OSError):
                    freed += os.stat(path).st_blocks * 512
                    os.unlink(path)
        return freed

    def history(self, name: str) -> list[HistoryRow]:
        img = self.images.resolve(name)
        layers = list(zip(img.manifest.layers, img.config.diff_ids, strict=False))
        rows: list[HistoryRow] = []
        for h in img.config.history:
            size = 0
            if not h.get("empty_layer") and layers:
                desc, diff_id = layers.pop(0)
                known = self.images.layer_size(diff_id)
                size = desc.size if known is None else known
            rows.append(
                HistoryRow(
                    None,
                    str(h.get("created", "")),
                    str(h.get("created_by", "")),
                    size,
                    str(h.get("comment", "")),
                )
            )
        rows.reverse()
        if rows:
            top = rows[0]
            rows[0] = HistoryRow(img.id, top.created, top.created_by, top.size, top.comment)
        return rows

    def unpack(self, name: str) -> list[str]:
        """The unpacked layer directories of an image, lowest first."""
        return self.unpack_image(self.images.resolve(name))

    def unpack_image(self, img: Image) -> list[str]:
        with self.images.ingest_lock():
            return [
                self.images.unpack_layer(desc, diff_id)
                for desc, diff_id in zip(img.manifest.layers, img.config.diff_ids, strict=True)
            ]


def _as_name(text: str) -> refs.Reference | None:
    """``text`` as a tagged name, or None when it is an id or digest."""
    bare = text.removeprefix("sha256:")
    if text.startswith("sha256:") or (
        len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare)
    ):
        return None
    ref = refs.parse(text)
    return ref if ref.tag and not ref.digest else None


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]
