#!/usr/bin/env python3
"""Benchmark ``cove run --vm --rm alpine:3.20 true`` (median wall time) from its booted
template, against a bare QEMU cold boot of the same kernel to its first line, and against
cove's own cold path (``COVE_VM_TEMPLATE=0``), all in the same run, interleaved.

The peer: the same kernel and command line (``agent.cmdline()``), the same machine (q35,
the same accelerator, CPU model, memory, ``-nodefaults``), a busybox initramfs whose /init
prints one line to the console first thing; timed from QEMU's start until that line is in
the console file. That is the least any cold boot costs; cove's template run includes its
CLI, the container record, the per-run overlay, the restore, the command and the teardown.
Target (issue 20): template <= 0.4x the bare boot. The alpine:3.20 image is built from the
shared upstream Dockerfile into a private state root; the template is built by a first run
outside the timings (as the root file system is).
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
from start import bytecode_lines, bytecode_state, cove_command, import_times, interpreter, run

REPO = Path(__file__).resolve().parent.parent
ALPINE_DIR = REPO.parent / "shared" / "images" / "alpine-3.20"
LINE = b"COVE-BARE-FIRST-LINE"
TARGET = 0.4


def bare_initrd(dest: Path) -> None:
    from cove.vm import initramfs

    cpio = initramfs.Cpio()
    initramfs.busybox_base(cpio)
    cpio.file("init", b"#!/bin/busybox sh\necho " + LINE + b" >/dev/console\npoweroff -f\n", 0o755)
    initramfs.write(cpio, dest, level=1)


def bare_boot(kernel: str, initrd: Path, accel: str, console: Path) -> float:
    """Seconds from QEMU's start to the initramfs's first console line (QEMU then killed)."""
    from cove.vm import agent

    console.write_bytes(b"")
    argv = ["qemu-system-x86_64", "-machine", f"q35,accel={accel}",
            "-cpu", "host" if accel == "kvm" else "max", "-smp", "1", "-m", "512M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", kernel, "-initrd", str(initrd), "-append", agent.cmdline(),
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-device", "virtio-rng-pci"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while LINE not in console.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"bare qemu exited ({proc.returncode}) before its line")
            time.sleep(0.002)
        return time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    if "warning" in proc.stderr:  # a template run that fell back to a cold boot
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=5, help="runs per side")
    ap.add_argument("--kernel-cache", default="/var/cache/cove-test-kernels")
    args = ap.parse_args()
    cove, how = cove_command()
    from cove.vm import accel, kernel

    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-vmrun-"))
    root = tmp / "root"
    k = (kernel.installed(args.kernel_cache) or [kernel.fetch(args.kernel_cache)])[-1]
    (root / "kernels").mkdir(parents=True)
    subprocess.run(["cp", "-al", k.dir, str(root / "kernels" / k.release)], check=True)
    k = kernel.installed(str(root / "kernels"))[-1]
    c = [*cove, "--root", str(root)]
    sides = ("cove run --vm (template)", "cove run --vm (cold)", "bare qemu to 1st line")
    times: dict[str, list[float]] = {s: [] for s in sides}
    cold_env = {**os.environ, "COVE_VM_TEMPLATE": "0"}
    argv = [*c, "run", "--vm", "--rm", "alpine:3.20", "true"]
    try:
        run([*c, "build", "-q", "-t", "alpine:3.20", str(ALPINE_DIR)])
        run(argv)  # builds the cached root file system and the template
        verdict = accel.choose("auto", str(root), k.vmlinuz, "qemu-system-x86_64")
        initrd = tmp / "bare.cpio.gz"
        bare_initrd(initrd)
        for _ in range(args.n):
            times[sides[0]].append(timed(argv))
            times[sides[1]].append(timed(argv, cold_env))
            times[sides[2]].append(bare_boot(k.vmlinuz, initrd, verdict.accel, tmp / "con"))
        # the cove modules a template run imports (-X importtime: 3 more runs, untimed)
        interp = interpreter(cove)
        modules = import_times(interp, argv[len(cove) :])[2]
        stale = bytecode_state(interp, modules)[1]
    finally:
        subprocess.run([*c, "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"cove: {how}; kernel {k.release}; accelerator {verdict.accel}; {args.n} runs each, "
          f"interleaved")  # fmt: skip
    for line in bytecode_lines("a template run imports", len(modules), stale):
        print(line)
    print(f"{'':<28} {'median s':>9} {'min s':>7}")
    for name, ts in times.items():
        print(f"{name:<28} {statistics.median(ts):>9.2f} {min(ts):>7.2f}")
    bare = statistics.median(times[sides[2]])
    ratio = statistics.median(times[sides[0]]) / bare
    cold = statistics.median(times[sides[1]]) / bare
    print(f"template / bare: {ratio:.2f}x (target <= {TARGET}x: "
          f"{'met' if ratio <= TARGET else 'NOT met'}); cold / bare: {cold:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
