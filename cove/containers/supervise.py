"""The monitor's heavy half: each function runs in a short-lived child forked by
``cove.monitor`` and returns that child's exit code. They may import anything; the
monitor itself never does.
"""

from __future__ import annotations

from cove.containers import lifecycle
from cove.containers.engine import ContainerEngine
from cove.containers.exec import run_check
from cove.containers.netattach import network_down
from cove.containers.record import config_of
from cove.containers.startup import prefork_start, runtime, start
from cove.engine import Engine
from cove.errors import best_effort
from cove.runtime import control
from cove.runtime.api import exit_status
from cove.state import Record, Status, Store, now

# start and prefork_start live in cove.startup (the launcher calls them too, and it sits
# below this module); the monitor finds every helper here by name, old monitors included
__all__ = ["RESTART", "finish", "give_up", "health", "prefork_start", "should_restart", "start"]

RESTART = 10  # finish(): the monitor should start the container again


def _policy_restarts(rec: Record, code: int) -> bool:
    cfg = config_of(rec)
    name = cfg.restart_policy
    if rec.manual_stop or name == "no":
        return False
    if name in ("always", "unless-stopped"):
        return True
    limit = cfg.restart_max
    return code != 0 and (limit == 0 or rec.restart_count < limit)


def finish(root: str, cid: str, status: str) -> int:
    """Record the exit (code, OOM, time), clean up the runtime, decide about a restart."""
    code = exit_status(int(status))
    oom = False
    with best_effort(f"read the oom events of {cid}", __name__):
        oom = control.oom_killed(runtime(root).state_dir, cid)
    if oom:
        code = 137
    with best_effort(f"delete the runtime state of {cid}", __name__):
        runtime(root).delete(cid, force=True)
    store = Store(root)
    network_down(root, store.db, cid)
    rec = store.get(cid)
    if rec.status == Status.REMOVING:
        return 0
    if _policy_restarts(rec, code):
        lifecycle.restarting(store, rec, code, oom=oom)
        return RESTART
    lifecycle.exited(store, cid, code, oom=oom)
    if config_of(rec).auto_remove:
        with best_effort(f"remove container {cid} (--rm)", __name__):
            ContainerEngine(Engine(root)).discard(store.get(cid), volumes=True)
    return 0


def should_restart(root: str, cid: str) -> int:
    """0 while a restart is still wanted (not stopped or removed meanwhile)."""
    try:
        rec = Store(root).get(cid)
    except Exception:
        return 1
    return 0 if rec.status == Status.RESTARTING and not rec.manual_stop else 1


def give_up(root: str, cid: str) -> int:
    store = Store(root)
    with best_effort(f"record that container {cid} gave up restarting", __name__):
        lifecycle.gave_up(store, cid)
    return 0


def health(root: str, cid: str) -> int:
    """Run the health check once inside the container and record it as Docker does."""
    store = Store(root)
    rec = store.get(cid)
    if rec.status != Status.RUNNING:
        return 0
    hc = config_of(rec).healthcheck
    if hc is None or hc.disabled:
        return 0
    args = hc.argv()
    timeout = hc.timeout
    retries = hc.max_retries
    start_period = hc.start_period
    begun = now()
    ce = ContainerEngine(Engine(root))
    try:
        code, output = run_check(ce, rec, args, timeout)
    except Exception as e:
        code, output = -1, str(e)
    ended = now()
    rec = store.get(cid)
    if rec.status != Status.RUNNING or rec.started_at > begun:
        return 0  # the container stopped or restarted meanwhile: this result is stale
    h = dict(rec.health or {"Status": "starting", "FailingStreak": 0, "Log": []})
    log = list(h.get("Log") or [])
    log.append({"Start": _ts(begun), "End": _ts(ended), "ExitCode": code, "Output": output[-4096:]})
    h["Log"] = log[-5:]
    if code == 0:
        h["Status"], h["FailingStreak"] = "healthy", 0
    elif begun - rec.started_at < start_period and h.get("Status") == "starting":
        pass  # failures in the start period do not count
    else:
        h["FailingStreak"] = int(h.get("FailingStreak") or 0) + 1
        if h["FailingStreak"] >= retries:
            h["Status"] = "unhealthy"
    lifecycle.health(store, cid, h)
    return 0


def _ts(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
