"""The VM isolation driver of ``run --vm`` (the Protocol is ``cove.containers.isolation``).

The record's ``pid`` is the QEMU process and its ``monitor_pid`` the supervisor
(``cove.vm.run.VMRun``: the ``cove run`` process itself, or with -d a daemon forked from
it), which passes signals on to the command in the guest through the agent. A vm run is
started once, by the command that created it: ``start`` applies only to a run this driver
created in this process. Verbs that work on namespaces, cgroups or an upper directory have
none to work on.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from cove.errors import Unsupported
from cove.state import Record

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine
    from cove.vm.run import VMRun

# the verbs that apply to a vm run; the others (start, restart, pause, unpause, exec, cp,
# diff, export, commit, top, network connect/disconnect) need the namespaces driver
_VERBS = frozenset({"stop", "kill", "wait", "rm", "logs", "inspect", "rename", "attach"})


class VM:
    kind = "vm"

    def __init__(self) -> None:
        self._created: dict[str, VMRun] = {}  # runs created here and not started yet

    def supports(self, verb: str) -> bool:
        return verb in _VERBS

    def create(self, ce: ContainerEngine, opts: Any, *, op: str = "", image: Any = None) -> str:
        # a vm run's record holds no op marker past its create (``op`` is the namespaces
        # driver's hand-off to its monitor); its image is always the run's own
        from cove.vm.run import VMRun, VMRunOptions

        run = VMRun(ce, opts, VMRunOptions.of(opts))
        cid = run.create()
        self._created[cid] = run
        return cid

    def _take(self, rec: Record) -> VMRun:
        run = self._created.pop(rec.id, None)
        if run is None:
            raise Unsupported(f"start does not apply to {rec.name}: it runs in a vm (--vm)")
        return run

    def start(self, ce: ContainerEngine, rec: Record, *, attach_fd: int = -1, op: str) -> Record:
        self._take(rec).detach()
        return ce.store.get(rec.id)

    def run(self, ce: ContainerEngine, opts: Any) -> int:
        cid = self.create(ce, opts)
        return self._take(ce.store.get(cid)).foreground()

    def signal(self, rec: Record, sig: int) -> None:
        # SIGKILL ends the QEMU itself; any other signal is the command's, through the
        # supervisor (which forwards it into the guest)
        os.kill(rec.pid if sig == signal.SIGKILL else rec.monitor_pid, sig)

    def pause(self, ce: ContainerEngine, rec: Record, frozen: bool) -> None:
        raise Unsupported(f"pause does not apply to {rec.name}: it runs in a vm (--vm)")

    def cleanup(self, ce: ContainerEngine, rec: Record) -> None:
        from cove.vm.run import release

        release(ce, rec.id)
