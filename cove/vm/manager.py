"""``cove vm``: QEMU virtual machines with a lifecycle, like containers.

Each VM is a row in the state database and a directory ``<root>/vms/<id>/`` holding
its disk, its cloud-init seed, and, while it runs, the QMP socket, the serial console
socket (with its log) and the pidfile of its detached, sandboxed QEMU. Every control action
goes through QMP (``qemu.qmp``); the state is reconciled with the kernel whenever it
is read: a QEMU killed by hand or a guest powered off from inside shows as stopped.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cove.errors import Conflict, CoveError, InvalidSpec, NotFound, StateError
from cove.spec.vm import VMSpec
from cove.vm import qemu as qcmd

QEMU = qcmd.QEMU
QMP_TIMEOUT = 10.0
SNAPSHOT_TIMEOUT = 300.0  # savevm writes all of the guest's memory
RUN_DIR = "/run/cove-vm"  # sockets and pidfiles of running VMs, by id prefix


class VMStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def can_start(self) -> bool:
        return self in (VMStatus.CREATED, VMStatus.STOPPED)

    def can_stop(self) -> bool:
        return self in (VMStatus.RUNNING, VMStatus.PAUSED)

    def can_pause(self) -> bool:
        return self == VMStatus.RUNNING

    def can_resume(self) -> bool:
        return self == VMStatus.PAUSED


@dataclass
class VMRecord:
    id: str
    name: str
    spec: VMSpec
    status: VMStatus = VMStatus.CREATED
    pid: int = 0
    pid_start: int = 0
    created: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    accel: str = ""
    accel_reason: str = ""
    mac: str = ""
    tap: str = ""
    network_id: str = ""
    address: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    pid INTEGER, pid_start INTEGER, created REAL, started_at REAL, finished_at REAL,
    accel TEXT, accel_reason TEXT, mac TEXT, tap TEXT, network_id TEXT, address TEXT,
    error TEXT, extra TEXT
);
"""
_COLS = ("id", "name", "spec", "status", "pid", "pid_start", "created", "started_at",
         "finished_at", "accel", "accel_reason", "mac", "tap", "network_id", "address",
         "error", "extra")  # fmt: skip


def _proc_start(pid: int) -> int:
    from cove.runtime.api import proc_start_time

    return proc_start_time(pid) or 0


def _alive(pid: int, start: int) -> bool:
    """Still the QEMU we started (not a recycled pid), and not a zombie."""
    from cove.sys.proc import alive

    return alive(pid, start)


class VMManager:
    def __init__(self, root: str, qemu: str = QEMU) -> None:
        from cove.state import Store

        self.root = root
        self.qemu = qemu
        self.dir = os.path.join(root, "vms")
        self.state = Store(root)
        self.db = self.state.db
        self.db.executescript(_SCHEMA)

    # -- rows -----------------------------------------------------------------------

    def _row(self, r: tuple[Any, ...]) -> VMRecord:
        d = dict(zip(_COLS, r, strict=True))
        return VMRecord(
            d["id"], d["name"], VMSpec.from_json(json.loads(d["spec"])), VMStatus(d["status"]),
            d["pid"] or 0, d["pid_start"] or 0, d["created"] or 0.0, d["started_at"] or 0.0,
            d["finished_at"] or 0.0, d["accel"] or "", d["accel_reason"] or "", d["mac"] or "",
            d["tap"] or "", d["network_id"] or "", d["address"] or "", d["error"] or "",
            json.loads(d["extra"] or "{}"),
        )  # fmt: skip

    def _values(self, rec: VMRecord) -> tuple[Any, ...]:
        return (rec.id, rec.name, json.dumps(rec.spec.to_json()), rec.status.value, rec.pid,
                rec.pid_start, rec.created, rec.started_at, rec.finished_at, rec.accel,
                rec.accel_reason, rec.mac, rec.tap, rec.network_id, rec.address, rec.error,
                json.dumps(rec.extra))  # fmt: skip

    def _insert(self, rec: VMRecord) -> None:
        import sqlite3

        try:
            self.db.execute(
                f"INSERT INTO vms ({','.join(_COLS)}) VALUES ({','.join('?' * len(_COLS))})",
                self._values(rec),
            )
        except sqlite3.IntegrityError as e:
            raise Conflict(f"the vm name {rec.name!r} is already in use") from e

    def _save(self, rec: VMRecord) -> None:
        """Update the row (never resurrect one ``rm`` deleted meanwhile)."""
        self.db.execute(
            f"UPDATE vms SET {', '.join(f'{c} = ?' for c in _COLS[1:])} WHERE id = ?",
            (*self._values(rec)[1:], rec.id),
        )

    @contextlib.contextmanager
    def _locked(self, ref: str) -> Iterator[VMRecord]:
        """The VM, fresh from the database, with its lifecycle lock held: two cove
        commands never start, stop or remove one VM at once."""
        from cove.sys.syscalls import flocked

        rec = self._get_raw(ref)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with flocked(os.path.join(self.dir, f".{rec.id[:20]}.lock")):
            yield self.reconcile(self._get_raw(rec.id))

    def _get_raw(self, ref: str) -> VMRecord:
        rows = self.db.execute(
            f"SELECT {','.join(_COLS)} FROM vms WHERE name = ? OR id = ?", (ref, ref)
        ).fetchall()
        if not rows and len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                f"SELECT {','.join(_COLS)} FROM vms WHERE substr(id, 1, ?) = ?", (len(ref), ref)
            ).fetchall()
        if not rows:
            raise NotFound(f"no such vm: {ref}")
        if len(rows) > 1:
            raise Conflict(f"vm id prefix {ref!r} is ambiguous")
        return self._row(rows[0])

    def get(self, ref: str) -> VMRecord:
        return self.reconcile(self._get_raw(ref))

    def all(self) -> list[VMRecord]:
        rows = self.db.execute(f"SELECT {','.join(_COLS)} FROM vms ORDER BY created").fetchall()
        return [self.reconcile(self._row(r)) for r in rows]

    def paths(self, rec: VMRecord) -> qcmd.Paths:
        return qcmd.Paths(os.path.join(self.dir, rec.id), os.path.join(RUN_DIR, rec.id[:20]))

    # -- reality ----------------------------------------------------------------------

    def reconcile(self, rec: VMRecord) -> VMRecord:
        """A VM whose QEMU is gone (killed, or the guest powered off) is stopped."""
        if rec.status in (VMStatus.RUNNING, VMStatus.PAUSED) and not _alive(rec.pid, rec.pid_start):
            self._after_exit(rec)
        return rec

    def _after_exit(self, rec: VMRecord, error: str = "") -> None:
        """Record that QEMU ``rec.pid`` is gone, and clean up after it; only if the row
        still names that QEMU (a parallel command may have started a new one)."""
        from cove.network import links

        cur = self.db.execute(
            "UPDATE vms SET status = ?, pid = 0, pid_start = 0, finished_at = ?, error = ? "
            "WHERE id = ? AND pid = ? AND pid_start = ?",
            (VMStatus.STOPPED.value, time.time(), error, rec.id, rec.pid, rec.pid_start),
        )
        if cur.rowcount:
            if rec.tap:
                links.delete(rec.tap)
            shutil.rmtree(self.paths(rec).run, ignore_errors=True)
        fresh = self._get_raw(rec.id)
        rec.status, rec.pid, rec.pid_start = fresh.status, fresh.pid, fresh.pid_start
        rec.finished_at, rec.error = fresh.finished_at, fresh.error

    def _cmd(self, rec: VMRecord, name: str, *, timeout: float = QMP_TIMEOUT,
             **args: Any) -> Any:  # fmt: skip
        """One QMP command; a QEMU that does not answer within ``timeout`` is an error,
        never a hang (a stopped or wedged QEMU must not freeze ``ls``, ``stop``...)."""
        import asyncio

        from qemu.qmp import ExecuteError, QMPClient

        if not rec.status.can_stop():
            raise StateError(f"vm {rec.name} is not running")

        async def run() -> Any:
            client = QMPClient(rec.name)
            await asyncio.wait_for(client.connect(self.paths(rec).qmp), timeout)
            try:
                return await asyncio.wait_for(client.execute(name, args or None), timeout)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), 5)

        try:
            return asyncio.run(run())
        except ExecuteError as e:
            raise CoveError(f"vm {rec.name}: {name}: {e.error.error.desc}") from e
        except TimeoutError as e:
            raise CoveError(f"vm {rec.name}: qemu did not answer {name} in {timeout:g} s") from e
        except Exception as e:
            raise CoveError(f"vm {rec.name}: cannot reach its qemu monitor: {e}") from e

    def _hmp(self, rec: VMRecord, line: str) -> None:
        """savevm, loadvm, delvm: they answer nothing when they worked."""
        out = str(self._cmd(rec, "human-monitor-command", timeout=SNAPSHOT_TIMEOUT,
                            **{"command-line": line}) or "").strip()  # fmt: skip
        if out:
            raise CoveError(f"vm {rec.name}: {line}: {out.splitlines()[-1]}")

    # -- create ----------------------------------------------------------------------

    def create(self, spec: VMSpec) -> VMRecord:
        from cove.vm import disks

        spec.validate()
        for f in (spec.iso, spec.kernel, spec.initrd, spec.disk_image, spec.cloud_init,
                  spec.ssh_key):  # fmt: skip
            if f and not os.path.isfile(f):
                raise NotFound(f"no such file: {f}")
        for attr in ("iso", "kernel", "initrd", "disk_image", "cloud_init", "ssh_key"):
            value = getattr(spec, attr)
            if value:
                setattr(spec, attr, os.path.abspath(value))
        spec.allow_backing = [os.path.abspath(p) for p in spec.allow_backing]
        if spec.disk_image:
            self._check_base(spec)
        rec = VMRecord(secrets.token_hex(32), spec.name, spec, created=time.time())
        rec.mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        paths = self.paths(rec)
        os.makedirs(paths.dir, mode=0o700)
        try:
            if spec.disk_image:
                assert spec.disk_format is not None  # set by _check_base
                disks.overlay(paths.disk, spec.disk_image, spec.disk_format)
                if spec.disk_size and spec.disk_size > disks.virtual_size(paths.disk):
                    disks.resize(paths.disk, spec.disk_size)
            elif spec.disk_size:
                disks.create(paths.disk, spec.disk_size)
            self._insert(rec)  # the name is taken from here on (UNIQUE)
            if spec.network not in ("user", "none"):
                self._lease(rec)
            self._seed(rec)
            self._save(rec)
        except BaseException:
            self._purge(rec)
            raise
        return rec

    def _check_base(self, spec: VMSpec) -> None:
        """Settle the base image's format (declared, or probed once here and recorded so it
        is never probed again) and refuse a backing chain that reaches files nobody named."""
        from cove.vm import disks

        assert spec.disk_image
        declared = spec.disk_format is not None
        fmt = spec.disk_format or disks.fmt(spec.disk_image)
        try:
            disks.check_chain(spec.disk_image, fmt, allowed=spec.allow_backing, own=self.dir)
        except InvalidSpec as e:
            if declared:
                raise
            raise InvalidSpec(
                f"{e}; its format was probed as {fmt}: --disk-format if it is not"
            ) from e
        spec.disk_format = fmt

    def _check_disk(self, rec: VMRecord) -> None:
        """At each start, the VM's disk chain again: a base image is the user's file and its
        header (its backing file) may have changed since create."""
        from cove.vm import disks

        allowed = [rec.spec.disk_image] if rec.spec.disk_image else []
        disks.check_chain(self.paths(rec).disk, "qcow2",
                          allowed=[*allowed, *rec.spec.allow_backing], own=self.dir)  # fmt: skip

    def _lease(self, rec: VMRecord) -> None:
        from cove.network.manager import NetworkManager

        rec.tap = "ctap" + rec.id[:10]
        n, lease = NetworkManager(self.root, self.db).lease_vm(
            rec.id, rec.name, rec.spec.network, rec.tap
        )
        rec.network_id, rec.address, rec.mac = n.id, lease.address, lease.mac

    def _network(self) -> Any:
        from cove.network.manager import NetworkManager

        return NetworkManager(self.root, self.db)

    def _seed(self, rec: VMRecord) -> None:
        """The NoCloud seed: the user's user-data as given, the hostname, the user and key,
        and, on a cove network, the static address cove leased."""
        spec = rec.spec
        net_cfg: bytes | None = None
        if rec.address:
            import ipaddress

            n = self._network().store.get(rec.network_id)
            prefix = ipaddress.IPv4Network(n.subnet).prefixlen
            net_cfg = (
                "version: 2\nethernets:\n  eth0:\n    match:\n"
                f'      macaddress: "{rec.mac}"\n    set-name: eth0\n'
                f'    addresses: ["{rec.address}/{prefix}"]\n'
                f'    routes: [{{to: "0.0.0.0/0", via: "{n.gateway}"}}]\n'
                f'    nameservers: {{addresses: ["{n.gateway}"]}}\n'
            ).encode()
        if not (spec.cloud_init or spec.ssh_key or spec.user or net_cfg):
            return
        from cove.vm import cloudinit

        keys: list[str] = []
        if spec.ssh_key:
            with open(spec.ssh_key) as f:
                keys = [ln.strip() for ln in f if ln.strip()]
        user_data = None
        if spec.cloud_init:
            with open(spec.cloud_init, "rb") as f:
                user_data = f.read()
        cloudinit.build_seed(
            self.paths(rec).seed,
            instance_id=f"cove-{rec.id[:12]}",
            hostname=rec.name,
            user=spec.user or ("cove" if keys and not user_data else None),
            ssh_keys=keys,
            user_data=user_data,
            network_config=net_cfg,
        )

    # -- start ------------------------------------------------------------------------

    def start(self, ref: str) -> VMRecord:
        with self._locked(ref) as rec:
            return self._start(rec)

    def _start(self, rec: VMRecord) -> VMRecord:
        """Launch QEMU; either the VM runs and is recorded, or nothing of the launch stays
        (no QEMU, tap or runtime directory), even on Ctrl-C."""
        from cove.vm import accel

        if not rec.status.can_start():
            raise StateError(f"vm {rec.name} is {rec.status.value}: cannot start it")
        spec = rec.spec
        paths = self.paths(rec)
        prev = rec.status
        self._kill_orphan(rec)
        verdict = accel.choose(spec.accel, self.root, spec.kernel, self.qemu)
        try:
            rec.accel, rec.accel_reason = verdict.accel, verdict.reason
            append_extra = ""
            if rec.address:
                import ipaddress

                nets = self._network()
                n = nets.store.get(rec.network_id)
                prefix = ipaddress.IPv4Network(n.subnet).prefixlen
                nets.plug_tap(n, rec.tap)
                append_extra = f"cove.ip={rec.address}/{prefix} cove.gw={n.gateway}"
            if os.path.exists(paths.disk):
                self._check_disk(rec)
            from cove.vm import qemuuser

            user = qemuuser.ensure()
            launch = qcmd.Launch(
                verdict.accel,
                rec.mac,
                tap=rec.tap or None,
                append_extra=append_extra,
                has_disk=os.path.exists(paths.disk),
                has_seed=os.path.exists(paths.seed),
                runas=user.name,
            )
            argv = qcmd.command(spec, paths, launch, qemu=self.qemu)
            shutil.rmtree(paths.run, ignore_errors=True)
            # /run/cove-vm itself: traversable (0711) but not listable, whatever the umask
            # (cove's is 077), or QEMU, no longer root, could not reach its own directory
            os.makedirs(RUN_DIR, mode=0o711, exist_ok=True)
            os.chmod(RUN_DIR, 0o711)
            os.mkdir(paths.run, 0o700)
            # screendump is the one file QEMU creates after it dropped root: in a directory
            # of its own, read back by cove without following links (see screenshot). The
            # runtime directory lets QEMU's group through (0710), to reach it, and nothing
            # more: the sockets in it are QEMU's anyway, listing it is still refused.
            os.chown(paths.run, 0, user.gid)
            os.chmod(paths.run, 0o710)
            os.mkdir(paths.screen_dir, 0o700)
            os.chown(paths.screen_dir, user.uid, user.gid)
            with open(paths.serial_log, "ab") as log:
                log.write(f"\n--- cove: vm {rec.name} started {time.ctime()} ---\n".encode())
            proc = self._launch(rec, argv)
            rec.pid, rec.pid_start = proc.pid, _proc_start(proc.pid)
            rec.status, rec.started_at, rec.error = VMStatus.RUNNING, time.time(), ""
            self._save(rec)
            try:
                status = self._cmd(rec, "query-status").get("status")
            except CoveError as e:
                if proc.poll() is not None:  # QEMU's own reason beats "cannot reach"
                    raise CoveError(self._qemu_failed(rec, proc.returncode)) from e
                raise
            if status not in ("running", "prelaunch"):
                raise CoveError(f"vm {rec.name}: qemu started but the vm is {status}")
        except BaseException:
            self._abort_start(rec, prev)
            raise
        return rec

    def _launch(self, rec: VMRecord, argv: list[str]) -> subprocess.Popen[bytes]:
        """QEMU detached by cove (its sandbox forbids -daemonize's fork and setsid): its own
        session, output to qemu.log; returns once its pidfile and QMP socket exist (QMP
        then answers when the machine is built) or fails with QEMU's last error line."""
        paths = self.paths(rec)
        with open(paths.qemu_log, "ab") as log:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)  # fmt: skip
            except OSError as e:
                raise CoveError(f"vm {rec.name}: qemu did not start: {e}") from e
        deadline = time.monotonic() + 60
        while not (os.path.exists(paths.pidfile) and os.path.exists(paths.qmp)):
            if proc.poll() is not None:
                raise CoveError(self._qemu_failed(rec, proc.returncode))
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise CoveError(f"vm {rec.name}: qemu did not start in 60 s; see {paths.qemu_log}")
            time.sleep(0.02)
        return proc

    def _qemu_failed(self, rec: VMRecord, code: int | None) -> str:
        try:
            with open(self.paths(rec).qemu_log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            tail = ""
        lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
        return f"vm {rec.name}: qemu failed (exit {code}): " + (lines[-1] if lines else "no output")

    def _pidfile_pid(self, rec: VMRecord) -> int:
        try:
            with open(self.paths(rec).pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 0

    def _kill_orphan(self, rec: VMRecord) -> None:
        """A QEMU that a killed cove launched but never recorded: its pidfile names it, its
        command line names this VM's runtime directory."""
        pid = self._pidfile_pid(rec)
        if not pid or (pid == rec.pid and _alive(rec.pid, rec.pid_start)):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                mine = self.paths(rec).run.encode() in f.read()
        except OSError:
            return
        if mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _abort_start(self, rec: VMRecord, prev: VMStatus) -> None:
        from cove.network import links

        if _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        self._kill_orphan(rec)
        if rec.tap:
            links.delete(rec.tap)
        shutil.rmtree(self.paths(rec).run, ignore_errors=True)
        rec.status, rec.pid, rec.pid_start = prev, 0, 0
        rec.accel = rec.accel_reason = ""
        self._save(rec)

    # -- stop, kill, restart, pause -------------------------------------------------------

    def stop(self, ref: str, timeout: float = 60.0) -> tuple[VMRecord, bool]:
        """ACPI power button, then (after ``timeout``) QEMU is made to quit; whether the
        guest went by itself."""
        with self._locked(ref) as rec:
            return rec, self._stop(rec, timeout)

    def _stop(self, rec: VMRecord, timeout: float) -> bool:
        if not rec.status.can_stop():
            raise StateError(f"vm {rec.name} is {rec.status.value}: cannot stop it")
        clean = False
        with contextlib.suppress(CoveError):
            if rec.status == VMStatus.PAUSED:
                self._cmd(rec, "cont")  # a paused guest cannot see the button
            self._cmd(rec, "system_powerdown")
            clean = self._wait_exit(rec, timeout)
        if not clean:
            self._terminate(rec)
        self._after_exit(rec, "" if clean else f"forced off after {timeout:g} s")
        return clean

    def _wait_exit(self, rec: VMRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(rec.pid, rec.pid_start):
                return True
            time.sleep(0.1)
        return not _alive(rec.pid, rec.pid_start)

    def _terminate(self, rec: VMRecord) -> None:
        with contextlib.suppress(CoveError, StateError):
            self._cmd(rec, "quit", timeout=5)
        if not self._wait_exit(rec, 5) and _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            self._wait_exit(rec, 5)

    def kill(self, ref: str) -> VMRecord:
        with self._locked(ref) as rec:
            self._kill(rec)
            return rec

    def _kill(self, rec: VMRecord) -> None:
        if not rec.status.can_stop():
            raise StateError(f"vm {rec.name} is {rec.status.value}: cannot kill it")
        if _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        self._wait_exit(rec, 5)
        self._after_exit(rec, "killed")

    def restart(self, ref: str, timeout: float = 60.0) -> VMRecord:
        with self._locked(ref) as rec:
            if rec.status.can_stop():
                self._stop(rec, timeout)
            return self._start(rec)

    def pause(self, ref: str) -> VMRecord:
        with self._locked(ref) as rec:
            if not rec.status.can_pause():
                raise StateError(f"vm {rec.name} is {rec.status.value}: cannot pause it")
            self._cmd(rec, "stop")
            rec.status = VMStatus.PAUSED
            self._save(rec)
            return rec

    def resume(self, ref: str) -> VMRecord:
        with self._locked(ref) as rec:
            if not rec.status.can_resume():
                raise StateError(f"vm {rec.name} is {rec.status.value}: cannot resume it")
            self._cmd(rec, "cont")
            rec.status = VMStatus.RUNNING
            self._save(rec)
            return rec

    def query_status(self, ref: str) -> str:
        rec = self.get(ref)
        return str(self._cmd(rec, "query-status").get("status", ""))

    # -- remove ----------------------------------------------------------------------------

    def remove(self, ref: str, *, force: bool = False) -> str:
        with self._locked(ref) as rec:
            if rec.status.can_stop():
                if not force:
                    raise Conflict(f"vm {rec.name} is {rec.status.value}: stop it first or use -f")
                self._kill(rec)
            self._purge(rec)
            return rec.name

    def _purge(self, rec: VMRecord) -> None:
        from cove.network import links

        if _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            self._wait_exit(rec, 5)
        self._kill_orphan(rec)
        if rec.tap:
            links.delete(rec.tap)
        with contextlib.suppress(Exception):
            self._network().detach(rec.id)
        shutil.rmtree(self.paths(rec).dir, ignore_errors=True)
        shutil.rmtree(self.paths(rec).run, ignore_errors=True)
        self.db.execute("DELETE FROM vms WHERE id = ?", (rec.id,))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, f".{rec.id[:20]}.lock"))

    def remove_all(self) -> list[str]:
        return [self.remove(r.id, force=True) for r in self.all()]

    # -- inspect ---------------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        rec = self.get(ref)
        paths = self.paths(rec)
        qmp_status = ""
        if rec.status.can_stop():
            with contextlib.suppress(CoveError, StateError):
                qmp_status = str(self._cmd(rec, "query-status").get("status", ""))
        spec = rec.spec
        return {
            "Id": rec.id,
            "Name": rec.name,
            "Created": _iso(rec.created),
            "State": {
                "Status": rec.status.value,
                "Running": rec.status == VMStatus.RUNNING,
                "Paused": rec.status == VMStatus.PAUSED,
                "Pid": rec.pid,
                "QMPStatus": qmp_status,
                "StartedAt": _iso(rec.started_at),
                "FinishedAt": _iso(rec.finished_at),
                "Error": rec.error,
            },
            "Accelerator": {"Name": rec.accel, "Reason": rec.accel_reason},
            "Boot": spec.boot,
            "Machine": "q35",
            "Memory": spec.memory_mib * (1 << 20),
            "Cpus": spec.cpus,
            "Disk": {"Path": paths.disk, "Base": spec.disk_image} if os.path.exists(paths.disk)
            else None,
            "Iso": spec.iso,
            "Kernel": {"Path": spec.kernel, "Initrd": spec.initrd, "Append": spec.append}
            if spec.kernel else None,
            "CloudInit": paths.seed if os.path.exists(paths.seed) else None,
            "Network": {"Mode": spec.network, "MacAddress": rec.mac, "IPAddress": rec.address,
                        "Tap": rec.tap, "Ports": [str(p) for p in spec.ports]},
            "Display": spec.display,
            "Paths": {"Qmp": paths.qmp, "Console": paths.console, "SerialLog": paths.serial_log,
                      "Pidfile": paths.pidfile, "Dir": paths.dir},
        }  # fmt: skip

    # -- console, logs, screenshot -----------------------------------------------------------

    def console_socket(self, ref: str) -> str:
        rec = self.get(ref)
        if not rec.status.can_stop():
            raise StateError(f"vm {rec.name} is not running")
        return self.paths(rec).console

    def serial_log(self, ref: str) -> tuple[VMRecord, str]:
        rec = self.get(ref)
        return rec, self.paths(rec).serial_log

    def screenshot(self, ref: str, dest: str) -> None:
        rec = self.get(ref)
        if rec.spec.display == "none":
            raise InvalidSpec(f"vm {rec.name} has no display: create it with --display vnc")
        # QEMU (as its own user) writes into its screen directory; a QEMU the guest took
        # over could plant a link there, so the file is opened without following one and
        # must be a regular file: cove never copies a file QEMU could not read itself
        import stat

        screen = self.paths(rec).screen_dir
        if not os.path.isdir(screen):  # a VM started before QEMU ran unprivileged
            screen = self.paths(rec).run
        tmp = os.path.join(screen, "screendump.png")
        try:
            self._cmd(rec, "screendump", filename=tmp, format="png")
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                raise CoveError(f"vm {rec.name}: screendump {tmp}: {e.strerror}") from e
            with open(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise CoveError(f"vm {rec.name}: screendump {tmp} is not a regular file")
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- snapshots and disks ---------------------------------------------------------------------

    def _disk(self, rec: VMRecord) -> str:
        disk = self.paths(rec).disk
        if not os.path.exists(disk):
            raise InvalidSpec(f"vm {rec.name} has no disk")
        return disk

    def snapshot_create(self, ref: str, name: str) -> None:
        from cove.vm import disks

        disks.check_snapshot_name(name)
        with self._locked(ref) as rec:
            disk = self._disk(rec)
            if any(s["name"] == name for s in disks.snapshot_list(disk)):
                raise Conflict(f"vm {rec.name} already has a snapshot {name!r}")
            if rec.status.can_stop():
                self._hmp(rec, f"savevm {name}")  # disks and device state, while it runs
            else:
                disks.snapshot_create(disk, name)

    def snapshots(self, ref: str) -> list[Any]:
        from cove.vm import disks

        rec = self.get(ref)
        return disks.snapshot_list(self._disk(rec))

    def snapshot_restore(self, ref: str, name: str) -> None:
        from cove.vm import disks

        with self._locked(ref) as rec:
            disk = self._disk(rec)
            snap = next((s for s in disks.snapshot_list(disk) if s["name"] == name), None)
            if snap is None:
                raise NotFound(f"vm {rec.name} has no snapshot {name!r}")
            if not rec.status.can_stop():
                disks.snapshot_apply(disk, name)
                return
            if not snap["vm_state_size"]:
                raise InvalidSpec(
                    f"snapshot {name!r} of vm {rec.name} holds no vm state (it was taken "
                    "while stopped): stop the vm to restore it"
                )
            try:
                self._hmp(rec, f"loadvm {name}")
            finally:
                # loadvm stops the VM first and resumes it only on success
                with contextlib.suppress(CoveError):
                    if (
                        rec.status == VMStatus.RUNNING
                        and self._cmd(rec, "query-status").get("status") != "running"
                    ):
                        self._cmd(rec, "cont")

    def snapshot_remove(self, ref: str, name: str) -> None:
        from cove.vm import disks

        with self._locked(ref) as rec:
            disk = self._disk(rec)
            if not any(s["name"] == name for s in disks.snapshot_list(disk)):
                raise NotFound(f"vm {rec.name} has no snapshot {name!r}")
            if rec.status.can_stop():
                self._hmp(rec, f"delvm {name}")
            else:
                disks.snapshot_delete(disk, name)

    def disk_resize(self, ref: str, size: int) -> None:
        from cove.vm import disks

        with self._locked(ref) as rec:
            disk = self._disk(rec)
            if not rec.status.can_stop():
                disks.resize(disk, size)
                return
            size = -(-size // 512) * 512
            if size < disks.virtual_size(disk):
                raise Conflict(f"vm {rec.name}: a running vm's disk only grows")
            self._cmd(rec, "block_resize", device="disk0", size=size)

    # -- ssh --------------------------------------------------------------------------------

    def ssh_argv(self, ref: str, command: list[str]) -> list[str]:
        rec = self.get(ref)
        spec = rec.spec
        if not spec.ssh_key:
            raise InvalidSpec(f"vm {rec.name} has no ssh key: create it with --ssh-key")
        fwd = [p for p in spec.ports if p.guest_port == 22 and p.proto == "tcp"]
        if not fwd and not rec.address:
            raise InvalidSpec(f"vm {rec.name} forwards no port to 22: create it with -p PORT:22")
        private = spec.ssh_key.removesuffix(".pub")
        host, port = (fwd[0].host_ip, fwd[0].host_port) if fwd else (rec.address, 22)
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return ["ssh", "-i", private, "-p", str(port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                f"{spec.user or 'cove'}@{host}", *command]  # fmt: skip


def _iso(t: float) -> str:
    if not t:
        return "0001-01-01T00:00:00Z"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
