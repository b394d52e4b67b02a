"""Orphan sweeps: what a killed command left that no container record owns any more.

Reconciliation (``ContainerEngine.reconcile``) repairs the records; this module removes
what lives outside them: runtime state dirs with their cgroups and processes, monitors,
leases and ports, DNS responders. It runs in ``ps``, ``rm``, ``system prune`` and
``system reset`` (not on the start path).

How each thing is tied to its root (several roots share one kernel, so only what is
provably this root's is touched):
- runtime state ``<root>/runtime/<id>`` is made before the container's cgroups (``cove/<id>``)
  and removed after them, so a cgroup of this root always has its runtime dir: the sweep
  reaches cgroups (and the processes in them) only through runtime dirs;
- a monitor's command line carries ``root=<root>`` and ``cid=<id>``; a DNS responder's its
  hosts file ``<root>/networks/<net>/hosts``;
- leases and ports are rows of this root's database, host veths are named by their lease.
A container's record is added before anything else of it exists and removed after
everything else is gone; its bundle is removed just before the record. So a runtime dir or
monitor whose id has neither a record nor a bundle is an orphan. (A bundle without a record
is left alone: ``system check --repair`` rebuilds records from bundles.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
from typing import Any

from cove.errors import best_effort
from cove.state import Store


def _cmdline(pid: str) -> bytes:
    """/proc/PID/cmdline's bytes (b"" if the process is gone); raw fd reads, as ``ps`` reads
    one per process on the host."""
    try:
        fd = os.open(f"/proc/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return b"".join(chunks)


def root_processes(root: str) -> list[tuple[int, str, str]]:
    """(pid, kind, key) of the monitors (key: container id) and DNS responders (key: network
    id) of ``root``, found by their command lines."""
    mon_root = f"root={root}"
    hosts = os.path.join(root, "networks") + "/"
    # a byte search first: only a command line naming this root is split and decoded
    needles = (os.fsencode(mon_root), os.fsencode(hosts))
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        data = _cmdline(name)
        if needles[0] not in data and needles[1] not in data:
            continue
        argv = [a.decode("utf-8", "surrogateescape") for a in data.split(b"\0") if a]
        if mon_root in argv:
            cid = next((a[4:] for a in argv if a.startswith("cid=")), "")
            if cid:
                out.append((int(name), "monitor", cid))
        elif any(a.startswith(hosts) and a.endswith("/hosts") for a in argv):
            arg = next(a for a in argv if a.startswith(hosts) and a.endswith("/hosts"))
            out.append((int(name), "dns", arg[len(hosts) :].split("/")[0]))
    return out


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def destroy_runtime(root: str, cid: str) -> None:
    """The runtime state, process and cgroups of container ``cid`` (also when a killed
    create left no state.json: its cgroups are the runtime's default path ``cove/<id>``)."""
    from cove.runtime import control
    from cove.runtime.api import Runtime

    # the cgroups go first (killing what is in them): while they exist, the runtime dir
    # must stay, as it is their tie to this root that the next sweep follows
    state_dir = os.path.join(root, "runtime")
    control.destroy_cgroups(state_dir, cid)
    Runtime(state_dir, os.path.join(root, "cache")).delete(cid, force=True)


def sweep(
    root: str, store: Store, *, everything: bool = False, ids: set[str] | None = None
) -> list[str]:
    """Remove the orphans of ``root``; with ``everything`` (``system reset``) also every
    monitor, runtime dir, bundle and DNS responder left, records or not. Returns what was
    removed (for messages and tests). Concurrent sweeps: one runs, the others return.

    ``ids``: the container ids the caller has just read (``ps`` reads every record anyway),
    instead of reading them again. A container made since keeps its bundle from before its
    runtime dir or monitor exist, so it is never taken for an orphan."""
    locks = os.path.join(root, "locks")
    os.makedirs(locks, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(locks, "sweep.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if everything else fcntl.LOCK_NB))
        except BlockingIOError:
            return []
        return _sweep(root, store, everything, ids)
    finally:
        os.close(fd)


def _sweep(root: str, store: Store, everything: bool, known: set[str] | None) -> list[str]:
    done: list[str] = []
    cdir = os.path.join(root, "containers")
    if everything:
        ids: set[str] = set()
    elif known is not None:
        ids = known
    else:
        ids = {r[0] for r in store.db.execute("SELECT id FROM containers")}

    def orphan(cid: str) -> bool:
        return cid not in ids and (everything or not os.path.isdir(os.path.join(cdir, cid)))

    procs = root_processes(root)
    for pid, kind, key in procs:
        if kind == "monitor" and orphan(key):
            _kill(pid)
            done.append(f"monitor {pid} of {key[:12]}")
    rdir = os.path.join(root, "runtime")
    for cid in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        if orphan(cid):
            with best_effort(f"sweep the runtime state of {cid}", __name__):
                destroy_runtime(root, cid)
                done.append(f"runtime state of {cid[:12]}")
    done += _sweep_networks(root, store, ids, procs, everything)
    if everything:
        for cid in sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []:
            if cid not in ids:
                shutil.rmtree(os.path.join(cdir, cid), ignore_errors=True)
                shutil.rmtree(f"/run/cove-vm/{cid[:20]}", ignore_errors=True)
                done.append(f"bundle of {cid[:12]}")
    return done


def _sweep_networks(
    root: str, store: Store, ids: set[str], procs: list[tuple[int, str, str]], everything: bool
) -> list[str]:
    """Leases and ports no record owns (their host veths with them); DNS responders that are
    not the recorded one of an existing network. Under the networks lock, as the responders
    are started under it."""
    db = store.db
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "leases" not in tables:
        return []
    from cove.network.manager import NetworkManager

    nm = NetworkManager(root, db)
    done = []
    owners = {r[0] for r in db.execute("SELECT container FROM leases UNION "
                                       "SELECT container FROM ports")}  # fmt: skip
    if "vms" in tables:  # a vm holds its lease as long as it exists
        owners -= {r[0] for r in db.execute("SELECT id FROM vms")}
    cdir = os.path.join(root, "containers")
    for cid in sorted(owners - ids):
        if everything or not os.path.isdir(os.path.join(cdir, cid)):
            with best_effort(f"sweep the leases of {cid}", __name__):
                nm.detach(cid)
                done.append(f"leases of {cid[:12]}")
    dns = [(pid, key) for pid, kind, key in procs if kind == "dns"]
    if dns:
        with nm._lock():
            nets = {n.id: n for n in nm.all()}
            for pid, net in dns:
                n: Any = nets.get(net)
                if everything or n is None or nm._dns_pid(n) != pid:
                    _kill(pid)
                    done.append(f"dns responder {pid}")
    return done
