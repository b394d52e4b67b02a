"""``create``'s network options checked against the host and other containers:
``--network`` (a named network must exist; ``container:NAME`` must be running) and
``-p`` (Docker's PortBindings), before anything is recorded."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from cove.errors import Conflict, InvalidSpec
from cove.state import Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def network_opts(ce: ContainerEngine, opts: Any) -> tuple[Any, dict[str, Any]]:
    """Check --network and -p; ``container:NAME`` becomes that container's netns path."""
    mode = opts.network or "bridge"
    bindings: dict[str, Any] = {}
    if mode.startswith("container:"):
        other = ce.get(mode.partition(":")[2])
        if other.status != Status.RUNNING:
            raise Conflict(f"cannot join network of a non running container: {other.name}")
        opts = dataclasses.replace(opts, network=f"container:/proc/{other.pid}/ns/net")
    elif mode not in ("none", "host"):
        from cove.network.manager import DEFAULT, NetworkManager, parse_publish

        if mode != DEFAULT:
            NetworkManager(ce.root, ce.store.db).store.get(mode)
        for text in opts.publish:
            for p in parse_publish(text):
                host_port = str(p.host_port or "")
                if p.host_port_end:
                    host_port += f"-{p.host_port_end}"
                bindings.setdefault(f"{p.container_port}/{p.proto}", []).append(
                    {"HostIp": p.host_ip, "HostPort": host_port}
                )
    bridged = mode not in ("none", "host") and not mode.startswith("container:")
    if (opts.publish or opts.publish_all or opts.network_aliases or opts.ip) and not bridged:
        raise InvalidSpec(
            f"conflicting options: port publishing, aliases and --ip need a bridge "
            f"network, not {mode}"
        )
    return opts, bindings
