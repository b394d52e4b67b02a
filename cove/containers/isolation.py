"""Isolation drivers: what kind of sandbox a container's process runs in.

A container's record names its driver (``HostConfig.Isolation``: empty for namespaces,
``vm`` for ``run --vm``). The verbs ask the driver whether they apply (``supports``) and
hand it what differs between sandboxes: where a signal goes, and how the process is
frozen. The namespaces driver is here; the VM driver lives in ``cove.vm.isolation``
(``vm`` sits above ``containers``) and the face registers it (``register``) before any verb
runs, so this package never imports ``vm``.
"""

from __future__ import annotations

import os
from typing import Protocol

from cove.errors import Unsupported
from cove.state import Record

NAMESPACES = "namespaces"


class Isolation(Protocol):
    kind: str

    def supports(self, verb: str) -> bool:
        """Whether ``verb`` (as the CLI names it: "pause", "network connect") applies."""
        ...

    def signal(self, rec: Record, sig: int) -> None:
        """Deliver ``sig`` meant for the container's command; ProcessLookupError if gone."""
        ...

    def pause(self, rec: Record, frozen: bool) -> None:
        """Freeze or thaw every process of the container."""
        ...


class Namespaces:
    """The OCI runtime's containers: the command is ``rec.pid``, its cgroup ``cove/<id>``."""

    kind = NAMESPACES

    def supports(self, verb: str) -> bool:
        return True

    def signal(self, rec: Record, sig: int) -> None:
        os.kill(rec.pid, sig)

    def pause(self, rec: Record, frozen: bool) -> None:
        from cove.runtime.cgroups import Cgroups

        Cgroups(f"cove/{rec.id}").freeze(frozen)


_drivers: dict[str, Isolation] = {NAMESPACES: Namespaces()}


def register(driver: Isolation) -> None:
    """Make ``driver`` serve the records whose ``HostConfig.Isolation`` is its kind."""
    _drivers[driver.kind] = driver


def kind_of(rec: Record) -> str:
    return str(rec.config.get("HostConfig", {}).get("Isolation") or NAMESPACES)


def driver_for(rec: Record) -> Isolation:
    kind = kind_of(rec)
    try:
        return _drivers[kind]
    except KeyError:
        raise Unsupported(
            f"container {rec.name} runs with isolation {kind}, which this command cannot drive"
        ) from None


def require(rec: Record, verb: str) -> None:
    """Refuse ``verb`` on a container whose driver has nothing for it to work on."""
    if kind_of(rec) == NAMESPACES:
        return
    if not driver_for(rec).supports(verb):
        raise Unsupported(f"{verb} does not apply to {rec.name}: it runs in a vm (--vm)")


def container_only(rec: Record, verb: str) -> None:
    """The older name of ``require`` (callers outside this package still use it)."""
    require(rec, verb)
