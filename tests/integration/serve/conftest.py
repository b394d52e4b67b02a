"""Fixtures of the ``cove serve`` tests: a server over the test's root (helpers.start_serve)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CoveRunner, Served, start_serve, stop_serve


@pytest.fixture
def served(cove: CoveRunner, cove_root: Path, alpine: str, tmp_path: Path) -> Iterator[Served]:
    """``cove serve`` over a root holding alpine:3.20; stopped afterwards, and the ``cove``
    fixture's teardown removes every container and network of the root."""
    s = start_serve(cove_root, tmp_path)
    try:
        yield s
    finally:
        stop_serve(s)
