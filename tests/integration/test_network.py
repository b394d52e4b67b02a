"""Networking end to end: bridges, veths, NAT, published ports, DNS by name, hot connect.

Traffic goes only between the test's own containers, their bridges, and 127.0.0.1.
Busybox httpd is not in the Alpine minirootfs, so the host's static busybox
(busybox-static) is mounted into the containers that serve HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import CoveRunner, cove_argv

BB = ["-v", "/bin/busybox:/opt/bb/busybox:ro"]
HTTPD = (
    "mkdir -p /www && echo {text} > /www/index.html && "
    "exec /opt/bb/busybox httpd -f -p {port} -h /www"
)


def serve(cove: CoveRunner, name: str, *flags: str, text: str = "hello", port: int = 8080) -> str:
    return cove("run", "-d", "--name", name, *BB, *flags, "alpine:3.20", "sh", "-c",
                HTTPD.format(text=text, port=port)).stdout.strip()  # fmt: skip


def inspect(cove: CoveRunner, ref: str) -> dict:  # type: ignore[type-arg]
    doc: dict = json.loads(cove("inspect", "--type", "container", ref).stdout)[0]  # type: ignore[type-arg]
    return doc


def http_get(url: str, tries: int = 50) -> str:
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url}")


def kernel_links() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def ruleset() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True).stdout


@pytest.fixture
def base_links() -> list[str]:
    return kernel_links()


def test_user_network_names_and_isolation(cove: CoveRunner, alpine: str) -> None:
    cove("network", "create", "t1")
    cove("network", "create", "t2")
    serve(cove, "web", "--network", "t1", "--network-alias", "www", text="hello-web")
    out = cove("run", "--rm", "--network", "t1", "alpine:3.20", "sh", "-c",
               "ping -c1 -W2 web >/dev/null && echo ping-ok; "
               "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web:8080/ && break; sleep 0.2;"
               " done; wget -qO- http://www:8080/").stdout  # fmt: skip
    assert out == "ping-ok\nhello-web\nhello-web\n"
    web_ip = inspect(cove, "web")["NetworkSettings"]["Networks"]["t1"]["IPAddress"]
    # positive control: the very same fetch by address works from t1, so the failure from
    # t2 below is the isolation, not a broken image, address or server
    same = cove("run", "--rm", "--network", "t1", "alpine:3.20", "wget", "-T", "2", "-qO-",
                f"http://{web_ip}:8080/", check=False)  # fmt: skip
    assert same.returncode == 0 and same.stdout == "hello-web\n", same
    other = cove("run", "--rm", "--network", "t2", "alpine:3.20", "wget", "-T", "2", "-qO-",
                 f"http://{web_ip}:8080/", check=False)  # fmt: skip
    # wget itself ran and failed to connect (exit 1, its own message): the container started
    assert other.returncode == 1 and other.stdout == "", other
    assert other.stderr.startswith("wget: "), other
    unknown = cove("run", "--rm", "--network", "t2", "alpine:3.20", "ping", "-c1", "-W1", "web",
                   check=False)  # fmt: skip
    assert unknown.returncode != 0
    # the host reaches the container directly on its bridge
    assert http_get(f"http://{web_ip}:8080/") == "hello-web\n"

    none = cove("run", "--rm", "--network", "none", "alpine:3.20", "ls", "/sys/class/net").stdout
    assert none.split() == ["lo"]
    host = cove("run", "--rm", "--network", "host", "alpine:3.20", "ls", "/sys/class/net").stdout
    assert set(host.split()) == set(kernel_links())

    resolv = cove("run", "--rm", "--network", "t1", "--dns", "10.9.9.9", "--add-host",
                  "db:10.1.2.3", "-h", "box", "alpine:3.20", "sh", "-c",
                  "cat /etc/resolv.conf /etc/hosts; hostname").stdout  # fmt: skip
    assert "nameserver 10.9.9.9" in resolv and "10.1.2.3\tdb" in resolv
    assert "\tbox\n" in resolv and resolv.endswith("box\n")

    net = json.loads(cove("network", "inspect", "t1").stdout)[0]
    assert net["Name"] == "t1" and len(net["Containers"]) == 1
    busy = cove("network", "rm", "t1", check=False)
    assert busy.returncode == 1 and "active endpoints" in busy.stderr


def test_published_ports(cove: CoveRunner, alpine: str) -> None:
    serve(cove, "pub", "-p", "127.0.0.1:18080:8080", text="published")
    assert http_get("http://127.0.0.1:18080/") == "published\n"
    assert cove("port", "pub").stdout == "8080/tcp -> 127.0.0.1:18080\n"
    assert "127.0.0.1:18080->8080/tcp" in cove("ps").stdout

    # another container reaches it through a host address (its gateway), hairpin NAT
    serve(cove, "pub2", "-p", "18081:8080", text="pub2")
    gw = inspect(cove, "pub2")["NetworkSettings"]["Gateway"]
    assert http_get("http://127.0.0.1:18081/") == "pub2\n"
    via_host = cove("run", "--rm", "alpine:3.20", "sh", "-c",
                    f"for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://{gw}:18081/ && break; "
                    "sleep 0.2; done").stdout  # fmt: skip
    assert via_host == "pub2\n"

    cove("run", "-d", "--name", "udp", "-p", "127.0.0.1:19999:9999/udp", "alpine:3.20",
         "nc", "-u", "-l", "-p", "9999")  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(50):
            s.sendto(b"hello-udp\n", ("127.0.0.1", 19999))
            time.sleep(0.1)
            if "hello-udp" in cove("logs", "udp").stdout:
                break
    assert cove("logs", "udp").stdout.startswith("hello-udp\n")

    serve(cove, "all", "-P", "--expose", "7000", port=7000, text="exposed")
    line = cove("port", "all").stdout.strip()
    assert line.startswith("7000/tcp -> 0.0.0.0:")
    host_port = int(line.rsplit(":", 1)[1])
    assert http_get(f"http://127.0.0.1:{host_port}/") == "exposed\n"
    assert cove("port", "all", "7000").stdout.strip() == f"0.0.0.0:{host_port}"

    taken = cove("run", "-d", "-p", "127.0.0.1:18080:80", "alpine:3.20", "true", check=False)
    assert taken.returncode != 0 and "already allocated" in taken.stderr
    # a host process's port is not taken over; a range takes its first free port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 18097))
        busy.listen()
        held = cove("run", "-d", "-p", "127.0.0.1:18097:80", "alpine:3.20", "true", check=False)
        assert held.returncode == 125 and "already allocated" in held.stderr
        cove("run", "-d", "--name", "rng", "-p", "127.0.0.1:18097-18099:80", "alpine:3.20",
             "sleep", "100")  # fmt: skip
        assert cove("port", "rng").stdout == "80/tcp -> 127.0.0.1:18098\n"
    assert cove("port", "rng", "81", check=False).returncode == 1
    # a network's published ports leave with it
    cove("network", "disconnect", "bridge", "rng")
    assert "--dport 18098" not in ruleset() and cove("port", "rng").stdout == ""
    cove("rm", "-f", "rng")
    bad = cove("run", "--rm", "--network", "none", "-p", "80", "alpine:3.20", "true",
               check=False)  # fmt: skip
    assert bad.returncode == 125
    cove("rm", "-f", "pub", "pub2", "udp", "all")
    assert ":18080" not in ruleset() and ":18081" not in ruleset()


def test_connect_disconnect(cove: CoveRunner, alpine: str) -> None:
    cove("network", "create", "side")
    cove("run", "-d", "--name", "hot", "alpine:3.20", "sleep", "1000")
    assert cove("exec", "hot", "ls", "/sys/class/net").stdout.split() == ["eth0", "lo"]
    cove("network", "connect", "--alias", "hotter", "side", "hot")
    assert cove("exec", "hot", "ls", "/sys/class/net").stdout.split() == ["eth0", "eth1", "lo"]
    nets = inspect(cove, "hot")["NetworkSettings"]["Networks"]
    assert set(nets) == {"bridge", "side"}
    side_ip = nets["side"]["IPAddress"]
    assert cove("exec", "hot", "ip", "-o", "-4", "addr", "show", "eth1").stdout.split()[3] == (
        f"{side_ip}/24"
    )
    # a container on "side" finds it by name and alias
    out = cove(
        "run",
        "--rm",
        "--network",
        "side",
        "alpine:3.20",
        "sh",
        "-c",
        "ping -c1 -W2 hot >/dev/null && ping -c1 -W2 hotter >/dev/null && echo ok",
    )
    assert out.stdout == "ok\n"
    again = cove("network", "connect", "side", "hot", check=False)
    assert again.returncode != 0
    # the connection is remembered: a restart attaches it again
    cove("restart", "-t", "0", "hot")
    assert cove("exec", "hot", "ls", "/sys/class/net").stdout.split() == ["eth0", "eth1", "lo"]
    assert set(inspect(cove, "hot")["NetworkSettings"]["Networks"]) == {"bridge", "side"}
    cove("network", "disconnect", "side", "hot")
    assert cove("exec", "hot", "ls", "/sys/class/net").stdout.split() == ["eth0", "lo"]
    assert set(inspect(cove, "hot")["NetworkSettings"]["Networks"]) == {"bridge"}
    # a stopped container can be connected; its next start has the network
    cove("stop", "-t", "0", "hot")
    cove("network", "connect", "side", "hot")
    cove("start", "hot")
    assert set(inspect(cove, "hot")["NetworkSettings"]["Networks"]) == {"bridge", "side"}


def test_parallel_runs_get_distinct_addresses_and_nothing_leaks(
    cove: CoveRunner, cove_root: Path, alpine: str, base_links: list[str]
) -> None:
    net_id = cove("network", "create", "par").stdout.strip()
    bridge = json.loads(cove("network", "inspect", "par").stdout)[0]["Options"][
        "com.docker.network.bridge.name"
    ]
    subnet = json.loads(cove("network", "inspect", "par").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    procs = [
        subprocess.Popen(cove_argv(cove_root, "run", "-d", "--network", "par", "-p", "80",
                                   "alpine:3.20", "sleep", "1000"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(20)
    ]  # fmt: skip
    results = [p.communicate(timeout=180) for p in procs]
    failed = [
        (p.returncode, err) for p, (_, err) in zip(procs, results, strict=True) if p.returncode
    ]
    assert not failed, failed
    ids = [out.strip() for out, _ in results]
    addrs = {inspect(cove, cid)["NetworkSettings"]["Networks"]["par"]["IPAddress"] for cid in ids}
    assert len(addrs) == 20
    host_ports = {
        inspect(cove, cid)["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] for cid in ids
    }
    assert len(host_ports) == 20
    assert any(cid[:8] in " ".join(kernel_links()) for cid in ids)
    cove("rm", "-f", *ids)
    cove("network", "rm", "par")
    links = kernel_links()
    assert bridge not in links
    assert not [x for x in links if any(x.startswith(f"veth{cid[:8]}") for cid in ids)]
    rules = ruleset()
    assert subnet not in rules and net_id[:10] not in rules
    assert not [x for x in rules.splitlines() if "DNAT" in x and "--to-destination" in x and
                x.split("--to-destination ")[1].startswith(subnet.rsplit(".", 1)[0])]  # fmt: skip
    import sqlite3

    db = sqlite3.connect(cove_root / "state.db")
    assert db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM ports").fetchone()[0] == 0


def test_crash_leftovers_and_reset(cove: CoveRunner, cove_root: Path, alpine: str,
                                   base_links: list[str]) -> None:  # fmt: skip
    import hashlib
    import signal
    import sqlite3

    cove("network", "create", "--internal", "inner")
    cove("run", "-d", "--name", "aa", "--network", "inner", "alpine:3.20", "sleep", "1000")
    cid = cove("run", "-d", "--name", "bb", "-p", "127.0.0.1:18090:80", "alpine:3.20",
               "sleep", "1000").stdout.strip()  # fmt: skip
    inner = json.loads(cove("network", "inspect", "inner").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    rules = ruleset()
    assert f"-s {inner} ! -o" not in rules
    assert "--dport 18090" in rules

    # the monitor dies: the next command stops the container and releases what it held
    def is_monitor(p: Path) -> bool:
        cmd = (p / "cmdline").read_bytes()
        return cid.encode() in cmd and b"cove.monitor" in cmd

    mon = int(next(p.name for p in Path("/proc").iterdir() if p.name.isdigit() and is_monitor(p)))
    os.kill(mon, signal.SIGKILL)
    time.sleep(0.3)
    assert "Exited (137)" in cove("ps", "-a", "-f", "name=bb").stdout
    db = sqlite3.connect(cove_root / "state.db")
    assert db.execute("SELECT COUNT(*) FROM leases WHERE container = ?", (cid,)).fetchone()[0] == 0
    assert "--dport 18090" not in ruleset()
    assert f"veth{cid[:8]}0" not in kernel_links()
    ours = {n["Options"]["com.docker.network.bridge.name"] for n in json.loads(
        cove("network", "inspect", "bridge", "inner").stdout)}  # fmt: skip
    ids = cove("ps", "-aq", "--no-trunc").stdout.split()
    cove("system", "reset", "-f")
    left = [
        x for x in kernel_links() if x in ours or any(x.startswith(f"veth{i[:8]}") for i in ids)
    ]
    assert left == []
    tag = hashlib.sha256(str(cove_root).encode()).hexdigest()[:6]
    assert f"cove0-{tag}" not in kernel_links()
    assert f"COVE-DNAT-{tag}" not in ruleset()
    dns = subprocess.run(["pgrep", "-af", "cove.network.dns"], capture_output=True, text=True)
    assert str(cove_root) not in dns.stdout
