"""``ContainerEngine``: the facade over the container verbs, one module each (create,
start, run, stop, remove, network, inspect, attach, exec, files) and reconciliation
(reconcile.py). The verbs are functions taking the engine; callers keep one object.

Kept apart from ``cove.engine`` so that image-only commands never import the runtime.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from cove.containers import inspect as _inspect
from cove.containers import names as _names
from cove.containers import network as _network
from cove.containers import reconcile as _reconcile
from cove.containers import remove as _remove
from cove.containers import run as _run
from cove.containers import stop as _stop

# names that callers import from here (the CLI, vm/run, check); their homes are the verbs
from cove.containers.attach import attach_stream, connect_attach, forward_signals_to
from cove.containers.isolation import driver, for_options, register
from cove.containers.names import container_name
from cove.containers.namespaces import Namespaces
from cove.containers.record import docker_config, log_config
from cove.engine import Engine
from cove.state import OP_START, Record, Store

__all__ = [
    "ContainerEngine",
    "attach_stream",
    "connect_attach",
    "container_name",
    "docker_config",
    "forward_signals_to",
    "log_config",
]


register(Namespaces())  # the default driver; faces register the VM one (containers never import vm)


class ContainerEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root = engine.root
        self.store = Store(engine.root)

    # -- plumbing -----------------------------------------------------------

    def runtime(self) -> Any:
        from cove.runtime.api import Runtime

        return Runtime(os.path.join(self.root, "runtime"), os.path.join(self.root, "cache"))

    def cdir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    def log_path(self, cid: str) -> str:
        return os.path.join(self.cdir(cid), f"{cid}-json.log")

    def volumes(self) -> Any:
        from cove.containers.volumes import Volumes

        return Volumes(self.root, self.store)

    def get(self, ref: str) -> Record:
        return self.reconcile(self.store.get(ref))

    def all(self) -> list[Record]:
        return _reconcile.reconcile_all(self)

    # -- reconciliation -------------------------------------------------------

    def reconcile(self, rec: Record, *, settle: float = 2.0) -> Record:
        return _reconcile.reconcile(self, rec, settle=settle)

    def purge(self, rec: Record) -> None:
        """Every trace of a container, whatever its state (a run's own failure path)."""
        _reconcile.purge(self, rec)

    # -- the verbs ------------------------------------------------------------

    def create(self, opts: Any, *, op: str = "", image: Any = None) -> str:
        return for_options(opts).create(self, opts, op=op, image=image)

    def image_for_run(self, opts: Any) -> Any:
        """The image ``opts`` names, pulled as ``--pull`` says (the caller holds the pin)."""
        from cove.containers import create as _create  # off the read-only verbs' imports

        return _create.image_for_run(self, opts)

    def rename(self, ref: str, new: str) -> None:
        _names.rename(self, ref, new)

    def start(self, ref: str, *, attach_fd: int = -1, op: str = OP_START) -> Record:
        from cove.containers import start as _start  # off the read-only verbs' imports

        return _start.start(self, ref, attach_fd=attach_fd, op=op)

    def run(self, opts: Any) -> int:
        """``docker run`` without -d, through the driver ``opts`` names; the exit code."""
        return _run.run(self, opts)

    def run_foreground(self, opts: Any) -> int:
        return _run.run_foreground(self, opts)

    def run_captured(self, cid: str, echo: Callable[[int, bytes], None]) -> int:
        return _run.run_captured(self, cid, echo)

    def run_detached(self, opts: Any) -> str:
        return _run.run_detached(self, opts)

    def run_attached(self, opts: Any) -> int:
        return _run.run_attached(self, opts)

    def stop(self, ref: str, *, timeout: float | None = None, sig: int | None = None) -> Record:
        return _stop.stop(self, ref, timeout=timeout, sig=sig)

    def kill(self, ref: str, sig: int = signal.SIGKILL) -> Record:
        return _stop.kill(self, ref, sig)

    def wait(self, ref: str, *, after: float = 0.0, condition: str = "") -> int:
        return _stop.wait(self, ref, after=after, condition=condition)

    def restart(self, ref: str, *, timeout: float | None = None) -> Record:
        return _stop.restart(self, ref, timeout=timeout)

    def pause(self, ref: str) -> Record:
        return _stop.pause(self, ref)

    def unpause(self, ref: str) -> Record:
        return _stop.unpause(self, ref)

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> str:
        return _remove.remove(self, ref, force=force, volumes=volumes)

    def discard(self, rec: Record, *, volumes: bool) -> None:
        _remove.discard(self, rec, volumes=volumes)

    def prune(self, only: Callable[[Record], bool] | None = None) -> list[str]:
        return _remove.prune(self, only)

    def networks(self) -> Any:
        return _network.networks(self)

    def connect(self, net_ref: str, ref: str, *, aliases: list[str], ip: str | None = None) -> None:
        _network.connect(self, net_ref, ref, aliases=aliases, ip=ip)

    def disconnect(self, net_ref: str, ref: str) -> None:
        _network.disconnect(self, net_ref, ref)

    def network_users(self) -> dict[str, str]:
        return _network.network_users(self)

    def processes(self, rec: Record) -> list[int]:
        """The host pids of every process in the container (``top``); none once it ended."""
        from cove.errors import NotFound
        from cove.runtime import control

        driver(rec, "top")  # a vm's processes are the guest's: refused
        try:
            return control.ps(self.runtime().state_dir, rec.id)
        except NotFound:  # no runtime state: it ended (or never ran)
            return []

    def inspect(self, ref: str) -> dict[str, Any]:
        return _inspect.inspect(self, ref)

    def inspect_record(self, rec: Record) -> dict[str, Any]:
        return _inspect.inspect_record(self, rec)

    # -- reads shared with exec and the file verbs ----------------------------

    def oci_spec(self, rec: Record) -> Any:
        return _inspect.oci_spec(self, rec)

    def layers_top_first(self, rec: Record) -> list[str]:
        return _inspect.layers_top_first(self, rec)

    def id_shift(self, rec: Record) -> tuple[int, int]:
        return _inspect.id_shift(self, rec)
