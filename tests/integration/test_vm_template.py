"""``run --vm`` from a booted template (issue 20): restored VMs are fresh (random bytes,
MAC, clock), a stale template is rebuilt, a corrupt one falls back to a cold boot with a
warning. Real QEMU and the Debian cloud kernel (TCG here). One state root for the whole
flow: each template boot is a full kernel boot under TCG, so the test boots few."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import CoveRunner, cove_argv

# the probe each run prints: whether it was restored (the template's kernel command line
# has the word that parks its agent), 32 bytes of /dev/urandom, eth0's MAC, the clock
PROBE = ("grep -qw cove.template /proc/cmdline && echo restored || echo cold; "
         "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
         "cat /sys/class/net/eth0/address; date +%s")  # fmt: skip
BUILD_NOTE = "booting the vm template"
WARNING = "cannot restore the vm template"


@pytest.fixture
def vmrun(cove: CoveRunner, cove_root: Path, alpine: str) -> Iterator[CoveRunner]:
    """``cove`` with alpine:3.20 and the guest kernel (hard links: the test replaces the
    root's link, never the cached file); afterwards no QEMU (runs or template builds) of
    this root is left."""
    vmguest.install_kernel(cove_root)
    yield cove
    ids = cove("ps", "-aq", "--no-trunc").stdout.split()
    subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True)
    assert vmguest.leftovers(ids, str(cove_root)) == []


def probe(cove: CoveRunner) -> tuple[str, str, str, int, str]:
    """One ``run --vm``: (restored|cold, random hex, MAC, guest clock, stderr)."""
    proc = cove("run", "--vm", "--rm", "alpine:3.20", "sh", "-c", PROBE)
    how, rand, mac, clock = proc.stdout.split()
    return how, rand, mac, int(clock), proc.stderr


def templates(root: Path) -> list[str]:
    base = root / "vmtemplate"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def test_restored_runs_are_fresh_stale_rebuilt_corrupt_falls_back(
    vmrun: CoveRunner, cove_root: Path
) -> None:
    # the first run boots and saves the template, then restores it
    how, rand0, mac0, _, err = probe(vmrun)
    assert BUILD_NOTE in err and how == "restored"
    (first,) = templates(cove_root)
    # two restored VMs in a row: their own random bytes, their own MACs, the host's clock
    runs = [probe(vmrun) for _ in range(2)]
    for how, rand, mac, clock, err in runs:
        assert how == "restored" and BUILD_NOTE not in err and "warning" not in err, err
        assert abs(clock - time.time()) <= 5, (clock, time.time())
        assert len(rand) == 64 and mac.startswith("52:54:00:")
    rands = {rand0, runs[0][1], runs[1][1]}
    macs = {mac0, runs[0][2], runs[1][2]}
    assert len(rands) == 3 and len(macs) == 3, (rands, macs)
    assert templates(cove_root) == [first]  # reused, not rebuilt
    meta = json.loads((cove_root / "vmtemplate" / first / "meta.json").read_text())
    assert meta["shape"]["network"] == "user"
    # the cold path, asked for, prints the same kind of probe with no template involved
    cold = subprocess.run(cove_argv(cove_root, "run", "--vm", "--rm", "alpine:3.20", "sh", "-c",
                                    PROBE), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COVE_VM_TEMPLATE": "0"})  # fmt: skip
    assert cold.returncode == 0 and cold.stdout.split()[0] == "cold", cold.stderr
    assert "warning" not in cold.stderr

    # a corrupt template: the run warns in one line, boots cold and still runs the command
    state = cove_root / "vmtemplate" / first / "state"
    good = state.read_bytes()
    state.write_bytes(b"QEVM" + os.urandom(len(good) // 2))
    proc = vmrun("run", "--vm", "--rm", "alpine:3.20", "sh", "-c", PROBE + "; exit 7",
                 check=False)  # fmt: skip
    assert proc.returncode == 7
    assert proc.stdout.split()[0] == "cold"
    warnings = [ln for ln in proc.stderr.splitlines() if WARNING in ln]
    assert len(warnings) == 1 and warnings[0].startswith("cove: warning: "), proc.stderr
    # positive control: the same template, made good again, restores without a warning
    state.write_bytes(good)
    how, _, _, _, err = probe(vmrun)
    assert how == "restored" and "warning" not in err

    # a stale template: the kernel file changes (a new kernel installed over it) -> rebuilt
    # under a new key, the old one removed
    kernel = next((cove_root / "kernels").iterdir()) / "vmlinuz"
    data = kernel.read_bytes()
    kernel.unlink()
    kernel.write_bytes(data)
    how, _, _, _, err = probe(vmrun)
    assert how == "restored" and BUILD_NOTE in err
    (second,) = templates(cove_root)
    assert second != first
