"""Upgrade shim: the monitor's helpers live in ``cove.containers.supervise``.

A monitor that was started by older code keeps running across an upgrade; its forked
helpers import ``cove.supervise`` by this path and call these names with these arguments
(root, container id, ...). Keep both until no such monitor can be left.
"""

from cove.containers.supervise import (
    RESTART,
    finish,
    give_up,
    health,
    prefork_start,
    should_restart,
    start,
)

__all__ = ["RESTART", "finish", "give_up", "health", "prefork_start", "should_restart", "start"]
