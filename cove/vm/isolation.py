"""The VM isolation driver of ``run --vm`` (the Protocol is ``cove.containers.isolation``).

The record's ``pid`` is the QEMU process and its ``monitor_pid`` the supervisor
(``cove.vm.run``), which passes signals on to the command in the guest through the agent.
Verbs that work on namespaces, cgroups or an upper directory have none to work on.
"""

from __future__ import annotations

import os
import signal

from cove.state import Record

# the verbs that apply to a vm run; the others (start, restart, pause, unpause, exec, cp,
# diff, export, commit, top, network connect/disconnect) need the namespaces driver
_VERBS = frozenset({"stop", "kill", "wait", "rm", "logs", "inspect", "rename", "attach"})


class VM:
    kind = "vm"

    def supports(self, verb: str) -> bool:
        return verb in _VERBS

    def signal(self, rec: Record, sig: int) -> None:
        # SIGKILL ends the QEMU itself; any other signal is the command's, through the
        # supervisor (which forwards it into the guest)
        os.kill(rec.pid if sig == signal.SIGKILL else rec.monitor_pid, sig)

    def pause(self, rec: Record, frozen: bool) -> None:
        from cove.errors import Unsupported

        raise Unsupported(f"pause does not apply to {rec.name}: it runs in a vm (--vm)")
