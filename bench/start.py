#!/usr/bin/env python3
"""Benchmark container start: ``cove run --rm --network none alpine:3.20 true`` against
``runc run`` on a bundle holding the same Alpine rootfs (runc spec's default namespaces, which
include a fresh network namespace, so both sides are equivalent to ``--network none``), and
``cove run --rm alpine:3.20 true`` on cove's default bridge network in the same root (issue 20:
bridge <= 1.2x none). What the bridge side makes (the root's bridge, its iptables chains) is
removed at the end, pass or fail, with ``cove system reset``, as the tests' fixture does.

Run as root. Runs are interleaved (cove, runc, cove, ...) after two warm-ups each, so drift in
machine load is spread over both sides. ``--json`` prints machine-readable results only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import math
import os
import shutil
import signal
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


def _importtime_rows(err: str) -> list[tuple[int, int, str]]:
    rows = []
    for line in err.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[0].strip().isdigit():
            rows.append((int(parts[0]), int(parts[1]), parts[2].rstrip()))
    return rows


def import_times(
    interp: list[str], cove_args: list[str], top: int = 8
) -> tuple[list[tuple[int, int, str]], dict[str, float], list[str]]:
    """The top imports of a run, the totals (ms) of what the run imports beyond the bare
    interpreter's start (min of 3 runs: load on the shared machine only adds) and the cove
    modules it imported (for the bytecode check)."""
    bare = {
        n.strip()
        for _, _, n in _importtime_rows(run([*interp, "-X", "importtime", "-c", "pass"]).stderr)
    }
    best: tuple[float, float] = (math.inf, math.inf)
    rows: list[tuple[int, int, str]] = []
    for _ in range(3):
        err = run([*interp, "-X", "importtime", "-m", "cove", *cove_args]).stderr
        got = _importtime_rows(err)
        # depth-0 entries (no indent) hold their children's time; only those beyond the bare start
        total = sum(c for _, c, n in got if not n.startswith("   ") and n.strip() not in bare)
        own = sum(s for s, _, n in got if n.strip().startswith("cove"))
        if total < best[0]:
            best, rows = (total / 1000, own / 1000), got
    modules = [n.strip() for _, _, n in rows if n.strip().startswith("cove")]
    totals = {"imports_ms": best[0], "cove_self_ms": best[1]}
    return sorted(rows, key=lambda r: r[1], reverse=True)[:top], totals, modules


def bytecode_state(interp: list[str], modules: list[str]) -> tuple[int, list[str]]:
    """How many of ``modules`` have a .pyc matching their source (what the interpreter
    checks: the source's mtime and size in the .pyc header), and the names of the rest."""
    probe = (
        "import importlib.util, os, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    src = importlib.util.find_spec(name).origin\n"
        "    pyc = importlib.util.cache_from_source(src)\n"
        "    st = os.stat(src)\n"
        "    try:\n"
        "        head = open(pyc, 'rb').read(16)\n"
        "    except OSError:\n"
        "        head = b''\n"
        "    ok = (len(head) == 16 and head[:4] == importlib.util.MAGIC_NUMBER\n"
        "          and int.from_bytes(head[8:12], 'little') == int(st.st_mtime) & 0xFFFFFFFF\n"
        "          and int.from_bytes(head[12:16], 'little') == st.st_size & 0xFFFFFFFF)\n"
        "    if not ok: bad.append(name)\n"
        "print(' '.join(bad))\n"
    )
    stale = run([*interp, "-c", probe, *modules]).stdout.split()
    return len(modules) - len(stale), stale


def cove_modules(interp: list[str], code: str) -> list[str]:
    """The cove modules a fresh ``interp`` holds after running ``code`` (the import path of
    a face that is not ``python -m cove``: cove-runc, the pull, the server)."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted(m for m in sys.modules if m == 'cove' "
    probe += "or m.startswith('cove.'))))"
    return run([*interp, "-c", probe]).stdout.split()


def bytecode_lines(what: str, count: int, stale: list[str]) -> list[str]:
    """How every bench reports ``bytecode_state``: whether the .pyc of the ``count`` cove
    modules ``what`` imports are fresh, and whether PYTHONDONTWRITEBYTECODE is set (then a
    stale or missing one is compiled in memory at every start, never written)."""
    state = "all fresh" if not stale else f"{len(stale)} stale or missing: {' '.join(stale)}"
    lines = [f"bytecode of the {count} cove modules {what}: {state}"]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        lines.append(
            "PYTHONDONTWRITEBYTECODE is set here: a stale or missing .pyc is compiled in "
            "memory at every start (install.sh and pip install precompile; else run "
            "`python -m compileall cove`)"
        )
    else:
        lines.append("PYTHONDONTWRITEBYTECODE is not set: a start rewrites a stale or missing .pyc")
    return lines


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a daemon started with ``start_new_session`` (dockerd, a registry): SIGTERM to
    its process group, SIGKILL after 30 s, and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def interpreter(cove: list[str]) -> list[str]:
    """The interpreter (and its flags) the cove command starts."""
    if len(cove) >= 3 and cove[1:3] == ["-m", "cove"]:
        return [cove[0]]
    first = Path(cove[0]).read_bytes()[:256].split(b"\n")[0].decode(errors="replace")
    return first[2:].strip().split() if first.startswith("#!") else [sys.executable]


def traced(cmd: list[str]) -> list[tuple[str, float]]:
    """One cove run with COVE_TRACE_START=1: each step's ms. The first is the interpreter's
    start (spawn to the first line of cove/__main__.py, CLOCK_MONOTONIC on both sides); the
    last, ``process-exit``, is from cove's last mark to the bench seeing it gone."""
    env = {**os.environ, "COVE_TRACE_START": "1"}
    t0 = time.perf_counter_ns()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          cwd=REPO, env=env)  # fmt: skip
    t_end = time.perf_counter_ns()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    steps, prev = [], t0
    for line in proc.stderr.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "cove-trace":
            ns = int(parts[2])
            steps.append((parts[1], (ns - prev) / 1e6))
            prev = ns
    steps.append(("process-exit", (t_end - prev) / 1e6))
    return steps


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


def bridge_leftovers(root: Path) -> list[str]:
    """The bridge and iptables chains cove names after ``root`` (its default bridge is
    ``cove0-<hash>`` outside the standard root; chains end in ``-<hash>``) still present."""
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:6]
    left = [f"bridge cove0-{tag}"] if Path(f"/sys/class/net/cove0-{tag}").exists() else []
    save = subprocess.run(["iptables-save"], capture_output=True, text=True)
    left += sorted(
        f"iptables chain {line.split()[0][1:]}"
        for line in save.stdout.splitlines()
        if line.startswith(":COVE-") and line.split()[0].endswith("-" + tag)
    )
    return left


def reset_root(cove: list[str], root: Path) -> list[str]:
    """``cove system reset`` of the bench's root (containers, networks and their rules), then
    what is left of the bridge side; ip_forward as cove left it (Docker's choice too)."""
    if (root / "state.db").exists():
        subprocess.run([*cove, "--root", str(root), "system", "reset", "-f"],
                       capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return bridge_leftovers(root)


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
        bridge_args = ["--root", str(root), "run", "--rm", REF, "true"]
        times: dict[str, list[float]] = {"cove": [], "runc": [], "cove-bridge": []}
        rootless = stack.enter_context(rootless_sides(cove)) if args.rootless else {}
        for side in rootless:
            times[side] = []
        for i in range(2 + args.runs):
            cid = f"bench-{os.getpid()}-{i}"
            c = timed([*cove, *run_args])
            r = timed(["runc", "run", "-b", str(bundle), cid], ["runc", "delete", "-f", cid])
            b = timed([*cove, *bridge_args])
            more = {side: timed(argv) for side, argv in rootless.items()}
            if i >= 2:
                times["cove"].append(c)
                times["runc"].append(r)
                times["cove-bridge"].append(b)
                for side, ms in more.items():
                    times[side].append(ms)
        interp = interpreter(cove)
        bare = [timed([*interp, "-c", "pass"]) for _ in range(max(5, args.runs))]
        breakdown: dict[str, list[float]] = {}
        for _ in range(min(args.runs, 5)):
            for step, ms in traced([*cove, *run_args]):
                breakdown.setdefault(step, []).append(ms)
        imports, import_totals, modules = import_times(interp, run_args)
        fresh, stale = bytecode_state(interp, modules)
    finally:
        stack.close()
        leftovers = reset_root(cove, tmp / "root")
        shutil.rmtree(tmp, ignore_errors=True)
    for what in leftovers:
        print(f"warning: left behind after system reset: {what}", file=sys.stderr)
    stats = {side: summary(ms) for side, ms in times.items()}
    ratio = stats["cove"]["median_ms"] / stats["runc"]["median_ms"]
    bridge_ratio = stats["cove-bridge"]["median_ms"] / stats["cove"]["median_ms"]
    steps = {step: statistics.median(ms) for step, ms in breakdown.items()}
    no_pyc_writes = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    if args.json:
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "cove_cmd": cove,
                    **stats,
                    "ratio": ratio,
                    "target_ratio": 1.0,
                    "bridge_ratio": bridge_ratio,
                    "bridge_target_ratio": 1.2,
                    "leftovers": leftovers,
                    "imports_top": [
                        {"self_us": s, "cumulative_us": c, "name": n.strip()} for s, c, n in imports
                    ],
                    **import_totals,
                    "bare_interpreter_ms": statistics.median(bare),
                    "steps_ms": steps,
                    "bytecode_fresh": fresh,
                    "bytecode_stale": stale,
                    "pythondontwritebytecode": no_pyc_writes,
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
    print(f"\nratio cove/runc (median): {ratio:.2f}  (target <= 1.0: {verdict})")
    bverdict = "met" if bridge_ratio <= 1.2 else "NOT met"
    print(f"ratio cove-bridge/cove (default bridge over --network none, median): "
          f"{bridge_ratio:.2f}  (target <= 1.2: {bverdict})\n")  # fmt: skip
    print(f"breakdown of `cove run` (COVE_TRACE_START=1, median of {min(args.runs, 5)} runs;")
    print("each step includes the imports it triggers):")
    print(f"  {'bare interpreter (python -c pass)':40}{statistics.median(bare):8.1f} ms")
    for step, ms in steps.items():
        print(f"  {step:40}{ms:8.1f} ms")
    print(f"  {'sum':40}{sum(steps.values()):8.1f} ms\n")
    print(
        f"imports beyond the interpreter's own (python -X importtime, best of 3): "
        f"{import_totals['imports_ms']:.1f} ms, of which cove modules' own code "
        f"{import_totals['cove_self_ms']:.1f} ms"
    )
    for line in bytecode_lines("on the start path", len(modules), stale):
        print(line)
    print(f"\ntop {len(imports)} imports by cumulative time (python -X importtime, start path):")
    print(f"{'cumul ms':>9}{'self ms':>9}  module")
    for s, c, n in imports:
        print(f"{c / 1000:9.1f}{s / 1000:9.1f}  {n}")


if __name__ == "__main__":
    main()
