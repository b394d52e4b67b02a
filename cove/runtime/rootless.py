"""What the runtime does differently in rootless cove (in the user's namespace, cove.sys.userns).

cgroups: a rootless user owns no cgroup unless the host delegates a cgroup v2 subtree to it
(systemd's ``user@UID.service`` with ``Delegate=yes``, pure v2 only: v1 hierarchies are never
delegated). With one, containers get ``cove/<id>`` below the user's own cgroup; without one
(cgroup v1, the hybrid layout, no delegation) limits are not applied and a container that
asks for some gets one warning line, as Podman's.
"""

from __future__ import annotations

import os

from cove.runtime.cgroups import Layout
from cove.spec.runtime import Resources

IGNORED = (
    "resource limits are ignored: rootless containers need cgroup v2 delegated to the user "
    "(this host has {what})"
)


def _own_v2_cgroup(unified: str) -> str | None:
    """The directory of this process's cgroup2 group, if it is writable (delegated)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, _, rest = line.strip().partition(":")
                ctrls, _, path = rest.partition(":")
                if hid == "0" and ctrls == "":
                    d = os.path.join(unified, path.lstrip("/"))
                    # the parent of our leaf: a sibling group for containers (no internal
                    # processes: a group with processes cannot enable controllers below)
                    parent = os.path.dirname(d.rstrip("/"))
                    ok = os.access(parent, os.W_OK) and os.access(
                        os.path.join(parent, "cgroup.subtree_control"), os.W_OK
                    )
                    return parent if ok and parent.startswith(unified) else None
    except OSError:
        return None
    return None


def delegated_layout(host: Layout) -> Layout:
    """The layout a rootless container uses: the user's delegated cgroup2 subtree on a pure
    v2 host, else none at all (every Cgroups operation is then a no-op)."""
    if host.pure_v2 and host.unified:
        own = _own_v2_cgroup(host.unified)
        if own is not None:
            return Layout(unified=own)
    return Layout()


def ignored_limits(res: Resources | None) -> list[str]:
    """One warning when a container asks for limits that cannot be applied, else none."""
    if res is None or not (res.memory or res.cpu or res.pids):
        return []
    return [IGNORED.format(what=_what())]


def _what() -> str:
    kinds = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fstype = line.partition(" - ")[2].split()[:1]
                if fstype in (["cgroup"], ["cgroup2"]):
                    kinds.add(fstype[0])
    except OSError:
        pass
    if kinds == {"cgroup", "cgroup2"}:
        return "the hybrid cgroup v1/v2 layout"
    if kinds == {"cgroup"}:
        return "cgroup v1"
    return "cgroup v2 without delegation"
