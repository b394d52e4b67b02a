#!/usr/bin/env python3
"""Benchmark building: the app image of tests/integration/test_build.py (COPY of a script
tree, a RUN that adds a user and files, a COPY --chown, metadata) on alpine:3.20 built from
the shared upstream Dockerfile, by ``cove build`` and by ``podman build`` (buildah inside)
in the same run, each with a fresh private store. Cold: ``--no-cache``; cached: the same
build again. RUN steps use no network on either side (``--network none``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from start import cove_command, run

REPO = Path(__file__).resolve().parent.parent
ALPINE_DIR = REPO.parent / "shared" / "images" / "alpine-3.20"


def app_context(dest: Path) -> Path:
    from test_build import APP_FILES, write_tree

    # podman 4.3's buildah has no here-documents: the one heredoc COPY reads a file instead
    files = dict(APP_FILES)
    heredoc = "COPY --chown=appuser:appgrp <<EOF /opt/app/config.ini\ngreeting=${GREETING}\nEOF\n"
    assert heredoc in files["Dockerfile"]
    files["Dockerfile"] = files["Dockerfile"].replace(
        heredoc, "COPY --chown=appuser:appgrp config.ini /opt/app/config.ini\n"
    )
    files["config.ini"] = "greeting=hello\n"
    return write_tree(dest, files)


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="builds of each kind per tool")
    args = ap.parse_args()
    cove, how = cove_command()
    podman = shutil.which("podman")
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-build-"))
    root = tmp / "cove-root"
    proot, prun = tmp / "podman-root", tmp / "podman-run"
    pod = [podman or "podman", "--root", str(proot), "--runroot", str(prun),
           "--storage-driver", "overlay"]  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {"cove": {"cold": [], "cached": []}}
    try:
        ctx = app_context(tmp / "ctx")
        run([*cove, "--root", str(root), "build", "-q", "-t", "alpine:3.20", str(ALPINE_DIR)])
        cove_build = [*cove, "--root", str(root), "build", "-q", "--network", "none",
                      "-t", "app:bench"]  # fmt: skip
        if podman:
            results["podman"] = {"cold": [], "cached": []}
            run([*pod, "build", "-q", "-t", "alpine:3.20", str(ALPINE_DIR)])
            pod_build = [*pod, "build", "-q", "--network", "none", "-t", "app:bench"]
        for _ in range(args.n):  # interleaved: both tools see the same machine state
            results["cove"]["cold"].append(timed([*cove_build, "--no-cache", str(ctx)]))
            results["cove"]["cached"].append(timed([*cove_build, str(ctx)]))
            if podman:
                results["podman"]["cold"].append(timed([*pod_build, "--no-cache", str(ctx)]))
                results["podman"]["cached"].append(timed([*pod_build, str(ctx)]))
    finally:
        if podman:
            subprocess.run([*pod, "system", "reset", "-f"], capture_output=True)
        subprocess.run([*cove, "--root", str(root), "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cove: {how}; {args.n} builds of each kind per tool, interleaved")
    head = f"{'tool':<8} {'cold median':>12} {'cold min':>9} {'cached median':>14}"
    print(f"{head} {'cached min':>11}")
    for tool, r in results.items():
        print(f"{tool:<8} {statistics.median(r['cold']):>11.2f}s {min(r['cold']):>8.2f}s "
              f"{statistics.median(r['cached']):>13.2f}s {min(r['cached']):>10.2f}s")  # fmt: skip
    if "podman" not in results:
        print("podman: not installed, no peer measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
