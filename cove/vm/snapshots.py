"""A ``cove vm``'s disk while it exists: snapshots (qemu-img on a stopped VM, savevm /
loadvm / delvm over QMP on a running one, which keep its device state too) and growing it."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from cove.errors import Conflict, CoveError, InvalidSpec, NotFound
from cove.vm.process import QemuProcess
from cove.vm.vmstore import VMRecord, VMStatus


class VMDisks:
    def __init__(self, proc: QemuProcess) -> None:
        self.proc = proc

    def _disk(self, rec: VMRecord) -> str:
        disk = self.proc.store.paths(rec).disk
        if not os.path.exists(disk):
            raise InvalidSpec(f"vm {rec.name} has no disk")
        return disk

    def snapshot_create(self, ref: str, name: str) -> None:
        from cove.vm import disks

        disks.check_snapshot_name(name)
        with self.proc.locked(ref) as rec:
            disk = self._disk(rec)
            if any(s["name"] == name for s in disks.snapshot_list(disk)):
                raise Conflict(f"vm {rec.name} already has a snapshot {name!r}")
            if rec.status.can_stop():
                self.proc.hmp(rec, f"savevm {name}")  # disks and device state, while it runs
            else:
                disks.snapshot_create(disk, name)

    def snapshots(self, ref: str) -> list[Any]:
        from cove.vm import disks

        rec = self.proc.get(ref)
        return disks.snapshot_list(self._disk(rec))

    def snapshot_restore(self, ref: str, name: str) -> None:
        from cove.vm import disks

        with self.proc.locked(ref) as rec:
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
                self.proc.hmp(rec, f"loadvm {name}")
            finally:
                # loadvm stops the VM first and resumes it only on success
                with contextlib.suppress(CoveError):
                    if (
                        rec.status == VMStatus.RUNNING
                        and self.proc.cmd(rec, "query-status").get("status") != "running"
                    ):
                        self.proc.cmd(rec, "cont")

    def snapshot_remove(self, ref: str, name: str) -> None:
        from cove.vm import disks

        with self.proc.locked(ref) as rec:
            disk = self._disk(rec)
            if not any(s["name"] == name for s in disks.snapshot_list(disk)):
                raise NotFound(f"vm {rec.name} has no snapshot {name!r}")
            if rec.status.can_stop():
                self.proc.hmp(rec, f"delvm {name}")
            else:
                disks.snapshot_delete(disk, name)

    def disk_resize(self, ref: str, size: int) -> None:
        from cove.vm import disks

        with self.proc.locked(ref) as rec:
            disk = self._disk(rec)
            if not rec.status.can_stop():
                disks.resize(disk, size)
                return
            size = -(-size // 512) * 512
            if size < disks.virtual_size(disk):
                raise Conflict(f"vm {rec.name}: a running vm's disk only grows")
            self.proc.cmd(rec, "block_resize", device="disk0", size=size)
