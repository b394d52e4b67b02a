"""Isolation drivers: what kind of sandbox a container's process runs in."""

from __future__ import annotations

from cove.state import Record


def is_vm(rec: Record) -> bool:
    return bool(rec.config.get("HostConfig", {}).get("Isolation") == "vm")


def container_only(rec: Record, verb: str) -> None:
    """Verbs that work on namespaces, cgroups or the upper directory have none of those to
    work on in a ``run --vm``: its process is a QEMU."""
    if rec.config.get("HostConfig", {}).get("Isolation") == "vm":
        from cove.errors import Unsupported

        raise Unsupported(f"{verb} does not apply to {rec.name}: it runs in a vm (--vm)")
