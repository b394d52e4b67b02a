"""Disk full: an import, a pull and a build into a root on a tiny tmpfs fail with one line and
leave no partial content (no blob, no layer, no temp file, no index entry)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CoveRunner, cove_argv, host_submount
from registries import Registry


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A state root on a 4 MiB tmpfs: room for its metadata, not for Alpine (3.5 MB
    compressed, 8 MB unpacked)."""
    root = tmp_path / "small"
    root.mkdir()
    with host_submount(root, "4m"):
        try:
            yield root
        finally:
            if (root / "state.db").exists():
                subprocess.run(cove_argv(root, "system", "reset", "-f"), capture_output=True,
                               timeout=300)  # fmt: skip


def small(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cove_argv(root, *args), capture_output=True, text=True, timeout=300)


def assert_failed_cleanly(root: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, proc
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "no space left on device" in proc.stderr.lower(), proc.stderr
    assert small(root, "images", "-q").stdout == ""
    for sub in ("images/blobs/sha256", "layers", "tmp"):
        d = root / sub
        assert not d.exists() or list(d.iterdir()) == [], (sub, list(d.iterdir()))


def test_import_into_a_full_disk(small_root: Path, alpine_tar: Path) -> None:
    assert_failed_cleanly(small_root, small(small_root, "import", str(alpine_tar), "a:1"))


def test_pull_into_a_full_disk(
    cove: CoveRunner, alpine: str, plain_registry: Registry, small_root: Path
) -> None:
    ref = f"{plain_registry.host}/lib/alpine:3.20"
    cove("tag", "alpine:3.20", ref)
    cove("push", "-q", "--tls-verify=false", ref)
    proc = small(small_root, "pull", "-q", "--tls-verify=false", ref)
    assert_failed_cleanly(small_root, proc)


def test_build_into_a_full_disk(small_root: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "big").write_bytes(os.urandom(6 << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big /big\n")
    proc = small(small_root, "build", "-q", "-t", "big:1", str(ctx))
    assert_failed_cleanly(small_root, proc)
    # positive control: the same build of a small file fits
    (ctx / "big").write_bytes(b"small\n")
    ok = small(small_root, "build", "-q", "-t", "big:1", str(ctx))
    assert ok.returncode == 0, ok.stderr
    assert small(small_root, "images", "-q").stdout.strip()
