#!/usr/bin/env python3
"""Benchmark VM boots: time from launch to a marker the guest's /init prints on the serial
console, for cove's direct-kernel recipe (``cove vm create --kernel --initrd`` + ``cove vm
start``: q35, -nodefaults, virtio only, daemonized QEMU with QMP) and for a plain
``qemu-system-x86_64 -M q35 -kernel ... -initrd ...`` with QEMU's defaults (SeaBIOS, an
e1000 NIC with its PXE ROM, VGA), same kernel (Debian's cloud kernel, fetched with
``cove vm kernel fetch``), same one-line initramfs, same accelerator, same run,
interleaved. The accelerator in use is printed.
"""

from __future__ import annotations

import argparse
import json
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

MARKER = b"COVE-KVM-PROBE-OK"  # what the initramfs below prints, then it powers off


def wait_marker(path: Path, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            if MARKER in path.read_bytes():
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"no marker in {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="boots per recipe")
    ap.add_argument("--kernel-cache", default="/var/cache/cove-test-kernels")
    args = ap.parse_args()
    cove, how = cove_command()
    from cove.vm import accel, kernel

    k = (kernel.installed(args.kernel_cache) or [kernel.fetch(args.kernel_cache)])[-1]
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-vm-"))
    root = tmp / "root"
    initrd = tmp / "initrd.gz"
    initrd.write_bytes(accel.probe_initrd())
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    verdict = accel.choose("auto", str(tmp / "probe-root"), k.vmlinuz, qemu)
    times: dict[str, list[float]] = {"cove": [], "qemu defaults": []}
    try:
        for i in range(args.n):
            name = f"b{i}"
            run([*cove, "--root", str(root), "vm", "create", name, "--cpus", "1", "--memory",
                 "256M", "--kernel", k.vmlinuz, "--initrd", str(initrd), "--append",
                 "panic=-1", "--accel", verdict.accel])  # fmt: skip
            t0 = time.monotonic()
            run([*cove, "--root", str(root), "vm", "start", name])
            info = json.loads(run([*cove, "--root", str(root), "vm", "inspect", name]).stdout)[0]
            log = Path(info["Paths"]["SerialLog"])
            times["cove"].append(wait_marker(log, t0 + 120) - t0)
            run([*cove, "--root", str(root), "vm", "rm", "-f", name])
            out = tmp / f"plain{i}.log"
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [qemu, "-M", "q35", "-accel", verdict.accel, "-m", "256", "-display", "none",
                 "-kernel", k.vmlinuz, "-initrd", str(initrd), "-append",
                 "console=ttyS0 panic=-1", "-serial", f"file:{out}", "-no-reboot"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                times["qemu defaults"].append(wait_marker(out, t0 + 120) - t0)
            finally:
                proc.kill()
                proc.wait()
    finally:
        subprocess.run([*cove, "--root", str(root), "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cove: {how}; kernel {k.release}; accelerator {verdict.accel} ({verdict.reason})")
    print(f"{'recipe':<16} {'median s':>9} {'min s':>7}   (launch to marker, {args.n} boots)")
    for name, ts in times.items():
        print(f"{name:<16} {statistics.median(ts):>9.2f} {min(ts):>7.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
