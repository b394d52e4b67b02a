"""``docker stats``: CPU %, memory, network and block I/O, pids, from cgroups and /proc."""

from __future__ import annotations

import os
import time
from typing import Any

from cove.errors import NotFound
from cove.spec.units import human_size
from cove.state import Record, Status


def _system_ns() -> int:
    """Total CPU time of the host in ns, as Docker's system usage (all of /proc/stat's cpu)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields) * 1_000_000_000 // ticks


def _net(pid: int) -> tuple[int, int]:
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        cols = rest.split()
        rx += int(cols[0])
        tx += int(cols[8])
    return rx, tx


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def sample_all(ce: Any, refs: list[str], *, all_containers: bool = False) -> list[dict[str, str]]:
    from cove.runtime import control

    recs: list[Record]
    if refs:
        recs = [ce.get(r) for r in refs]
    else:
        recs = [r for r in ce.all() if all_containers or r.status == Status.RUNNING]
    live = [r for r in recs if r.status in (Status.RUNNING, Status.PAUSED)]
    state_dir = ce.runtime().state_dir

    def sample(cid: str) -> dict[str, Any] | None:
        try:
            return control.stats(state_dir, cid)
        except NotFound:  # a vm run, or gone since the listing: zeros, as before
            return None

    first = {r.id: sample(r.id) for r in live}
    before = {cid: s["cpu"]["usage"]["total"] for cid, s in first.items() if s is not None}
    sys_before = _system_ns()
    if before:
        time.sleep(0.5)
    sys_after = _system_ns()
    ncpu = os.cpu_count() or 1
    total_mem = _mem_total()
    rows = []
    for r in recs:
        row = {
            "ID": r.id[:12],
            "Container": r.id[:12],
            "Name": r.name,
            "CPUPerc": "0.00%",
            "MemUsage": "0B / 0B",
            "MemPerc": "0.00%",
            "NetIO": "0B / 0B",
            "BlockIO": "0B / 0B",
            "PIDs": "0",
        }
        doc = sample(r.id) if r.id in before else None
        if doc is not None:
            s = _counters(doc)
            d_cpu = s["cpu_ns"] - before[r.id]
            d_sys = sys_after - sys_before
            cpu = (d_cpu / d_sys) * ncpu * 100 if d_sys > 0 else 0.0
            limit = s["mem_limit"] if 0 < s["mem_limit"] < total_mem else total_mem
            rx, tx = _net(r.pid)
            row.update(
                CPUPerc=f"{cpu:.2f}%",
                MemUsage=f"{_bin(s['mem_usage'])} / {_bin(limit)}",
                MemPerc=f"{(s['mem_usage'] / limit * 100) if limit else 0:.2f}%",
                NetIO=f"{human_size(rx)} / {human_size(tx)}",
                BlockIO=f"{human_size(s['io_read'])} / {human_size(s['io_write'])}",
                PIDs=str(s["pids"]),
            )
        rows.append(row)
    return rows


def _counters(doc: dict[str, Any]) -> dict[str, int]:
    """runc's stats document as the counters ``docker stats`` prints."""
    blkio = {e["op"]: e["value"] for e in doc["blkio"]["ioServiceBytesRecursive"]}
    return {
        "cpu_ns": doc["cpu"]["usage"]["total"],
        "mem_usage": doc["memory"]["usage"]["usage"],
        "mem_limit": doc["memory"]["usage"]["limit"],
        "io_read": blkio.get("Read", 0),
        "io_write": blkio.get("Write", 0),
        "pids": doc["pids"]["current"],
    }


def _bin(n: float) -> str:
    """Docker's BytesSize: binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}TiB"


def docker_stats(ce: Any, rec: Record, *, prior: dict[str, Any] | None) -> dict[str, Any]:
    """One sample in the Engine API's stats shape: raw counters (the client computes the
    percentages against ``precpu_stats``, the previous sample, as ``docker stats`` does)."""
    from cove.runtime import control

    now = time.time()
    doc = None
    fresh = ce.store.get(rec.id)
    if fresh.status in (Status.RUNNING, Status.PAUSED):
        try:
            doc = control.stats(ce.runtime().state_dir, rec.id)
        except NotFound:
            doc = None
    s = _counters(doc) if doc is not None else None
    rx, tx = _net(fresh.pid) if s is not None else (0, 0)
    total_mem = _mem_total()
    limit = s["mem_limit"] if s and 0 < s["mem_limit"] < total_mem else total_mem
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
    empty_cpu: dict[str, Any] = {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "system_cpu_usage": 0,
        "online_cpus": 0,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }
    cpu = dict(empty_cpu)
    if s is not None:
        cpu = {
            "cpu_usage": {
                "total_usage": s["cpu_ns"],
                "usage_in_kernelmode": 0,
                "usage_in_usermode": 0,
            },
            "system_cpu_usage": _system_ns(),
            "online_cpus": os.cpu_count() or 1,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }
    return {
        "read": stamp,
        "preread": prior["read"] if prior else "0001-01-01T00:00:00Z",
        "id": rec.id,
        "name": "/" + rec.name,
        "num_procs": 0,
        "pids_stats": {"current": s["pids"]} if s else {},
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"major": 0, "minor": 0, "op": "read", "value": s["io_read"]},
                {"major": 0, "minor": 0, "op": "write", "value": s["io_write"]},
            ]
            if s
            else None
        },
        "storage_stats": {},
        "cpu_stats": cpu,
        "precpu_stats": prior["cpu_stats"] if prior else empty_cpu,
        "memory_stats": {"usage": s["mem_usage"], "limit": limit, "stats": {}} if s else {},
        "networks": {
            "eth0": {
                "rx_bytes": rx,
                "rx_packets": 0,
                "rx_errors": 0,
                "rx_dropped": 0,
                "tx_bytes": tx,
                "tx_packets": 0,
                "tx_errors": 0,
                "tx_dropped": 0,
            }
        }
        if s
        else {},
    }
