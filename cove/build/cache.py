"""The build cache: what each build step produced, keyed by everything that decides it.

One small JSON file per step key under ``<root>/build-cache/``, written by rename, so
concurrent builds never see half an entry and need no lock. An entry names the layer
the step made (or none) and when it was made; the layer itself lives in the image
store, so an entry whose layer was garbage-collected is simply a miss.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    layer: dict[str, Any] | None  # an OCI descriptor (mediaType, digest, size)
    diff_id: str | None
    created: str


class BuildCache:
    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "build-cache")

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key.removeprefix("sha256:") + ".json")

    def get(self, key: str) -> Entry | None:
        try:
            with open(self._path(key), "rb") as f:
                doc = json.load(f)
            return Entry(doc.get("layer"), doc.get("diff_id"), str(doc["created"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # absent or unreadable: a miss, the step runs again

    def put(self, key: str, entry: Entry) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        data = json.dumps(
            {"layer": entry.layer, "diff_id": entry.diff_id, "created": entry.created}
        ).encode()
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, self._path(key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def prune(self) -> int:
        """Forget every entry; how many there were."""
        try:
            count = sum(1 for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return 0
        shutil.rmtree(self.dir, ignore_errors=True)
        return count
