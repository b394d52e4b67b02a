#!/usr/bin/env python3
"""Benchmark ``cove import`` + ``cove image unpack`` against umoci + skopeo on one rootfs tarball.

Run as root. The tarball (debootstrap --variant=minbase bookworm) is built once and cached in
/var/cache/cove-bench/. umoci 0.4.7's ``insert`` adds a *path* verbatim (inserting a tarball at
``/`` yields a layer that cannot be unpacked), so the peer imports the tarball with
``umoci raw add-layer``, which takes an uncompressed tar: the .tar is the .tar.gz, decompressed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path("/var/cache/cove-bench")
ROOTFS, ROOTFS_TMP = CACHE / "rootfs", CACHE / "rootfs.tmp"
LOG = CACHE / "debootstrap.log"
TGZ, TAR = CACHE / "bookworm-minbase.tar.gz", CACHE / "bookworm-minbase.tar"
SCRATCH = Path("/var/tmp")  # same filesystem as /var/cache, so cove can rename into its root
REF = "bench/debian:minbase"
PHASES = {
    "cove": ["cove import", "cove unpack"],
    "peer": ["umoci init+new", "umoci add-layer", "skopeo copy", "umoci unpack"],
}


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"error: required tool(s) not found on PATH: {', '.join(missing)}")


def run(*cmd: str | Path) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def timed(times: dict[str, list[float]], phase: str, *cmd: str | Path) -> str:
    os.sync()  # earlier phases' dirty pages are flushed outside the clock, not billed to this one
    start = time.perf_counter()
    out = run(*cmd)
    times.setdefault(phase, []).append(time.perf_counter() - start)
    return out


def log_ok() -> bool:
    lines = LOG.read_text(errors="replace").split() if LOG.exists() else []
    return bool(lines) and lines[-1] == "rc=0"


def ensure_rootfs() -> None:
    if ROOTFS.is_dir():
        return
    if ROOTFS_TMP.is_dir() and log_ok():
        ROOTFS_TMP.rename(ROOTFS)
        return
    need("debootstrap")
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix="rootfs.build."))
    try:
        print(f"debootstrap --variant=minbase bookworm {tmp} (log: {LOG})", file=sys.stderr)
        with LOG.open("w") as log:
            cmd = ["debootstrap", "--variant=minbase", "bookworm", str(tmp)]
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            log.write(f"rc={rc}\n")
        if rc != 0:
            raise RuntimeError(f"debootstrap failed (rc={rc}); see {LOG}")
        tmp.rename(ROOTFS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_tarballs() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    if not TGZ.exists():
        ensure_rootfs()
        part = TGZ.with_name(TGZ.name + ".part")
        try:
            run("tar", "--numeric-owner", "--xattrs", "-C", ROOTFS, "-czf", part, ".")
            part.rename(TGZ)
        finally:
            part.unlink(missing_ok=True)
    if not TAR.exists() or TAR.stat().st_mtime < TGZ.stat().st_mtime:
        part = TAR.with_name(TAR.name + ".part")
        try:
            with gzip.open(TGZ, "rb") as src, part.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            part.rename(TAR)
        finally:
            part.unlink(missing_ok=True)


def count_entries(root: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def one_rep(work: Path, times: dict[str, list[float]]) -> dict[str, tuple[int, str]]:
    """One cove run and one peer run in ``work``; (entry count, debian_version) per tool."""
    root = work / "cove-root"
    timed(times, "cove import", "cove", "--root", root, "import", TGZ, REF)
    dirs = timed(times, "cove unpack", "cove", "--root", root, "image", "unpack", REF).split()
    if len(dirs) != 1:
        raise RuntimeError(f"expected one layer dir from cove, got {dirs}")
    src, dst, bundle = work / "oci-src", work / "oci-dst", work / "bundle"
    start = time.perf_counter()
    run("umoci", "init", "--layout", src)
    run("umoci", "new", "--image", f"{src}:minbase")
    times.setdefault("umoci init+new", []).append(time.perf_counter() - start)
    timed(times, "umoci add-layer", "umoci", "raw", "add-layer", "--image", f"{src}:minbase", TAR)
    timed(times, "skopeo copy", "skopeo", "copy", "-q", f"oci:{src}:minbase", f"oci:{dst}:minbase")
    timed(times, "umoci unpack", "umoci", "unpack", "--image", f"{dst}:minbase", bundle)
    trees = {"cove": Path(dirs[0]), "peer": bundle / "rootfs"}
    return {
        k: (count_entries(t), (t / "etc/debian_version").read_text().strip())
        for k, t in trees.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="cove import+unpack vs umoci+skopeo")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if os.geteuid() != 0:
        sys.exit("error: run as root")
    need("cove", "skopeo", "umoci", "tar")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks run
    try:
        ensure_tarballs()
        listing = run("tar", "-tzf", TGZ).splitlines()
        tar_entries = sum(1 for n in listing if n.strip("./"))  # drop the "./" root entry
        times: dict[str, list[float]] = {}
        checks: list[dict[str, tuple[int, str]]] = []
        for rep in range(args.runs):
            work = Path(tempfile.mkdtemp(dir=SCRATCH, prefix="cove-bench."))
            try:
                checks.append(one_rep(work, times))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"rep {rep + 1}/{args.runs} done", file=sys.stderr)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    totals = {**PHASES, "peer w/o skopeo": ["umoci init+new", "umoci add-layer", "umoci unpack"]}
    for tool, phases in totals.items():
        times[tool] = [sum(v) for v in zip(*(times[p] for p in phases), strict=True)]
    med = {k: statistics.median(v) for k, v in times.items()}
    ok = all(
        c["cove"][1] == c["peer"][1] and abs(c["cove"][0] - c["peer"][0]) <= 0.01 * c["peer"][0]
        for c in checks
    )
    print(
        f"tarball {TGZ}: {TGZ.stat().st_size / 1e6:.1f} MB gz, "
        f"{TAR.stat().st_size / 1e6:.1f} MB tar, {tar_entries} entries"
    )
    print(f"{'tool / phase':<18}{'median s':>10}{'min s':>9}{'cove/peer':>11}")
    for name in ["cove", *PHASES["cove"], "peer", "peer w/o skopeo", *PHASES["peer"]]:
        ratio = f"{med['cove'] / med[name]:.2f}" if name.startswith("peer") else ""
        print(f"{name:<18}{med[name]:>10.3f}{min(times[name]):>9.3f}{ratio:>11}")
    last = checks[-1]
    print(
        f"check: entries cove={last['cove'][0]} peer={last['peer'][0]} tar={tar_entries}; "
        f"debian_version cove={last['cove'][1]} peer={last['peer'][1]} -> "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "tarball": str(TGZ),
                    "tarball_bytes": TGZ.stat().st_size,
                    "entries": tar_entries,
                    "runs": args.runs,
                    "times": times,
                    "median": med,
                    "min": {k: min(v) for k, v in times.items()},
                    "ratio_cove_over_peer": med["cove"] / med["peer"],
                    "checks": checks,
                    "ok": ok,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
