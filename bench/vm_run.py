#!/usr/bin/env python3
"""Benchmark ``cove run --vm --rm alpine:3.20 true`` (median wall time) against the bare
boot of the same VM: the same QEMU command line (kernel, agent initramfs with the same
run config, a qcow2 overlay of the same cached root file system, the same virtio-serial
ports), started directly, waited for, nothing else. The difference is what cove adds
(its CLI, the container record, the per-run overlay and initramfs, supervision).
Target: cove <= 1.5x the bare boot. The alpine:3.20 image is built from the shared
upstream Dockerfile into a private state root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from start import cove_command, run

REPO = Path(__file__).resolve().parent.parent
ALPINE_DIR = REPO.parent / "shared" / "images" / "alpine-3.20"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="runs per side")
    ap.add_argument("--kernel-cache", default="/var/cache/cove-test-kernels")
    args = ap.parse_args()
    cove, how = cove_command()
    from cove.vm import accel, agent, disks, kernel
    from cove.vm import qemu as qcmd

    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-vmrun-"))
    root = tmp / "root"
    k = (kernel.installed(args.kernel_cache) or [kernel.fetch(args.kernel_cache)])[-1]
    (root / "kernels").mkdir(parents=True)
    subprocess.run(["cp", "-al", k.dir, str(root / "kernels" / k.release)], check=True)
    k = kernel.installed(str(root / "kernels"))[-1]
    c = [*cove, "--root", str(root)]
    times: dict[str, list[float]] = {"cove run --vm --rm": [], "bare qemu, same vm": []}
    try:
        image_id = run([*c, "build", "-q", "-t", "alpine:3.20", str(ALPINE_DIR)]).stdout.strip()
        run([*c, "run", "--vm", "--rm", "alpine:3.20", "true"])  # builds the cached root
        verdict = accel.choose("auto", str(root), k.vmlinuz, "qemu-system-x86_64")
        rootfs = root / "vmroot" / (image_id.removeprefix("sha256:") + ".ext4")
        base = agent.base_initrd(agent.initrd_dir(str(root)), k)
        bare = tmp / "bare"
        for i in range(args.n):
            t0 = time.perf_counter()
            run([*c, "run", "--vm", "--rm", "alpine:3.20", "true"])
            times["cove run --vm --rm"].append(time.perf_counter() - t0)
            shutil.rmtree(bare, ignore_errors=True)
            bare.mkdir()
            files = qcmd.RunFiles(str(bare), str(bare))
            cfg = agent.RunConfig(["true"], ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                             "/usr/bin:/sbin:/bin"], "/", 0, 0, f"bare{i}",
                                  *("10.0.2.15/24", "10.0.2.2", "10.0.2.3"))  # fmt: skip
            t0 = time.perf_counter()
            disks.overlay(files.disk, str(rootfs))
            agent.run_initrd(base, cfg, files.initrd)
            argv = qcmd.run_command(
                accel=verdict.accel, cpus=1, memory_mib=512, kernel=k.vmlinuz,
                append=agent.cmdline(), files=files,
            )  # fmt: skip
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            times["bare qemu, same vm"].append(time.perf_counter() - t0)
            code = Path(files.exit).read_text().strip()
            assert code == "0", f"bare run exit {code!r}"
    finally:
        subprocess.run([*c, "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cove: {how}; kernel {k.release}; accelerator {verdict.accel}; {args.n} runs each")
    print(f"{'':<22} {'median s':>9} {'min s':>7}")
    for name, ts in times.items():
        print(f"{name:<22} {statistics.median(ts):>9.2f} {min(ts):>7.2f}")
    ratio = statistics.median(times["cove run --vm --rm"]) / statistics.median(
        times["bare qemu, same vm"]
    )
    print(f"cove / bare: {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
