#!/usr/bin/env python3
"""Rootless published ports: slirp4netns against pasta (Debian's passt), in the same run.

Everything runs as a throwaway user (bench/rootless.py), as rootless cove does. Each forwarder
gets its own user and network namespace (``unshare --user --map-root-user --net``), with an
iperf3 server and a one-byte TCP responder inside, and forwards a port of the host's
127.0.0.1 into it: slirp4netns as rootless cove runs it (``--configure --mtu=65520
--disable-host-loopback``, the forward added through its API socket while it runs, cove's
way), pasta with the port given at start (``-t 127.0.0.1/HOST:NS``, the only way this
pasta takes one). Measured through each forward and, as the reference, straight to a server
on the host's loopback: iperf3 throughput (Gbit/s) and the latency of a new connection
until its first byte (connect, accept inside, one byte back; median and p95 of N).

Traffic stays on 127.0.0.1 and the benchmark's namespaces. Run as root (to make the user);
the user, its namespaces, servers and forwarders are removed at the end, pass or fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rootless import BenchUser, bench_user

IPERF_PORT = 5201
BYTE_PORT = 5300
# accept, send one byte, close: the far end of a connection-latency sample
RESPONDER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', {port})); s.listen(128)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'x'); c.close()\n"
)


class Bench:
    def __init__(self, user: BenchUser) -> None:
        self.user = user
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = str(user.home / "rlnet")
        os.mkdir(self.tmp, 0o700)
        os.chown(self.tmp, user.uid, user.gid)

    def spawn(self, argv: list[str], stdout: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """``argv`` as the bench user, in a session of its own."""
        p = subprocess.Popen(self.user.argv(*argv), stdin=subprocess.DEVNULL, stdout=stdout,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs.append(p)
        return p

    def netns(self) -> int:
        """The user's own user and network namespace with lo up, an iperf3 server and the
        responder; the pid of the shell holding it."""
        responder = os.path.join(self.tmp, "responder.py")
        with open(responder, "w") as f:
            f.write(RESPONDER.format(port=BYTE_PORT))
        os.chmod(responder, 0o644)
        script = (
            f"ip link set lo up; iperf3 -s -p {IPERF_PORT} >/dev/null 2>&1 & "
            f"/usr/bin/python3 {responder} >/dev/null 2>&1 & echo $$; exec sleep infinity"
        )
        holder = self.spawn(["unshare", "--user", "--map-root-user", "--net", "sh", "-c",
                             script], stdout=subprocess.PIPE)  # fmt: skip
        assert holder.stdout is not None
        return int(holder.stdout.readline())

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(500):  # readiness of a forwarder or server
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.settimeout(1)
            if s.recv(1) == b"x":
                return
        time.sleep(0.02)
    raise SystemExit(f"port {port} never answered")


def slirp(b: Bench, pid: int, ports: dict[int, int]) -> None:
    api = os.path.join(b.tmp, "slirp.sock")
    b.spawn(["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
             f"--userns-path=/proc/{pid}/ns/user", f"--api-socket={api}", str(pid),
             "tap0"])  # fmt: skip
    for _ in range(500):
        if os.path.exists(api):
            break
        time.sleep(0.01)
    for host, inner in ports.items():  # added while it runs, as cove does
        req = {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "127.0.0.1",
               "host_port": host, "guest_addr": "10.0.2.100", "guest_port": inner}}  # fmt: skip
        for _ in range(100):
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(api)
                s.sendall(json.dumps(req).encode())
                s.shutdown(socket.SHUT_WR)
                reply = json.loads(s.recv(65536) or b"{}")
                if "error" in reply:
                    raise SystemExit(f"slirp4netns add_hostfwd: {reply}")
                break
            time.sleep(0.05)


def pasta(b: Bench, pid: int, ports: dict[int, int]) -> None:
    spec = ",".join(f"{h}:{i}" for h, i in ports.items())
    # -f: stay in the foreground (a child we can kill); no automatic forwards
    b.spawn(["pasta", "-f", "--config-net", "-t", f"127.0.0.1/{spec}", "-u", "none",
             "-T", "none", "-U", "none", str(pid)])  # fmt: skip


def iperf(port: int, seconds: int) -> float:
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def first_byte(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            s.settimeout(5)
            if s.recv(1) != b"x":
                raise SystemExit(f"port {port}: no byte")
        out.append((time.perf_counter() - t) * 1000)
    return out


@contextlib.contextmanager
def bench() -> Iterator[Bench]:
    with bench_user() as user:
        b = Bench(user)
        try:
            yield b
        finally:
            b.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 run length")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    ap.add_argument("-n", type=int, default=200, help="connections per latency sample")
    args = ap.parse_args()
    for tool in ("slirp4netns", "pasta", "iperf3", "unshare", "nsenter"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (slirp4netns, passt, iperf3)")
    with bench() as b:
        sides: dict[str, dict[str, int]] = {}
        # the reference: servers on the host's own loopback
        sides["loopback"] = {"iperf": free_port(), "byte": free_port()}
        b.spawn(["iperf3", "-s", "-p", str(sides["loopback"]["iperf"])])
        b.spawn(["/usr/bin/python3", "-c", RESPONDER.format(port=sides["loopback"]["byte"])
                 .replace("0.0.0.0", "127.0.0.1")])  # fmt: skip
        for name, start in (("slirp4netns", slirp), ("pasta", pasta)):
            pid = b.netns()
            ports = {"iperf": free_port(), "byte": free_port()}
            start(b, pid, {ports["iperf"]: IPERF_PORT, ports["byte"]: BYTE_PORT})
            sides[name] = ports
        for ports in sides.values():
            wait_port(ports["byte"])
        time.sleep(0.5)  # the iperf3 servers listen by now (the responders answered)
        gb: dict[str, list[float]] = {k: [] for k in sides}
        lat: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(args.rounds):  # interleaved, so load drift hits every side alike
            for name, ports in sides.items():
                gb[name].append(iperf(ports["iperf"], args.seconds))
                lat[name] += first_byte(ports["byte"], args.n)
        print(
            f"{'path':<12} {'Gbit/s':>8} {'conn ms p50':>12} {'p95':>8}   "
            f"({args.rounds} x {args.seconds} s iperf3, {args.rounds} x {args.n} connections)"
        )
        for name in sides:
            q = statistics.quantiles(lat[name], n=20)
            print(f"{name:<12} {statistics.median(gb[name]):>8.2f} "
                  f"{statistics.median(lat[name]):>12.3f} {q[18]:>8.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
