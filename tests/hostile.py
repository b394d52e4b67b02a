"""Shared helpers of tests/security: hostile images made from the shared Alpine rootfs.

Each attack test builds its own image here, so the payload is in the test, not in the repo.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from conftest import CoveRunner
from tarmaker import TarBuilder


def alpine_variant(
    cove: CoveRunner,
    alpine_tar: Path,
    ref: str,
    tmp_path: Path,
    *,
    drop: Iterable[str] = (),
    add: Callable[[TarBuilder], object] | None = None,
    change: Iterable[str] = ('CMD ["/bin/sh"]',),
) -> str:
    """Import Alpine with the entries under ``drop`` removed and ``add``'s entries appended
    (later entries win on import); returns the image id."""
    gone = [p.strip("/") for p in drop]
    out = TarBuilder()
    with tarfile.open(alpine_tar, "r:gz") as src:
        for info in src:
            name = info.name.removeprefix("./").rstrip("/")
            if any(name == g or name.startswith(g + "/") for g in gone):
                continue
            data = src.extractfile(info) if info.isfile() else None
            out.tar.addfile(info, io.BytesIO(data.read()) if data else None)
    if add is not None:
        add(out)
    path = tmp_path / f"{ref.replace(':', '_').replace('/', '_')}.tar.gz"
    path.write_bytes(gzip.compress(out.bytes(), mtime=0))
    args = ["import"]
    for c in change:
        args += ["--change", c]
    return cove(*args, str(path), ref).stdout.strip()


@contextlib.contextmanager
def host_submount(path: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs mounted on the host directory ``path`` for the block, unmounted after
    (lazily, so a process still inside cannot keep it), pass or fail."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "cove-test", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
