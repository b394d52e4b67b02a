#!/usr/bin/env python3
"""Benchmark ``cove-runc run`` against ``runc run`` and ``crun run`` on one bundle (issue 18).

The bundle is the shared Alpine rootfs with ``cove-runc spec``'s config (runc's default
namespaces: pid, network, ipc, uts, mount, cgroup) running ``true`` without a terminal. Each
runtime gets its own --root; runs are interleaved (cove-runc, runc, crun, cove-runc, ...)
after two warm-ups each, so drift in machine load is spread over all. A runtime that cannot
run the bundle here (crun 1.8 refuses the hybrid cgroup layout) is reported with its error.
Run as root. ``--json`` prints machine-readable results only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TGZ = REPO.parent / "shared" / "images" / "alpine-3.20" / "alpine-minirootfs-3.20.3-x86_64.tar.gz"
COVE_RUNC = Path(sys.executable).parent / "cove-runc"


def make_bundle(where: Path) -> Path:
    bundle = where / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    with tarfile.open(TGZ) as tar:
        tar.extractall(bundle / "rootfs")
    subprocess.run([str(COVE_RUNC), "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["true"]
    config["linux"]["cgroupsPath"] = "/cove-bench-runtime/c"
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def one_run(binary: str, root: Path, bundle: Path, cid: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [binary, "--root", str(root), "run", "--bundle", str(bundle), cid],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        subprocess.run([binary, "--root", str(root), "delete", "--force", cid], check=False,
                       capture_output=True)  # fmt: skip
        return took, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return took, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    peers = {"cove-runc": str(COVE_RUNC)}
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path:
            peers[name] = path
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        bundle = make_bundle(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in peers}
        errors: dict[str, str] = {}
        for i in range(args.runs + 2):
            for name, binary in peers.items():
                if name in errors:
                    continue
                took, err = one_run(binary, Path(tmp) / f"root-{name}", bundle, f"b{i}")
                if err:
                    errors[name] = err
                elif i >= 2:  # two warm-ups
                    times[name].append(took)
        for d in Path("/sys/fs/cgroup").glob("*/cove-bench-runtime"):
            for sub in sorted(d.rglob("*"), reverse=True):
                if sub.is_dir():
                    sub.rmdir()
            d.rmdir()
        if Path("/sys/fs/cgroup/cove-bench-runtime").is_dir():
            shutil.rmtree("/sys/fs/cgroup/cove-bench-runtime", ignore_errors=True)
    result: dict[str, dict[str, float | str]] = {}
    for name, ts in times.items():
        if name in errors:
            result[name] = {"error": errors[name]}
        else:
            result[name] = {
                "median_ms": round(statistics.median(ts) * 1000, 1),
                "mean_ms": round(statistics.mean(ts) * 1000, 1),
                "min_ms": round(min(ts) * 1000, 1),
                "runs": len(ts),
            }
    base = result.get("runc", {}).get("median_ms")
    if isinstance(base, float):
        for r in result.values():
            if isinstance(r.get("median_ms"), float):
                r["vs_runc"] = round(float(r["median_ms"]) / base, 2)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, r in result.items():
        if "error" in r:
            print(f"{name:10} cannot run the bundle here: {r['error']}")
        else:
            ratio = r.get("vs_runc", "-")
            print(f"{name:10} median {r['median_ms']:7.1f} ms  mean {r['mean_ms']:7.1f} ms  "
                  f"min {r['min_ms']:7.1f} ms  ({ratio}x runc, {r['runs']} runs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
