#!/usr/bin/env python3
"""Benchmark the Engine API face: ``docker run --rm alpine:3.20 true`` (docker CLI 20.10)
through ``cove serve`` against the same through a dockerd started here, in the same run;
plus the server's idle resident memory.

Run as root, with scripts/test-deps.sh done (docker.io). Both sides get alpine:3.20 from the
shared tarball (``docker import``), their own state (dockerd: --data-root/--exec-root under a
temporary directory, no bridge, no iptables rules; cove: a temporary root) and
``--network none`` runs, so neither pays for networking. Runs are interleaved after two
warm-ups each. Target: cove's median <= 0.5x dockerd's. ``--json``: results only.

Starts go through the server's fork helper (cove.api.forkserver), forked at ``cove serve``'s
start: its resident memory is reported beside the server's (RSS, and PSS, which counts the
pages the two still share copy-on-write once).

Note: PYTHONDONTWRITEBYTECODE=1 in the environment means no .pyc caches, so every Python
start compiles what it imports; ``cove serve`` compiles once, at start, which is what the
idle figure includes. The output says whether cove's bytecode caches were fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from start import bytecode_lines, bytecode_state, stop_group

REPO = Path(__file__).resolve().parents[1]
TGZ = REPO.parent / "shared" / "images" / "alpine-3.20" / "alpine-minirootfs-3.20.3-x86_64.tar.gz"
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"


def _env(sock: Path, home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "DOCKER_CONFIG": str(home / "cli"), "DOCKER_HOST": f"unix://{sock}"}  # fmt: skip


def _wait(env: dict[str, str], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while subprocess.run([DOCKER, "version"], env=env, capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.1)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _helper_pid(serve: int) -> int:
    """The fork helper: the server's child (its only long-lived one)."""
    kids = Path(f"/proc/{serve}/task/{serve}/children").read_text().split()
    return int(kids[0]) if kids else 0


def _cove_modules() -> list[str]:
    """Every cove module (the server and its fork helper import most of them)."""
    names = []
    for src in sorted((REPO / "cove").rglob("*.py")):
        parts = src.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _dockerd_version() -> str:
    """dockerd's own version (``dockerd --version``: "Docker version X, build Y")."""
    out = subprocess.run([DOCKERD, "--version"], capture_output=True, text=True).stdout
    return out.split(",")[0].removeprefix("Docker version ").strip() or "(unknown version)"


def _once(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "alpine:3.20", "true"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"docker run failed ({proc.returncode}): {proc.stderr}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/api.py needs root")
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        dsock = tmp / "docker.sock"
        dlog = open(tmp / "dockerd.log", "wb")
        dockerd = subprocess.Popen(
            [DOCKERD, "--data-root", str(tmp / "d-data"), "--exec-root", str(tmp / "d-exec"),
             "-H", f"unix://{dsock}", "--pidfile", str(tmp / "d.pid"), "--bridge=none",
             "--iptables=false", "--ip-masq=false", "--ip-forward=false"],
            stdout=dlog, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(dockerd)
        csock = tmp / "cove.sock"
        clog = open(tmp / "serve.log", "wb")
        serve = subprocess.Popen(
            [sys.executable, "-m", "cove", "--root", str(tmp / "c-root"), "serve",
             "-H", f"unix://{csock}"],
            stdout=clog, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        procs.append(serve)
        denv, cenv = _env(dsock, tmp / "dh"), _env(csock, tmp / "ch")
        _wait(denv, dockerd, "dockerd")
        _wait(cenv, serve, "cove serve")
        time.sleep(1.0)
        idle_rss = _rss_kib(serve.pid)
        helper = _helper_pid(serve.pid)
        idle = {"serve_idle_rss_kib": idle_rss, "serve_idle_pss_kib": _pss_kib(serve.pid),
                "helper_idle_rss_kib": _rss_kib(helper) if helper else 0,
                "helper_idle_pss_kib": _pss_kib(helper) if helper else 0}  # fmt: skip
        for env in (denv, cenv):
            subprocess.run([DOCKER, "import", "--change", 'CMD ["/bin/sh"]', str(TGZ),
                            "alpine:3.20"], env=env, check=True, capture_output=True)  # fmt: skip
            _once(env)
            _once(env)
        warm_rss = _rss_kib(serve.pid)  # after the import (its buffers) and the warm-ups
        times: dict[str, list[float]] = {"dockerd": [], "cove": []}
        for _ in range(args.runs):
            times["dockerd"].append(_once(denv))
            times["cove"].append(_once(cenv))
        after_rss = _rss_kib(serve.pid)
        modules = _cove_modules()
        fresh, stale = bytecode_state([sys.executable], modules)
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "runs": args.runs,
            "dockerd_median_s": round(med["dockerd"], 4),
            "cove_median_s": round(med["cove"], 4),
            "ratio": round(med["cove"] / med["dockerd"], 3),
            "target_ratio": 0.5,
            **idle,
            "serve_rss_after_import_kib": warm_rss,
            "serve_rss_after_runs_kib": after_rss,
            "dockerd_version": _dockerd_version(),
            "bytecode_fresh": fresh,
            "bytecode_stale": stale,
            "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"docker run --rm --network none alpine:3.20 true, {args.runs} runs each")
            print(f"  dockerd {result['dockerd_version']}:  median {med['dockerd'] * 1000:.0f} ms")
            print(f"  cove serve:     median {med['cove'] * 1000:.0f} ms "
                  f"({result['ratio']}x dockerd; target <= 0.5x)")  # fmt: skip
            print(f"  cove serve RSS: {idle_rss / 1024:.1f} MiB idle "
                  f"(PSS {idle['serve_idle_pss_kib'] / 1024:.1f}), "
                  f"{warm_rss / 1024:.1f} MiB after the image import and warm-ups, "
                  f"{after_rss / 1024:.1f} MiB after the runs")  # fmt: skip
            print(f"  fork helper:    {idle['helper_idle_rss_kib'] / 1024:.1f} MiB RSS idle "
                  f"(PSS {idle['helper_idle_pss_kib'] / 1024:.1f})")  # fmt: skip
            what = "the server and its fork helper may import"
            for line in bytecode_lines(what, len(modules), stale):
                print(f"  {line}")
        return 0
    finally:
        for p in procs:
            stop_group(p)
        subprocess.run([sys.executable, "-m", "cove", "--root", str(tmp / "c-root"), "system",
                        "reset", "-f"], capture_output=True, cwd=REPO)  # fmt: skip
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            if line.split()[1].startswith(str(tmp)):
                subprocess.run(["umount", "-l", line.split()[1]], capture_output=True)
        subprocess.run(["rm", "-rf", str(tmp)], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
