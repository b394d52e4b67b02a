#!/usr/bin/env python3
"""Benchmark pulling: a Debian bookworm minbase image (the debootstrap rootfs bench/ caches,
~93 MB compressed, pushed once to a local Debian ``docker-registry`` on 127.0.0.1) pulled
into a fresh store by ``cove pull`` (which leaves it unpacked, ready to run), by
``skopeo copy`` to an OCI layout + ``umoci unpack``, by ``podman pull``, and by ``docker
pull`` through a dockerd started here (its own --data-root/--exec-root/socket, no bridge, no
iptables), all in the same run, interleaved, fresh stores each time (docker: ``rmi``).
Target: cove's pull-and-ready-to-run time <= half of podman's and of docker's.

Where the stores live (``--fs``): ``ext4`` (default) is a fresh ext4 file system with a
journal (mkfs.ext4's defaults, as a user's disk has) on a loop device, made here; ``host``
is /var/tmp as it is. This host's root ext4 has no journal, and without one ext4's inode
allocator skips every inode freed in the last 60-300 s (``recently_deleted``), reading
its inode table for each: after the many deletions the test suites (and this benchmark's
own cleanup) make, creating a file there costs ~0.5 ms instead of ~20 us, for every tool
alike, and the figures drift with what ran before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from start import (
    bytecode_lines,
    bytecode_state,
    cove_command,
    cove_modules,
    interpreter,
    run,
    stop_group,
)

ROOTFS_GZ = Path("/var/cache/cove-bench/bookworm-minbase.tar.gz")
DOCKER, DOCKERD = "/usr/bin/docker", "/usr/sbin/dockerd"
FS_SIZE = "8G"  # sparse: only what the stores hold is written


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


def mount_scratch(tmp: Path) -> Path:
    """A fresh journaled ext4 on a loop device, mounted at tmp/fs."""
    image, mnt = tmp / "fs.img", tmp / "fs"
    run(["truncate", "-s", FS_SIZE, str(image)])
    run(["mkfs.ext4", "-q", "-F", str(image)])
    mnt.mkdir()
    run(["mount", "-o", "loop", str(image), str(mnt)])
    return mnt


def start_dockerd(
    tmp: Path, registry: str, i: int
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A dockerd of its own with a fresh data root (``i``: which pull)."""
    sock = tmp / f"docker{i}.sock"
    with open(tmp / f"dockerd{i}.log", "wb") as log:  # dockerd keeps its own copy of the fd
        proc = subprocess.Popen(
            [DOCKERD, "--data-root", str(tmp / f"d-data{i}"), "--exec-root",
             str(tmp / f"d-exec{i}"), "-H", f"unix://{sock}", "--pidfile",
             str(tmp / f"d{i}.pid"), "--bridge=none",
             "--iptables=false", "--ip-masq=false", "--ip-forward=false",
             "--insecure-registry", registry],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp / "dh"),
           "DOCKER_CONFIG": str(tmp / "dh" / "cli"), "DOCKER_HOST": f"unix://{sock}"}  # fmt: skip
    deadline = time.monotonic() + 60
    while subprocess.run([DOCKER, "version"], env=env, capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            raise RuntimeError(f"dockerd did not come up (log: {tmp / f'dockerd{i}.log'})")
        time.sleep(0.1)
    return proc, env


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    if env is None:
        run(cmd)
    else:
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def sync() -> None:
    os.sync()


# the modules `cove pull` loads: the verb, the distribution client, the store's ingest
# (pipeline, unpack, streams) and everything they import
PULL_PATH = ("cove.cli", "cove.cli.registry", "cove.engine", "cove.registry.dist",
             "cove.image.store", "cove.image.pipeline", "cove.image.layers",
             "cove.image.streams")  # fmt: skip
# which gzip inflater cove's streams module picks (isal's igzip, else zlib through gzip):
# cove falls back silently, and the figures depend on it
INFLATER = (
    "import gzip, io\n"
    "from cove.image import streams\n"
    "r = streams.decompressor(io.BytesIO(gzip.compress(b'')), 'gzip', 'probe')\n"
    "mod = type(getattr(r, '_f', r)).__module__\n"
    "if mod.startswith('isal'):\n"
    "    import isal\n"
    "    print('isal', getattr(isal, '__version__', '?'), '(igzip)')\n"
    "else:\n"
    "    print(f'zlib (gzip module, {mod}): isal is not installed')\n"
)


def pull_software(cove: list[str]) -> dict[str, object]:
    """cove's inflater and the bytecode freshness of the pull path, in cove's interpreter."""
    interp = interpreter(cove)
    modules = cove_modules(interp, f"import {', '.join(PULL_PATH)}")
    fresh, stale = bytecode_state(interp, modules)
    return {"inflater": run([*interp, "-c", INFLATER]).stdout.strip(),
            "bytecode_modules": len(modules), "bytecode_fresh": fresh, "bytecode_stale": stale,
            "pythondontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measured pulls per tool (default 3)")
    ap.add_argument("--fs", choices=("ext4", "host"), default="ext4",
                    help="where the stores live (default: a fresh journaled ext4)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: must run as root")
    for tool in ("docker-registry", "skopeo", "umoci", "podman", DOCKERD, DOCKER):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (scripts/test-deps.sh installs it)")
    if not ROOTFS_GZ.exists():
        sys.exit(f"error: {ROOTFS_GZ} missing: run bench/import_unpack.py once to build it")
    cove, how = cove_command()
    software = pull_software(cove)
    top = Path(tempfile.mkdtemp(prefix="cove-bench-pull.", dir="/var/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    mounted = False
    times: dict[str, list[float]] = {"cove": [], "podman": [], "docker": [], "skopeo+umoci": []}
    try:
        tmp = top
        if args.fs == "ext4":
            tmp, mounted = mount_scratch(top), True
        reg, host = start_registry(tmp)
        procs.append(reg)
        ref = f"{host}/bench/debian:12"
        seed = tmp / "seed"
        run([*cove, "--root", str(seed), "import", str(ROOTFS_GZ), ref])
        run([*cove, "--root", str(seed), "push", "--tls-verify=false", "-q", ref])

        # Every store stays until the end: deleting thousands of files between pulls would
        # bill whichever tool runs next (the host's unjournaled ext4 skips recently freed
        # inodes, see above). dockerd gets a fresh data root per pull instead of an rmi.
        def pull_cove(i: int) -> float:
            return timed([*cove, "--root", str(tmp / f"cove{i}"), "pull", "-q",
                          "--tls-verify=false", ref])  # fmt: skip

        def pull_skopeo_umoci(i: int) -> float:
            layout, bundle = tmp / f"oci{i}", tmp / f"bundle{i}"
            t = time.perf_counter()
            run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                 f"oci:{layout}:12"])  # fmt: skip
            run(["umoci", "unpack", "--image", f"{layout}:12", str(bundle)])
            return time.perf_counter() - t

        def pull_podman(i: int) -> float:
            return timed(["podman", "--root", str(tmp / f"podman{i}"), "--runroot",
                          str(tmp / f"podman-run{i}"), "pull", "-q", "--tls-verify=false",
                          ref])  # fmt: skip

        def pull_docker(i: int) -> float:
            dockerd, denv = start_dockerd(tmp, host, i)
            procs.append(dockerd)
            try:
                sync()
                return timed([DOCKER, "pull", "-q", ref], env=denv)
            finally:
                stop_group(dockerd)

        tools = {"cove": pull_cove, "podman": pull_podman, "docker": pull_docker,
                 "skopeo+umoci": pull_skopeo_umoci}  # fmt: skip
        names = list(tools)
        for i in range(args.runs):
            # the order rotates: no tool always runs right after the same other one
            for name in names[i % len(names) :] + names[: i % len(names)]:
                sync()
                times[name].append(tools[name](i))
        for i in range(args.runs):
            subprocess.run(["podman", "--root", str(tmp / f"podman{i}"), "--runroot",
                            str(tmp / f"podman-run{i}"), "system", "reset", "-f"],
                           capture_output=True)  # fmt: skip
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        if mounted:
            subprocess.run(["umount", str(top / "fs")], check=False)
        shutil.rmtree(top, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {p: med["cove"] / med[p] for p in ("podman", "docker")}
    if args.json:
        print(json.dumps({"runs": args.runs, "fs": args.fs, "median_s": med, "all_s": times,
                          "ratio": ratios, **software}, indent=2))  # fmt: skip
        return
    size = ROOTFS_GZ.stat().st_size / 1e6
    fs = "fresh journaled ext4 (loop)" if args.fs == "ext4" else "/var/tmp (host root fs)"
    print(f"cove: {how}; image {size:.0f} MB compressed, {args.runs} pulls per tool; "
          f"stores on {fs}")  # fmt: skip
    print(f"cove's gzip inflater: {software['inflater']}")
    stale: list[str] = software["bytecode_stale"]  # type: ignore[assignment]
    count: int = software["bytecode_modules"]  # type: ignore[assignment]
    for line in bytecode_lines("the pull path imports", count, stale):
        print(line)
    print()
    print(f"{'':16}{'median s':>10}{'min s':>8}")
    for k, v in times.items():
        print(f"{k:16}{med[k]:10.2f}{min(v):8.2f}")
    print()
    for peer, ratio in ratios.items():
        verdict = "met" if ratio <= 0.5 else "NOT met"
        print(f"cove/{peer}: {ratio:.2f} (target <= 0.5: {verdict})")


if __name__ == "__main__":
    main()
