#!/usr/bin/env python3
"""Benchmark pulling: a Debian bookworm minbase image (the debootstrap rootfs bench/ caches,
~93 MB compressed, pushed once to a local Debian ``docker-registry`` on 127.0.0.1) pulled
into a fresh store by ``cove pull`` (which leaves it unpacked, ready to run), by
``skopeo copy`` to an OCI layout + ``umoci unpack``, and by ``podman pull`` when podman runs,
all in the same run, interleaved, fresh stores each time.
Target: cove's pull-and-ready-to-run time <= half of podman's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from start import cove_command, run

ROOTFS_GZ = Path("/var/cache/cove-bench/bookworm-minbase.tar.gz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = tmp / "registry.yml"
    cfg.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("docker-registry did not start")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t


def sync() -> None:
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measured pulls per tool (default 3)")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: must run as root")
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (scripts/install.sh installs it)")
    if not ROOTFS_GZ.exists():
        sys.exit(f"error: {ROOTFS_GZ} missing: run bench/import_unpack.py once to build it")
    podman = shutil.which("podman")
    if podman and subprocess.run([podman, "--version"], capture_output=True).returncode != 0:
        podman = None
    cove, how = cove_command()
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-pull.", dir="/var/tmp"))
    reg, host = start_registry(tmp)
    ref = f"{host}/bench/debian:12"
    times: dict[str, list[float]] = {"cove": [], "skopeo+umoci": []}
    if podman:
        times["podman"] = []
    try:
        seed = tmp / "seed"
        run([*cove, "--root", str(seed), "import", str(ROOTFS_GZ), ref])
        run([*cove, "--root", str(seed), "push", "--tls-verify=false", "-q", ref])
        for i in range(args.runs):
            root = tmp / f"cove{i}"
            sync()
            times["cove"].append(timed([*cove, "--root", str(root), "pull", "-q",
                                        "--tls-verify=false", ref]))  # fmt: skip
            layout, bundle = tmp / f"oci{i}", tmp / f"bundle{i}"
            sync()
            t = time.perf_counter()
            run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                 f"oci:{layout}:12"])  # fmt: skip
            run(["umoci", "unpack", "--image", f"{layout}:12", str(bundle)])
            times["skopeo+umoci"].append(time.perf_counter() - t)
            if podman:
                proot, prun = tmp / f"podman{i}", tmp / f"podman-run{i}"
                sync()
                times["podman"].append(timed([podman, "--root", str(proot), "--runroot",
                                              str(prun), "pull", "-q", "--tls-verify=false",
                                              ref]))  # fmt: skip
                subprocess.run([podman, "--root", str(proot), "--runroot", str(prun), "system",
                                "reset", "-f"], capture_output=True)  # fmt: skip
            for d in (root, layout, bundle):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        os.killpg(reg.pid, signal.SIGKILL)
        reg.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    if args.json:
        print(json.dumps({"runs": args.runs, "median_s": med, "all_s": times}, indent=2))
        return
    size = ROOTFS_GZ.stat().st_size / 1e6
    print(f"cove: {how}; image {size:.0f} MB compressed, {args.runs} pulls per tool\n")
    print(f"{'':16}{'median s':>10}{'min s':>8}")
    for k, v in times.items():
        print(f"{k:16}{med[k]:10.2f}{min(v):8.2f}")
    if "podman" in med:
        ratio = med["cove"] / med["podman"]
        verdict = "met" if ratio <= 0.5 else "NOT met"
        print(f"\ncove/podman: {ratio:.2f} (target <= 0.5: {verdict})")
    else:
        print("\npodman does not run here: no podman figure")


if __name__ == "__main__":
    main()
