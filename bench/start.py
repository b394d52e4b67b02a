#!/usr/bin/env python3
"""Benchmark container start: ``cove run --rm --network none alpine:3.20 true`` against
``runc run`` on a bundle holding the same Alpine rootfs (runc spec's default namespaces, which
include a fresh network namespace, so both sides are equivalent to ``--network none``).

Run as root. Runs are interleaved (cove, runc, cove, ...) after two warm-ups each, so drift in
machine load is spread over both sides. ``--json`` prints machine-readable results only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TGZ = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "images"
    / "alpine-3.20"
    / "alpine-minirootfs-3.20.3-x86_64.tar.gz"
)
REF = "alpine:3.20"
# podman rootless on a cgroup v1 or hybrid host: no cgroups (as cove rootless there), and runc
# (crun 1.8 refuses the hybrid layout); kernel overlay, as cove rootless mounts it (userxattr):
# without a storage.conf or fuse-overlayfs Debian's podman 4.3 falls back to vfs, a full copy of
# the rootfs per container (here ~0.7 s a run against ~0.3 s)
PODMAN_ROOTLESS = [
    "--cgroup-manager",
    "cgroupfs",
    "--runtime",
    "runc",
    "--storage-driver",
    "overlay",
]


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def cove_command() -> tuple[list[str], str]:
    """The ``cove`` console script on PATH if it imports this checkout, else ``python -m cove``."""
    script = shutil.which("cove")
    if script and "/shims/" in script and shutil.which("pyenv"):  # skip the pyenv bash shim
        real = subprocess.run(["pyenv", "which", "cove"], capture_output=True, text=True)
        script = real.stdout.strip() if real.returncode == 0 else script
    if script:
        first = Path(script).read_bytes()[:256].split(b"\n")[0].decode(errors="replace")
        interp = first[2:].strip().split()[0] if first.startswith("#!") else ""
        probe = subprocess.run(
            [interp, "-c", "import cove; print(cove.__file__)"] if interp else ["false"],
            capture_output=True,
            text=True,
            cwd="/",
        )
        where = Path(probe.stdout.strip() or "/").resolve()
        if probe.returncode == 0 and where.is_relative_to(REPO):
            return [script], f"console script {script}"
        why = f"{script} imports {where}, not {REPO}" if probe.returncode == 0 else "unusable"
        print(f"note: not using {script} ({why})", file=sys.stderr)
    if (
        subprocess.run(
            [sys.executable, "-m", "cove", "--version"], capture_output=True, cwd=REPO
        ).returncode
        != 0
    ):
        sys.exit(f"error: cove is not installed and `{sys.executable} -m cove` fails")
    return [sys.executable, "-m", "cove"], f"fallback {sys.executable} -m cove"


def make_bundle(bundle: Path) -> None:
    # cove's own unpacker, as for a layer (owners kept, every path resolved inside rootfs/):
    # Debian 12's Python 3.11.2 has no tarfile extraction filters (they came in 3.11.4)
    from cove.image.layers import unpack_stream

    (bundle / "rootfs").mkdir(parents=True)
    with gzip.open(TGZ, "rb") as src:
        unpack_stream(src, str(bundle / "rootfs"), str(TGZ), privileged=True, whiteouts=False)
    run(["runc", "spec"], cwd=bundle)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


def timed(cmd: list[str], cleanup: list[str] | None = None) -> float:
    start = time.perf_counter()
    try:
        run(cmd)
    except RuntimeError:
        if cleanup:
            subprocess.run(cleanup, capture_output=True)
        raise
    return (time.perf_counter() - start) * 1000


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median_ms": statistics.median(ordered), "min_ms": ordered[0], "p90_ms": p90}


def import_times(cove_args: list[str], top: int = 8) -> list[tuple[int, int, str]]:
    err = run([sys.executable, "-X", "importtime", "-m", "cove", *cove_args]).stderr
    rows = []
    for line in err.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[0].strip().isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2].rstrip()))
    return sorted(rows, key=lambda r: r[1], reverse=True)[:top]


@contextlib.contextmanager
def rootless_sides(cove: list[str]) -> Iterator[dict[str, list[str]]]:
    """``cove run`` and ``podman run`` as a throwaway user with its own subuid range, each
    from its own import of the same tarball (both through runuser, so both pay for it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rootless import bench_user

    if shutil.which("podman") is None:
        sys.exit("error: podman not found on PATH (scripts/test-deps.sh installs it)")
    with bench_user() as user:
        run(user.argv(*cove, "import", "--change", 'CMD ["/bin/sh"]', str(TGZ), REF), cwd=Path("/"))
        run(
            user.argv("podman", *PODMAN_ROOTLESS, "import", str(TGZ), "cove-bench-alpine"),
            cwd=Path("/"),
        )
        yield {
            "cove-rootless": user.argv(*cove, "run", "--rm", "--network", "none", REF, "true"),
            "podman-rootless": user.argv(
                "podman",
                *PODMAN_ROOTLESS,
                "run",
                "--rm",
                "--network",
                "none",
                "cove-bench-alpine",
                "true",
            ),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="measured runs per side (default 20)")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    ap.add_argument("--rootless", action="store_true",
                    help="also time cove and podman run by a throwaway non-root user")  # fmt: skip
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: must run as root")
    if shutil.which("runc") is None:
        sys.exit("error: runc not found on PATH")
    if not TGZ.is_file():
        sys.exit(f"error: rootfs tarball not found: {TGZ}")
    cove, how = cove_command()
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-start.", dir="/var/tmp"))
    stack = contextlib.ExitStack()
    try:
        root, bundle = tmp / "root", tmp / "bundle"
        run([*cove, "--root", str(root), "import", "--change", 'CMD ["/bin/sh"]', str(TGZ), REF])
        make_bundle(bundle)
        run_args = ["--root", str(root), "run", "--rm", "--network", "none", REF, "true"]
        times: dict[str, list[float]] = {"cove": [], "runc": []}
        rootless = stack.enter_context(rootless_sides(cove)) if args.rootless else {}
        for side in rootless:
            times[side] = []
        for i in range(2 + args.runs):
            cid = f"bench-{os.getpid()}-{i}"
            c = timed([*cove, *run_args])
            r = timed(["runc", "run", "-b", str(bundle), cid], ["runc", "delete", "-f", cid])
            more = {side: timed(argv) for side, argv in rootless.items()}
            if i >= 2:
                times["cove"].append(c)
                times["runc"].append(r)
                for side, ms in more.items():
                    times[side].append(ms)
        imports = import_times(run_args)
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    stats = {side: summary(ms) for side, ms in times.items()}
    ratio = stats["cove"]["median_ms"] / stats["runc"]["median_ms"]
    if args.json:
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "cove_cmd": cove,
                    **stats,
                    "ratio": ratio,
                    "target_ratio": 1.0,
                    "imports_top": [
                        {"self_us": s, "cumulative_us": c, "name": n.strip()} for s, c, n in imports
                    ],
                },
                indent=2,
            )
        )
        return
    print(f"cove: {how}")
    print(f"runs: {args.runs} per side, interleaved, after 2 warm-ups each\n")
    print(f"{'':16}{'median ms':>11}{'min ms':>9}{'p90 ms':>9}")
    for side, st in stats.items():
        print(f"{side:16}{st['median_ms']:11.1f}{st['min_ms']:9.1f}{st['p90_ms']:9.1f}")
    verdict = "met" if ratio <= 1.0 else "NOT met"
    print(f"\nratio cove/runc (median): {ratio:.2f}  (target <= 1.0: {verdict})\n")
    print(f"top {len(imports)} imports by cumulative time (python -X importtime, start path):")
    print(f"{'cumul ms':>9}{'self ms':>9}  module")
    for s, c, n in imports:
        print(f"{c / 1000:9.1f}{s / 1000:9.1f}  {n}")


if __name__ == "__main__":
    main()
