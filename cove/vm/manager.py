"""``cove vm``: QEMU virtual machines with a lifecycle, like containers.

Each VM is a row in the state database and a directory ``<root>/vms/<id>/`` holding
its disk, its cloud-init seed, and, while it runs, the QMP socket, the serial console
socket (with its log) and the pidfile of its detached, sandboxed QEMU. Every control action
goes through QMP (``qemu.qmp``); the state is reconciled with the kernel whenever it
is read: a QEMU killed by hand or a guest powered off from inside shows as stopped.

``VMManager`` is the facade the CLI calls; the work is in ``vmstore`` (rows, paths),
``provision`` (disk, lease and seed at create), ``process`` (QEMU's launch, stop, kill,
reconciliation; QMP through ``qmp``) and ``snapshots`` (snapshots and resize of the disk).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

from cove.errors import Conflict, CoveError, HostFailure, InvalidSpec, StateError
from cove.spec.vm import VMSpec
from cove.vm import provision
from cove.vm import qemu as qcmd
from cove.vm.process import QemuProcess
from cove.vm.qmp import QMP_TIMEOUT, SNAPSHOT_TIMEOUT
from cove.vm.snapshots import VMDisks
from cove.vm.vmstore import RUN_DIR, VMRecord, VMStatus, VMStore

QEMU = qcmd.QEMU

__all__ = ["QEMU", "QMP_TIMEOUT", "RUN_DIR", "SNAPSHOT_TIMEOUT", "VMManager", "VMRecord",
           "VMStatus"]  # fmt: skip


class VMManager:
    def __init__(self, root: str, qemu: str = QEMU) -> None:
        self.root = root
        self.qemu = qemu
        self.store = VMStore(root)
        self.dir = self.store.dir
        self.state = self.store.state
        self.db = self.store.db
        self.proc = QemuProcess(self.store, qemu)
        self.disks = VMDisks(self.proc)

    def get(self, ref: str) -> VMRecord:
        return self.proc.get(ref)

    def all(self) -> list[VMRecord]:
        return [self.proc.reconcile(r) for r in self.store.all()]

    def paths(self, rec: VMRecord) -> qcmd.Paths:
        return self.store.paths(rec)

    def reconcile(self, rec: VMRecord) -> VMRecord:
        return self.proc.reconcile(rec)

    # -- create ----------------------------------------------------------------------

    def create(self, spec: VMSpec) -> VMRecord:
        return provision.create(self.store, spec, self.proc.purge)

    # -- start, stop, kill, restart, pause -------------------------------------------------

    def start(self, ref: str) -> VMRecord:
        with self.proc.locked(ref) as rec:
            return self.proc.start(rec)

    def stop(self, ref: str, timeout: float = 60.0) -> tuple[VMRecord, bool]:
        """ACPI power button, then (after ``timeout``) QEMU is made to quit; whether the
        guest went by itself."""
        with self.proc.locked(ref) as rec:
            return rec, self.proc.stop(rec, timeout)

    def kill(self, ref: str) -> VMRecord:
        with self.proc.locked(ref) as rec:
            self.proc.kill(rec)
            return rec

    def restart(self, ref: str, timeout: float = 60.0) -> VMRecord:
        with self.proc.locked(ref) as rec:
            if rec.status.can_stop():
                self.proc.stop(rec, timeout)
            return self.proc.start(rec)

    def pause(self, ref: str) -> VMRecord:
        with self.proc.locked(ref) as rec:
            if not rec.status.can_pause():
                raise StateError(f"vm {rec.name} is {rec.status.value}: cannot pause it")
            self.proc.cmd(rec, "stop")
            rec.status = VMStatus.PAUSED
            self.store.save(rec)
            return rec

    def resume(self, ref: str) -> VMRecord:
        with self.proc.locked(ref) as rec:
            if not rec.status.can_resume():
                raise StateError(f"vm {rec.name} is {rec.status.value}: cannot resume it")
            self.proc.cmd(rec, "cont")
            rec.status = VMStatus.RUNNING
            self.store.save(rec)
            return rec

    def query_status(self, ref: str) -> str:
        rec = self.get(ref)
        return str(self.proc.cmd(rec, "query-status").get("status", ""))

    # -- remove ----------------------------------------------------------------------------

    def remove(self, ref: str, *, force: bool = False) -> str:
        with self.proc.locked(ref) as rec:
            if rec.status.can_stop():
                if not force:
                    raise Conflict(f"vm {rec.name} is {rec.status.value}: stop it first or use -f")
                self.proc.kill(rec)
            self.proc.purge(rec)
            return rec.name

    def remove_all(self) -> list[str]:
        return [self.remove(r.id, force=True) for r in self.all()]

    # -- inspect ---------------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        rec = self.get(ref)
        paths = self.store.paths(rec)
        qmp_status = ""
        if rec.status.can_stop():
            with contextlib.suppress(CoveError, StateError):
                qmp_status = str(self.proc.cmd(rec, "query-status").get("status", ""))
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
            "Machine": _arch(rec.spec.arch).machine,
            "Architecture": _arch(rec.spec.arch).name,
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
        return self.store.paths(rec).console

    def serial_log(self, ref: str) -> tuple[VMRecord, str]:
        rec = self.get(ref)
        return rec, self.store.paths(rec).serial_log

    def screenshot(self, ref: str, dest: str) -> None:
        rec = self.get(ref)
        if rec.spec.display == "none":
            raise InvalidSpec(f"vm {rec.name} has no display: create it with --display vnc")
        # QEMU (as its own user) writes into its screen directory; a QEMU the guest took
        # over could plant a link there, so the file is opened without following one and
        # must be a regular file: cove never copies a file QEMU could not read itself
        import stat

        screen = self.store.paths(rec).screen_dir
        if not os.path.isdir(screen):  # a VM started before QEMU ran unprivileged
            screen = self.store.paths(rec).run
        tmp = os.path.join(screen, "screendump.png")
        try:
            self.proc.cmd(rec, "screendump", filename=tmp, format="png")
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                raise HostFailure(f"vm {rec.name}: screendump {tmp}: {e.strerror}") from e
            with open(fd, "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise HostFailure(f"vm {rec.name}: screendump {tmp} is not a regular file")
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- snapshots and disks ---------------------------------------------------------------------

    def snapshot_create(self, ref: str, name: str) -> None:
        self.disks.snapshot_create(ref, name)

    def snapshots(self, ref: str) -> list[Any]:
        return self.disks.snapshots(ref)

    def snapshot_restore(self, ref: str, name: str) -> None:
        self.disks.snapshot_restore(ref, name)

    def snapshot_remove(self, ref: str, name: str) -> None:
        self.disks.snapshot_remove(ref, name)

    def disk_resize(self, ref: str, size: int) -> None:
        self.disks.disk_resize(ref, size)

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


def _arch(name: str) -> Any:
    from cove.vm import arch

    return arch.parse(name) if name else arch.host()
