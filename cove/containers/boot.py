"""``cove start --all [--filter restart-policy=...]``: what a daemon would do at boot.

There is no daemon, so after a reboot (or a power loss) a shipped systemd unit,
``cove-restart.service``, runs this. Which containers come back follows Docker's daemon at
start-up (moby's RestartManager.ShouldRestart, for containers started before):
- ``always``: yes, even one the user had stopped (Docker restarts those when its daemon
  starts; only ``unless-stopped`` remembers a stop);
- ``unless-stopped``: yes, unless the user stopped (or killed) it;
- the others only when a filter names their policy (Podman's ``start --all`` semantics).
A container running at the power loss is recognised by reconciliation: its record says
running but its monitor is gone, so it is recorded exited (137, "container monitor died")
before it is started again; its json-file log is appended to.
"""

from __future__ import annotations

from typing import Any

from cove.containers import isolation
from cove.containers.record import config_of
from cove.errors import InvalidSpec
from cove.state import Record

POLICIES = ("always", "unless-stopped", "on-failure", "no")


def parse_filters(filters: list[str]) -> set[str] | None:
    """The restart policies asked for (values of one key are ORed); None: no filter."""
    chosen: set[str] = set()
    for f in filters:
        key, _, value = f.partition("=")
        if key != "restart-policy":
            raise InvalidSpec(f"invalid filter '{key}' for start --all: want restart-policy=")
        if value not in POLICIES:
            raise InvalidSpec(f"invalid filter 'restart-policy={value}': want one of "
                              f"{', '.join(POLICIES)}")  # fmt: skip
        chosen.add(value)
    return chosen or None


def policy_of(rec: Record) -> str:
    return config_of(rec).restart_policy


def wanted(rec: Record, policies: set[str] | None) -> bool:
    """``rec`` (reconciled) is one ``start --all`` with these filters brings up."""
    if not rec.status.can_start() or not isolation.supports(rec, "start"):
        return False
    if policies is None:
        return True  # Podman: start --all starts every container that is not running
    policy = policy_of(rec)
    if policy not in policies:
        return False
    if policy in ("always", "unless-stopped") and not rec.started_at:
        return False  # Docker's daemon only brings back containers that were started
    return not (policy == "unless-stopped" and rec.manual_stop)


def start_all(ce: Any, filters: list[str]) -> list[tuple[Record, str]]:
    """Start every container ``wanted``; (record, error or '') for each, in creation order."""
    from cove.errors import CoveError

    policies = parse_filters(filters)
    out: list[tuple[Record, str]] = []
    for rec in reversed(ce.all()):  # ce.all() reconciles: a dead monitor's record is exited
        if not wanted(rec, policies):
            continue
        try:
            ce.start(rec.id)
            out.append((rec, ""))
        except CoveError as e:
            out.append((rec, str(e)))
    return out
