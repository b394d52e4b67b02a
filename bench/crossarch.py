#!/usr/bin/env python3
"""Benchmark another CPU architecture three ways: the same CPU-bound busybox shell loop as a
native x86_64 container, as an arm64 container emulated by QEMU user mode (binfmt_misc), and
as an arm64 VM emulated by QEMU's TCG (``run --vm --platform linux/arm64``).

Each mode's loop time is the median wall time of ``sh -c LOOP`` less the median wall time of
``true`` in the same mode (start, boot and teardown cancel out); runs are interleaved across
modes after a warm-up each. Ratios are against the native container. Run as root, with
qemu-user-static and qemu-system-arm installed (scripts/test-deps.sh). ``--json`` prints
machine-readable results only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALPINE = Path(__file__).resolve().parents[2] / "shared" / "images" / "alpine-3.20"
MODES = {
    "native container": ["--platform", "linux/amd64", "alpine:3.20"],
    "emulated container": ["--platform", "linux/arm64", "alpine-arm64:3.20"],
    "emulated vm": ["--vm", "--platform", "linux/arm64", "alpine-arm64:3.20"],
}


def cove(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cove", "--root", str(root), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"cove {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def timed(root: Path, mode: str, command: list[str]) -> float:
    start = time.monotonic()
    cove(root, "run", "--rm", "--network", "none", *MODES[mode], *command)
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loops", type=int, default=200_000, help="shell loop iterations")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per mode")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    loop = f"i=0; while [ $i -lt {args.loops} ]; do i=$((i+1)); done"
    root = Path(tempfile.mkdtemp(prefix="cove-bench-crossarch-"))
    try:
        cove(root, "import", str(ALPINE / "alpine-minirootfs-3.20.3-x86_64.tar.gz"), "alpine:3.20")
        arm64 = ALPINE / "alpine-minirootfs-3.20.3-aarch64.tar.gz"
        cove(root, "import", "--platform", "linux/arm64", str(arm64), "alpine-arm64:3.20")
        cove(root, "vm", "kernel", "fetch", "--arch", "arm64")
        wall: dict[str, list[float]] = {m: [] for m in MODES}
        base: dict[str, list[float]] = {m: [] for m in MODES}
        for mode in MODES:  # warm-up: the vm's root file system and initramfs are built once
            timed(root, mode, ["true"])
        for _ in range(args.runs):
            for mode in MODES:
                base[mode].append(timed(root, mode, ["true"]))
                wall[mode].append(timed(root, mode, ["sh", "-c", loop]))
        results = {}
        for mode in MODES:
            own = max(statistics.median(wall[mode]) - statistics.median(base[mode]), 1e-6)
            results[mode] = {
                "wall_s": statistics.median(wall[mode]),
                "start_s": statistics.median(base[mode]),
                "loop_s": own,
            }
        native = results["native container"]["loop_s"]
        for r in results.values():
            r["ratio"] = r["loop_s"] / native
    finally:
        subprocess.run([sys.executable, "-m", "cove", "--root", str(root), "system", "reset",
                        "-f"], capture_output=True, cwd=REPO)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"loops": args.loops, "runs": args.runs, "results": results}, indent=2))
        return 0
    print(f"busybox sh loop of {args.loops} iterations, median of {args.runs} runs")
    print(f"{'mode':<20} {'start (s)':>10} {'loop (s)':>10} {'vs native':>10}")
    for mode, r in results.items():
        print(f"{mode:<20} {r['start_s']:>10.3f} {r['loop_s']:>10.3f} {r['ratio']:>9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
