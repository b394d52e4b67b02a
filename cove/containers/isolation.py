"""Isolation drivers: what kind of sandbox a container's process runs in.

A container's record names its driver (``HostConfig.Isolation``: empty for namespaces,
``vm`` for ``run --vm``); a run's options name it before there is a record
(``RunOptions.isolation``). The verbs keep Docker's rules (states, conflicts, the op
markers) and hand the driver what differs between sandboxes: making the container, starting
it under a supervisor, a foreground run, where a signal goes, how the process is frozen, and
what must be released when the container goes. A verb the driver has nothing to work on
(``exec`` in a VM) is refused by the lookup (``driver(rec, verb)``), before anything changes.

The namespaces driver is ``cove.containers.namespaces`` (the OCI runtime and network attach),
registered by the engine; the VM driver is ``cove.vm.isolation`` (``vm`` sits above
``containers``), registered by each face before any verb runs, so this package never imports
``vm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from cove.errors import Unsupported

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine
    from cove.state import Record

NAMESPACES = "namespaces"


class Isolation(Protocol):
    kind: str

    def supports(self, verb: str) -> bool:
        """Whether ``verb`` (as the CLI names it: "pause", "network connect") applies."""
        ...

    def create(self, ce: ContainerEngine, opts: Any, *, op: str = "", image: Any = None) -> str:
        """Make the container from run options: its record (with ``op`` kept, if given) and
        whatever its sandbox needs before it starts; its id."""
        ...

    def start(self, ce: ContainerEngine, rec: Record, *, attach_fd: int = -1, op: str) -> Record:
        """Start a created container under a supervisor of its own and return once its
        process runs; the verb has checked the state and taken the op marker ``op``."""
        ...

    def run(self, ce: ContainerEngine, opts: Any) -> int:
        """``docker run`` without -d: create, start, relay the output until the command
        exits; its exit code."""
        ...

    def signal(self, rec: Record, sig: int) -> None:
        """Deliver ``sig`` meant for the container's command; ProcessLookupError if gone."""
        ...

    def pause(self, ce: ContainerEngine, rec: Record, frozen: bool) -> None:
        """Freeze or thaw every process of the container."""
        ...

    def cleanup(self, ce: ContainerEngine, rec: Record) -> None:
        """Release what the sandbox holds outside the container's directory and row (runtime
        state, cgroups, network leases and links, sockets); idempotent, best effort."""
        ...


_drivers: dict[str, Isolation] = {}


def register(driver: Isolation) -> None:
    """Make ``driver`` serve the records whose ``HostConfig.Isolation`` is its kind."""
    _drivers[driver.kind] = driver


def kind_of(rec: Record) -> str:
    return str(rec.config.get("HostConfig", {}).get("Isolation") or NAMESPACES)


def _lookup(kind: str, what: str) -> Isolation:
    try:
        return _drivers[kind]
    except KeyError:
        raise Unsupported(
            f"{what} runs with isolation {kind}, which this command cannot drive"
        ) from None


def driver_for(rec: Record) -> Isolation:
    return _lookup(kind_of(rec), f"container {rec.name}")


def for_options(opts: Any) -> Isolation:
    """The driver a run's options ask for (``--isolation``, ``--vm``)."""
    kind = getattr(opts, "isolation", "") or NAMESPACES
    return _lookup(NAMESPACES if kind in ("default", "container") else kind, "the run")


def driver(rec: Record, verb: str) -> Isolation:
    """The driver of ``rec`` for ``verb``; Unsupported if the verb does not apply to it."""
    drv = driver_for(rec)
    if not drv.supports(verb):
        raise Unsupported(f"{verb} does not apply to {rec.name}: it runs in a {drv.kind} "
                          f"(--{drv.kind})")  # fmt: skip
    return drv


def supports(rec: Record, verb: str) -> bool:
    """Whether ``verb`` applies to ``rec`` (a kind no driver serves here: no)."""
    drv = _drivers.get(kind_of(rec))
    return drv is not None and drv.supports(verb)
