"""``cove import``: a rootfs tarball becomes a one-layer image, read in a single pass."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from cove.errors import InvalidSpec, NotFound
from cove.image import streams
from cove.image.store import ImageStore
from cove.spec import changes as changes_spec
from cove.spec import image as spec
from cove.spec import reference as refs


def now_rfc3339() -> str:
    """The creation time: ``SOURCE_DATE_EPOCH`` when set, for reproducible images."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = datetime.fromtimestamp(int(epoch) if epoch else time.time(), UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if not epoch else "%Y-%m-%dT%H:%M:%SZ")


def import_rootfs(
    store: ImageStore,
    path: str,
    names: list[refs.Reference],
    changes: list[str],
    platform: spec.Platform,
    message: str = "",
    source: str | None = None,
) -> tuple[str, str]:
    """Import ``path`` (``-`` for stdin); return (image id, manifest digest). ``source``: what
    the history names as the input (default the file's name; an API upload is ``-``)."""
    container_config: dict[str, Any] = {}
    for change in changes:
        changes_spec.apply_change(container_config, change)
    store.ensure()
    if path != "-" and (not os.path.exists(path) or os.path.isdir(path)):
        raise NotFound(f"no such file: {path}")
    raw: Any = sys.stdin.buffer if path == "-" else open(path, "rb")
    with contextlib.closing(raw), store.ingest_lock():
        peek = streams.PeekReader(raw)
        compression = streams.detect_compression(peek.peek(8))
        # OCI has media types for plain, gzip and zstd layers only: others are recompressed
        store_as = "gzip" if compression in ("xz", "bzip2") else None
        desc, diff_id = store.ingest_layer(
            peek, compression, what=f"import {path}", store_as=store_as
        )
        if desc.size == 0:
            raise InvalidSpec(f"import {path}: empty input")
        created = now_rfc3339()
        if source is None:
            source = "-" if path == "-" else os.path.basename(path)
        history = {
            "created": created,
            "created_by": f"cove import {source}",
            "comment": message or f"Imported from {source}",
        }
        config = spec.new_config([diff_id], platform, created, container_config, [history])
        img, manifest_desc = store.put_image(config, [desc])
        store.add_image(manifest_desc, names)
    return img.id, img.manifest_digest
