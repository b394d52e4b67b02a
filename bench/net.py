#!/usr/bin/env python3
"""Benchmark container networking: iperf3 throughput container-to-container (one user
network) and host-to-published-port, beside host loopback measured in the same run; and
the latency of N small HTTP requests through a published port against straight to the
container's address.

Traffic stays on this host: 127.0.0.1 and the benchmark's own containers. The containers
run the host's iperf3 and static busybox, mounted in (the Alpine minirootfs has neither).
Run as root; everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
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
from start import REF, TGZ, cove_command, run

IPERF = [
    "-v", "/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro",
    "-v", "/usr/lib64:/lib64:ro",
    "-v", "/usr/bin/iperf3:/usr/local/bin/iperf3:ro",
]  # fmt: skip
BUSYBOX = ["-v", "/bin/busybox:/opt/bb/busybox:ro"]


def gbits(doc: dict) -> float:  # type: ignore[type-arg]
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


def wait_port(host: str, port: int) -> None:
    import socket

    for _ in range(100):
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def http_latency(host: str, port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--time", type=int, default=3, help="seconds per iperf3 run")
    ap.add_argument("-n", type=int, default=1000, help="HTTP requests per side")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: must run as root")
    for tool in ("iperf3", "busybox"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found (scripts/install.sh installs it)")
    cove, how = cove_command()
    tmp = Path(tempfile.mkdtemp(prefix="cove-bench-net.", dir="/var/tmp"))
    root = tmp / "root"
    c = [*cove, "--root", str(root)]
    host_srv = None
    res: dict[str, float] = {}
    try:
        run([*c, "import", str(TGZ), REF])
        run([*c, "network", "create", "benchnet"])
        run([*c, "run", "-d", "--name", "srv", "--network", "benchnet", "-p",
             "127.0.0.1:15201:5201", *IPERF, REF, "iperf3", "-s"])  # fmt: skip
        wait_port("127.0.0.1", 15201)
        t = str(args.time)
        out = run([*c, "run", "--rm", "--network", "benchnet", *IPERF, REF, "iperf3", "-c",
                   "srv", "-t", t, "-J"]).stdout  # fmt: skip
        res["ctr_to_ctr_gbit"] = gbits(json.loads(out))
        out = run(["iperf3", "-c", "127.0.0.1", "-p", "15201", "-t", t, "-J"]).stdout
        res["host_to_published_gbit"] = gbits(json.loads(out))
        host_srv = subprocess.Popen(
            ["iperf3", "-s", "-p", "15202", "-B", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port("127.0.0.1", 15202)
        out = run(["iperf3", "-c", "127.0.0.1", "-p", "15202", "-t", t, "-J"]).stdout
        res["host_loopback_gbit"] = gbits(json.loads(out))

        run([*c, "run", "-d", "--name", "web", "--network", "benchnet", "-p",
             "127.0.0.1:18088:8080", *BUSYBOX, REF, "sh", "-c",
             "mkdir -p /www && echo ok > /www/index.html && "
             "exec /opt/bb/busybox httpd -f -p 8080 -h /www"])  # fmt: skip
        ip = run([*c, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]).stdout.strip()
        wait_port("127.0.0.1", 18088)
        wait_port(ip, 8080)
        http_latency(ip, 8080, 20)  # warm-up
        published = http_latency("127.0.0.1", 18088, args.n)
        direct = http_latency(ip, 8080, args.n)
        res["http_published_median_us"] = statistics.median(published)
        res["http_direct_median_us"] = statistics.median(direct)
        res["http_published_p99_us"] = sorted(published)[int(0.99 * len(published)) - 1]
        res["http_direct_p99_us"] = sorted(direct)[int(0.99 * len(direct)) - 1]
    finally:
        if host_srv is not None:
            host_srv.kill()
            host_srv.wait()
        subprocess.run([*c, "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"cove: {how}; iperf3 {args.time} s per run, {args.n} HTTP requests per side\n")
    print(f"{'throughput (iperf3, TCP)':34}{'Gbit/s':>10}")
    print(f"{'host loopback (peer)':34}{res['host_loopback_gbit']:10.2f}")
    print(f"{'container -> container (bridge)':34}{res['ctr_to_ctr_gbit']:10.2f}")
    print(f"{'host -> 127.0.0.1 published port':34}{res['host_to_published_gbit']:10.2f}")
    print(f"\n{'HTTP GET, new connection each':34}{'median us':>10}{'p99 us':>10}")
    print(f"{'straight to the container address':34}{res['http_direct_median_us']:10.0f}"
          f"{res['http_direct_p99_us']:10.0f}")  # fmt: skip
    print(f"{'through 127.0.0.1 published port':34}{res['http_published_median_us']:10.0f}"
          f"{res['http_published_p99_us']:10.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
