#!/usr/bin/env python3
"""Soak (issue 22), longer than the suite's: ``--workers`` loops run, exec, connect, stop,
remove, build and pull against a fresh state root while a killer SIGKILLs random cove
processes of that root (commands, helpers, monitors, DNS responders). Then, with nothing
running: ``ps -a`` (reconciliation), the records against the kernel, ``rm -f`` of
everything, ``system reset -f``, and a search for anything left (mounts, cgroups in every
hierarchy, veths, netns, chains, leases, monitors, container and QEMU processes).

Run as root: ``bench/soak.py --seconds 300``. Prints the cycle and kill counts and what was
found; exits 1 if anything was left. The same code as tests/integration/test_soak.py
(tests/helpers.py), with a registry on 127.0.0.1 (tests/registries.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from helpers import (  # noqa: E402  # noqa: E402
    ALPINE_TAR,
    cove_argv,
    host_leaks,
    host_snapshot,
    records_against_kernel,
    root_chains,
    soak,
    soak_setup,
)
from registries import start_plain  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300, help="seconds of load (300)")
    ap.add_argument("--workers", type=int, default=4, help="concurrent workers (4)")
    ap.add_argument("--seed", type=int, default=None, help="the killer's random seed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cove-soak-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()

        def argv(*a: str) -> list[str]:
            return cove_argv(root, *a)

        def cove(*a: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv(*a), capture_output=True, text=True, timeout=600)

        before = host_snapshot()
        reg = start_plain(Path(tmp))
        try:
            soak_setup(argv, root, ALPINE_TAR, reg.host, Path(tmp) / "ctx")
            res = soak(argv, root, seconds=args.seconds, workers=args.workers,
                       registry=reg.host, context=Path(tmp) / "ctx", seed=args.seed)  # fmt: skip
            print(res.summary())
            cove("ps", "-a")
            found = [f"record: {b}" for b in records_against_kernel(root)]
            ids = cove("ps", "-aq", "--no-trunc").stdout.split()
            if ids:
                rm = cove("rm", "-f", *ids)
                if rm.returncode:
                    found.append(f"rm -f failed: {rm.stderr.strip()}")
            found += [f"after rm -f: {x}" for x in host_leaks(before, root, networks_stay=True)]
            reset = cove("system", "reset", "-f")
            if reset.returncode:
                found.append(f"system reset -f failed: {reset.stderr.strip()}")
            found += [f"after reset: {x}" for x in host_leaks(before, root)]
            found += [f"after reset: chain {c}" for c in root_chains(root)]
        finally:
            reg.stop()
            cove("system", "reset", "-f")
    print("\n".join(found) if found else "nothing left")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
