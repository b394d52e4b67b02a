#!/usr/bin/env python3
"""Benchmark detached containers: N ``cove run -d --network none alpine:3.20 sleep`` (the
peer has no network either) in a loop, then
``cove ps``, against Podman's parts for the same job measured in the same run: ``conmon``
(the monitor) plus ``runc create``/``runc start`` on a bundle of the same Alpine rootfs.

Prints time per container, ``ps`` time (median of 5 listings of the N; ``runc list -f
json`` likewise) and whether it listed all N, and the resident memory (RSS and PSS, from
/proc/PID/smaps_rollup) of each idle monitor: cove's per-container monitor against conmon;
then where cove's time goes in ``run -d`` and ``ps`` (COVE_TRACE_START=1 step marks, median
of 5) and whether those commands' bytecode is fresh. Run as root; everything it starts is
removed at the end.
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
from start import (
    REF,
    TGZ,
    bytecode_lines,
    bytecode_state,
    cove_command,
    import_times,
    interpreter,
    make_bundle,
    run,
    traced,
)

PS_RUNS = 5  # listings timed per side; the median is reported


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def cove_monitors(root: Path) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"cove.monitor" in b" ".join(cmd) and f"root={root}".encode() in cmd:
                out.append(int(p.name))
    return out


def bench_cove(cove: list[str], root: Path, n: int) -> dict[str, object]:
    per = []
    for _ in range(n):
        t = time.perf_counter()
        run([*cove, "--root", str(root), "run", "-d", "--network", "none", REF, "sleep", "3600"])
        per.append((time.perf_counter() - t) * 1000)
    ps_times = []
    for _ in range(PS_RUNS):
        t = time.perf_counter()
        listed = run([*cove, "--root", str(root), "ps", "-q"]).stdout.split()
        ps_times.append((time.perf_counter() - t) * 1000)
    ps_ms = statistics.median(ps_times)
    mons = cove_monitors(root)
    mem = [memory(p) for p in mons]
    return {
        "per_container_ms": statistics.median(per),
        "total_s": sum(per) / 1000,
        "ps_ms": ps_ms,
        "listed": len(listed),
        "monitors": len(mons),
        "monitor_rss_kib": statistics.mean(m[0] for m in mem),
        "monitor_pss_kib": statistics.mean(m[1] for m in mem),
    }


def breakdown(cove: list[str], root: Path) -> dict[str, object]:
    """Step timings of ``run -d`` and ``ps`` (each the median of 5 traced runs, after the
    timed ones: ps lists N + 5 here), and the freshness of the .pyc of the cove modules
    they import (``python -X importtime``, which runs each 3 more times)."""
    out: dict[str, object] = {}
    base = [*cove, "--root", str(root)]
    for verb, argv in (("run -d", ["run", "-d", "--network", "none", REF, "sleep", "3600"]),
                       ("ps", ["ps", "-q"])):  # fmt: skip
        per: dict[str, list[float]] = {}
        for _ in range(5):
            for step, ms in traced([*base, *argv]):
                per.setdefault(step, []).append(ms)
        out[f"steps {verb}"] = {step: statistics.median(ms) for step, ms in per.items()}
    interp = interpreter(cove)
    modules: set[str] = set()
    for argv in (["ps", "-q"], ["run", "-d", "--network", "none", REF, "sleep", "3600"]):
        modules.update(import_times(interp, ["--root", str(root), *argv])[2])
    out["bytecode_modules"] = len(modules)
    out["bytecode_stale"] = bytecode_state(interp, sorted(modules))[1]
    return out


def bench_peer(tmp: Path, n: int) -> dict[str, object]:
    bundle = tmp / "bundle"
    make_bundle(bundle)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = ["sleep", "3600"]
    spec["root"]["readonly"] = True
    (bundle / "config.json").write_text(json.dumps(spec))
    runc_root, state = tmp / "runc", tmp / "state"
    state.mkdir()
    per, conmons = [], []
    for i in range(n):
        cid = f"peer{i}"
        t = time.perf_counter()
        run(["conmon", "--api-version", "1", "-c", cid, "-u", cid, "-r", shutil.which("runc")
             or "runc", "-b", str(bundle), "-p", str(state / f"{cid}.pid"), "-n", cid,
             "--exit-dir", str(state), "-l", f"k8s-file:{state / cid}.log", "--log-level",
             "error", "--runtime-arg", f"--root={runc_root}", "--conmon-pidfile",
             str(state / f"{cid}.conmon"), "--socket-dir-path", str(state),
             "--persist-dir", str(state / f"{cid}.persist")])  # fmt: skip
        # conmon creates the container after it has daemonized: wait for its pidfile
        while not (state / f"{cid}.pid").exists():
            time.sleep(0.001)
        run(["runc", "--root", str(runc_root), "start", cid])
        per.append((time.perf_counter() - t) * 1000)
        conmons.append(int((state / f"{cid}.conmon").read_text()))
    ps_times = []
    for _ in range(PS_RUNS):
        t = time.perf_counter()
        listed = json.loads(run(["runc", "--root", str(runc_root), "list", "-f", "json"]).stdout)
        ps_times.append((time.perf_counter() - t) * 1000)
    ps_ms = statistics.median(ps_times)
    mem = [memory(p) for p in conmons]
    for i in range(n):
        subprocess.run(["runc", "--root", str(runc_root), "delete", "-f", f"peer{i}"],
                       capture_output=True)  # fmt: skip
    for pid in conmons:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return {
        "per_container_ms": statistics.median(per),
        "total_s": sum(per) / 1000,
        "ps_ms": ps_ms,
        "listed": len(listed),
        "monitors": len(conmons),
        "monitor_rss_kib": statistics.mean(m[0] for m in mem),
        "monitor_pss_kib": statistics.mean(m[1] for m in mem),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100, help="containers per side (default 100)")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: must run as root")
    for tool in ("runc", "conmon"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (scripts/install.sh installs it)")
    cove, how = cove_command()
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-life.", dir="/var/tmp"))
    root = tmp / "root"
    try:
        run([*cove, "--root", str(root), "import", str(TGZ), REF])
        peer = bench_peer(tmp, args.n)
        mine = bench_cove(cove, root, args.n)
        mine.update(breakdown(cove, root))
    finally:
        subprocess.run([*cove, "--root", str(root), "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"n": args.n, "cove": mine, "conmon+runc": peer}, indent=2))
        return
    print(f"cove: {how}; {args.n} detached `sleep 3600` containers per side\n")
    rows = [("per container (median ms)", "per_container_ms", "{:.1f}"),
            ("all N started (s)", "total_s", "{:.1f}"),
            ("ps / runc list (ms)", "ps_ms", "{:.0f}"),
            ("listed", "listed", "{}"),
            ("idle monitor RSS (MiB)", "monitor_rss_kib", "{:.2f}"),
            ("idle monitor PSS (MiB)", "monitor_pss_kib", "{:.2f}")]  # fmt: skip
    print(f"{'':28}{'cove':>12}{'conmon+runc':>14}")
    for label, key, f in rows:
        a, b = mine[key], peer[key]
        if key.endswith("kib"):
            a, b = float(a) / 1024, float(b) / 1024  # type: ignore[arg-type]
        print(f"{label:28}{f.format(a):>12}{f.format(b):>14}")
    rss = float(mine["monitor_rss_kib"]) / 1024  # type: ignore[arg-type]
    print(f"\nmonitor RSS target <= 10 MiB: {'met' if rss <= 10 else 'NOT met'} ({rss:.2f} MiB)")
    for key, what in (("per_container_ms", "run -d per container"), ("ps_ms", "ps of N")):
        ratio = float(mine[key]) / float(peer[key])  # type: ignore[arg-type]
        print(f"{what} / conmon+runc: {ratio:.2f} (target <= 1.0: "
              f"{'met' if ratio <= 1.0 else 'NOT met'})")  # fmt: skip
    for verb in ("run -d", "ps"):
        steps: dict[str, float] = mine[f"steps {verb}"]  # type: ignore[assignment]
        print(f"\n`cove {verb}` with {args.n} containers (COVE_TRACE_START=1, median of 5):")
        for step, ms in steps.items():
            print(f"  {step:24}{ms:8.1f} ms")
    stale: list[str] = mine["bytecode_stale"]  # type: ignore[assignment]
    count: int = mine["bytecode_modules"]  # type: ignore[assignment]
    print()
    for line in bytecode_lines("`run -d` and `ps` import", count, stale):
        print(line)


if __name__ == "__main__":
    main()
