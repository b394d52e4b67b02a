"""Which accelerator a VM gets: KVM when it really runs a guest, else TCG.

``/dev/kvm`` existing proves little: on nested paravirtual hosts it opens, runs
real-mode firmware code, and then hangs a stock guest kernel forever. So the probe
boots a real kernel with a one-line initramfs under ``-accel kvm`` and waits a few
seconds for its marker on the serial port. The verdict is cached per host kernel,
QEMU binary, ``/dev/kvm`` device and probe kernel, so only the first VM pays.
Without any guest kernel to boot, the probe runs a 5-byte firmware under KVM
instead, and says that this is all it could check.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from cove.errors import Unsupported

MARKER = b"COVE-KVM-PROBE-OK"
PROBE_SECONDS = 10.0


@dataclass(frozen=True)
class Verdict:
    accel: str  # "kvm" or "tcg"
    reason: str


def _kvm_usable() -> str | None:
    """Why KVM cannot even be tried, or None."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable"
    return None


def probe_kernels(root: str, preferred: str | None) -> list[str]:
    """Guest kernels to probe with: the VM's own, cove's fetched ones, the host's."""
    found = [preferred] if preferred else []
    found += sorted(glob.glob(os.path.join(root, "kernels", "*", "vmlinuz")))
    found += sorted(glob.glob("/boot/vmlinuz-*"))
    return [k for k in found if os.access(k, os.R_OK)]


def probe_initrd() -> bytes:
    """A gzip initramfs whose /init prints MARKER and powers off (busybox-static). Without
    a busybox the kernel finds no /init and prints nothing: the probe fails safe (TCG)."""
    from pathlib import Path

    from cove.vm import initramfs

    cpio = initramfs.Cpio()
    busybox = shutil.which("busybox")
    if busybox:
        cpio.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        init = b"#!/bin/busybox sh\n/bin/busybox echo " + MARKER + b"\n/bin/busybox poweroff -f\n"
        cpio.file("init", init, 0o755)
    return gzip.compress(cpio.bytes(), mtime=0)


def _run_probe(argv: list[str], until: float) -> tuple[bool, str]:
    from cove.sys.syscalls import die_with_parent

    # a probe QEMU hung under a broken KVM must not outlive a killed cove
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)  # fmt: skip
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    try:
        while time.monotonic() < until:
            with contextlib.suppress(BlockingIOError, TypeError):
                chunk = proc.stdout.read()
                if chunk:
                    seen += chunk
            if MARKER in seen:
                return True, ""
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        with contextlib.suppress(BlockingIOError, TypeError):
            seen += proc.stdout.read() or b""
        lines = seen.decode(errors="replace").strip().splitlines()
        return MARKER in seen, lines[-1] if lines else ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def probe(qemu: str, kernels: list[str], seconds: float = PROBE_SECONDS) -> Verdict:
    with tempfile.TemporaryDirectory(prefix="cove-kvm-probe-") as tmp:
        common = [qemu, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none",
                  "-m", "256", "-no-reboot"]  # fmt: skip
        if kernels:
            initrd = os.path.join(tmp, "initrd.gz")
            with open(initrd, "wb") as f:
                f.write(probe_initrd())
            argv = [*common, "-machine", "q35", "-cpu", "host", "-serial", "stdio",
                    "-kernel", kernels[0], "-initrd", initrd,
                    "-append", "console=ttyS0 panic=-1 quiet"]  # fmt: skip
            ok, last = _run_probe(argv, time.monotonic() + seconds)
            if ok:
                return Verdict("kvm", f"kvm probe: {kernels[0]} booted under kvm")
            kname = os.path.basename(os.path.dirname(kernels[0])) or kernels[0]
            if last and "COVE" not in last:
                # QEMU gave up (a nested host refusing MSRs, ...): its last word says why
                said = last.rsplit(": ", 1)[-1][:120]
                return Verdict("tcg", f"kvm probe: qemu failed booting {kname} under kvm "
                                      f"({said}): using tcg emulation")  # fmt: skip
            return Verdict("tcg", f"kvm probe: {kname} printed nothing under kvm within "
                                  f"{seconds:.0f} s: using tcg emulation")  # fmt: skip
        return Verdict(
            "tcg",
            "kvm not verified: no guest kernel to probe with (cove vm kernel fetch gets one): "
            "using tcg emulation",
        )


def _cache_key(qemu: str, kernels: list[str]) -> str:
    def stamp(path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return f"{path}:-"
        return f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_rdev}"

    qpath = shutil.which(qemu) or qemu
    return "|".join([os.uname().release, stamp(qpath), stamp("/dev/kvm"),
                     stamp(kernels[0]) if kernels else "firmware"])  # fmt: skip


def choose(requested: str, root: str, kernel: str | None, qemu: str) -> Verdict:
    """The accelerator for a VM asked to run with ``requested`` (auto, kvm, tcg)."""
    if requested == "tcg":
        return Verdict("tcg", "requested with --accel tcg")
    blocked = _kvm_usable()
    if requested == "kvm":
        if blocked:
            raise Unsupported(f"--accel kvm: {blocked}")
        return Verdict("kvm", "requested with --accel kvm")
    if blocked:
        return Verdict("tcg", f"{blocked}: using tcg emulation")
    kernels = probe_kernels(root, kernel)
    if not kernels:
        # an honest probe needs a kernel: Debian's cloud kernel, as `vm kernel fetch` gets it
        with contextlib.suppress(Exception):
            from cove.vm.kernel import fetch, kernels_dir

            kernels = [fetch(kernels_dir(root)).vmlinuz]
    key = _cache_key(qemu, kernels)
    cache = os.path.join(root, "vms", "accel.json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        with open(cache) as f:
            doc = json.load(f)
        if doc["key"] == key:
            return Verdict(doc["accel"], doc["reason"] + " (cached)")
    verdict = probe(qemu, kernels)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = f"{cache}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"key": key, "accel": verdict.accel, "reason": verdict.reason}, f)
    os.replace(tmp, cache)
    return verdict
