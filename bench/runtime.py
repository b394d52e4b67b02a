#!/usr/bin/env python3
"""Benchmark ``cove-runc run`` against ``runc run`` and ``crun run`` on one bundle (issue 18).

The bundle is the shared Alpine rootfs with ``cove-runc spec``'s config (runc's default
namespaces: pid, network, ipc, uts, mount, cgroup) running ``true`` without a terminal. Each
runtime gets its own --root; runs are interleaved (cove-runc, runc, crun, cove-runc, ...)
after two warm-ups each, so drift in machine load is spread over all. A runtime that cannot
run the bundle here (crun 1.8 refuses the hybrid cgroup layout) is reported with its error;
crun is also tried with ``--cgroup-manager=disabled`` (crun-nocgroup). Two parts of
cove-runc's time are measured in the same rounds: the bare interpreter and the interpreter
importing the run path; the rest is the work. Whether the run path's bytecode is fresh is
printed with the figures. Run as root. ``--json`` prints machine-readable results only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from start import bytecode_lines, bytecode_state, cove_modules, interpreter

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


# the modules `cove-runc run` imports (tests/unit/test_runc_imports.py keeps this path lean)
RUN_PATH = ("cove.runc", "cove.runtime.oci", "cove.runtime.init", "cove.sys.terminal")
# not runtimes: the breakdown of cove-runc's time, measured in the same interleaved runs
# (each ends as cove-runc does, with os._exit: no interpreter teardown in either)
PARTS = {
    "interpreter": [sys.executable, "-c", "import os; os._exit(0)"],
    "imports": [sys.executable, "-c", "import os, " + ", ".join(RUN_PATH) + "; os._exit(0)"],
}


def one_run(argv: list[str], root: Path, bundle: Path, cid: str) -> tuple[float, str]:
    if argv[0] == sys.executable:  # a breakdown part: no container
        cmd = argv
    else:
        cmd = [*argv, "--root", str(root), "run", "--bundle", str(bundle), cid]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        if argv[0] != sys.executable:
            subprocess.run([*argv, "--root", str(root), "delete", "--force", cid],
                           check=False, capture_output=True)  # fmt: skip
        return took, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return took, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    peers = {"cove-runc": [str(COVE_RUNC)]}
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path:
            peers[name] = [path]
    if "crun" in peers:
        # crun 1.8 refuses the hybrid cgroup layout when it starts, whatever the config:
        # its cgroup manager disabled is tried too, to show that (it fails the same way
        # here, also with no cgroup mount, namespace or resources in the config)
        peers["crun-nocgroup"] = [peers["crun"][0], "--cgroup-manager=disabled"]
    peers.update(PARTS)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        bundle = make_bundle(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in peers}
        errors: dict[str, str] = {}
        for i in range(args.runs + 2):
            for name, argv in peers.items():
                if name in errors:
                    continue
                took, err = one_run(argv, Path(tmp) / f"root-{name}", bundle, f"b{i}")
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
    # every cove module the run path loads (as the shim's run line does: with seccomp),
    # each checked as the interpreter does (the source's mtime and size in the .pyc)
    python = interpreter([str(COVE_RUNC)])
    modules = cove_modules(python, f"import {', '.join(RUN_PATH)}, cove.runtime.seccomp")
    fresh, stale = bytecode_state(python, modules)
    if args.json:
        print(json.dumps({**result, "bytecode_fresh": fresh, "bytecode_stale": stale,
                          "pythondontwritebytecode": bool(os.environ.get(
                              "PYTHONDONTWRITEBYTECODE"))}))  # fmt: skip
        return 0
    for name, r in result.items():
        label = f"{name} (part)" if name in PARTS else name
        if "error" in r:
            print(f"{label:18} cannot run the bundle here: {r['error']}")
        else:
            ratio = r.get("vs_runc", "-")
            print(f"{label:18} median {r['median_ms']:7.1f} ms  mean {r['mean_ms']:7.1f} ms  "
                  f"min {r['min_ms']:7.1f} ms  ({ratio}x runc, {r['runs']} runs)")  # fmt: skip
    parts = [result.get(p, {}).get("median_ms") for p in ("cove-runc", *PARTS)]
    if all(isinstance(p, float) for p in parts):
        total, interp, imports = (float(str(p)) for p in parts)
        print(f"cove-runc breakdown: interpreter {interp:.1f} ms, imports "
              f"{imports - interp:.1f} ms, the rest (parse, cgroups, namespaces, mounts, "
              f"exec, wait, delete) {total - imports:.1f} ms")  # fmt: skip
    for line in bytecode_lines("cove-runc's run path imports", len(modules), stale):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
