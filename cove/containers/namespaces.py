"""The namespaces isolation driver: the OCI runtime (``cove.runtime``) and network attach.

The command is ``rec.pid`` (pid 1 of the container's pid namespace), its cgroup
``cove/<id>``; a started container is supervised by its monitor (``start.hand_off``), a
foreground run by the ``cove run`` process itself (``run.run_foreground``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cove.containers import run as _run
from cove.containers.isolation import NAMESPACES
from cove.containers.netattach import network_down
from cove.errors import StateError, best_effort

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine
    from cove.state import Record


class Namespaces:
    kind = NAMESPACES

    def supports(self, verb: str) -> bool:
        return True

    def create(self, ce: ContainerEngine, opts: Any, *, op: str = "", image: Any = None) -> str:
        # create and start are imported by the verbs that use them: ps, inspect, logs and
        # the other read-only verbs register this driver too (issue 20)
        from cove.containers import create as _create

        return _create.create(ce, opts, op=op, image=image)

    def start(self, ce: ContainerEngine, rec: Record, *, attach_fd: int = -1, op: str) -> Record:
        from cove.containers import start as _start

        return _start.hand_off(ce, rec, attach_fd=attach_fd)

    def run(self, ce: ContainerEngine, opts: Any) -> int:
        # restart policies, health checks and log options need the monitor (it outlives
        # this command); any other run is the lean path, this process the container's parent
        if (opts.restart or "no") != "no" or opts.health_cmd or opts.log_opts:
            return _run.run_attached(ce, opts)
        return _run.run_foreground(ce, opts)

    def signal(self, rec: Record, sig: int) -> None:
        os.kill(rec.pid, sig)

    def pause(self, ce: ContainerEngine, rec: Record, frozen: bool) -> None:
        # the runtime alone knows the container's cgroup (recorded in its state.json)
        from cove.runtime import control

        state_dir = ce.runtime().state_dir
        if frozen:
            control.pause(state_dir, rec.id)
            return
        try:
            control.resume(state_dir, rec.id)
        except StateError:
            pass  # its process is gone (killed while frozen): nothing left to thaw

    def cleanup(self, ce: ContainerEngine, rec: Record) -> None:
        from cove.containers.sweep import destroy_runtime

        # a failure keeps runtime/<id>: a sweep retries
        with best_effort(f"destroy the runtime state of container {rec.id}", __name__):
            destroy_runtime(ce.root, rec.id)
        network_down(ce.root, ce.store.db, rec.id)
