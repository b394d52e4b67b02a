"""Shared fixtures: a fresh state root per test and a runner for the real ``cove`` CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ALPINE_DIR, ALPINE_TAR, CoveRunner, _verified, cove_argv

pytest_plugins = ["registries"]  # registry fixtures (tests/registries.py)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (real mounts, device nodes)")
    for item in items:
        if "integration" in item.path.parts or "security" in item.path.parts:
            item.add_marker(skip)


@pytest.fixture
def cove_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def cove(cove_root: Path) -> Iterator[CoveRunner]:
    """Run ``cove --root <fresh root> ARGS``; ``check=True`` asserts success.

    Afterwards every container and network of the root is removed (``system reset``), so
    no bridge, DNS responder, rule or process outlives the test, pass or fail.
    """

    def run(
        *args: str,
        check: bool = True,
        input: str | bytes | None = None,
        text: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cove_argv(cove_root, *args),
            capture_output=True,
            input=input,
            text=text,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"cove {' '.join(args)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
            )
        return proc

    yield run
    if (cove_root / "state.db").exists():
        subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True,
                       timeout=300)  # fmt: skip


@pytest.fixture(scope="session")
def alpine_tar() -> Path:
    """The shared Alpine minirootfs, checked against the upstream SHA512SUMS first."""
    if not ALPINE_TAR.exists():
        pytest.fail(f"shared Alpine tarball missing: {ALPINE_TAR}")
    return _verified(ALPINE_TAR, ALPINE_DIR / "SHA512SUMS")


@pytest.fixture
def alpine(cove: CoveRunner, alpine_tar: Path) -> str:
    """alpine:3.20 imported into this test's root; returns its image id."""
    proc = cove("import", "--change", 'CMD ["/bin/sh"]', str(alpine_tar), "alpine:3.20")
    return proc.stdout.strip()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"cove: {skipped} test(s) skipped")
