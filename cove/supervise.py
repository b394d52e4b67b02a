"""The monitor's heavy half: each function runs in a short-lived child forked by
``cove.monitor`` and returns that child's exit code. They may import anything; the
monitor itself never does.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from cove.state import Record, Status, Store, now

RESTART = 10  # finish(): the monitor should start the container again


def _runtime(root: str) -> Any:
    from cove.runtime.api import Runtime

    return Runtime(os.path.join(root, "runtime"), os.path.join(root, "cache"))


def start(root: str, cid: str, stdio: tuple[int, int, int], sockfd: int) -> int:
    """Create and start the container; tell the monitor ``ok PID`` (+ the pty) or the error."""
    from cove.runtime.api import ContainerStartError, proc_start_time

    sock = socket.socket(fileno=sockfd)
    store = Store(root)
    rec = store.get(cid)
    runtime = _runtime(root)
    with contextlib.suppress(Exception):
        runtime.delete(cid, force=True)  # what a previous run of this container left
    null = os.open(os.devnull, os.O_RDWR)
    fds = tuple(null if fd < 0 else fd for fd in stdio)
    from cove.containers import network_down, network_up

    try:
        created = runtime.create(cid, os.path.join(root, "containers", cid), stdio=fds)
        rec.config["NetworkSettings"] = network_up(root, store.db, rec, created.pid)
        if rec.status == Status.RESTARTING and store.get(cid).manual_stop:
            raise RuntimeError("stopped during the restart back-off")
        runtime.start(cid)
        runtime.wait_exec(created)
    except BaseException as e:
        code = e.exit_code if isinstance(e, ContainerStartError) else 125
        with contextlib.suppress(Exception):
            runtime.delete(cid, force=True)
        network_down(root, store.db, cid)
        back = rec.status if rec.status != Status.RESTARTING else Status.EXITED
        if rec.status == Status.RESTARTING:
            fields: dict[str, Any] = {"status": back, "finished_at": now()}
        else:
            fields = {}
        store.update(
            cid,
            op="",
            op_pid=0,
            op_start=0,
            exit_code=code,
            error=str(e),
            monitor_pid=0,
            **fields,
        )
        sock.send(f"{code} {e}".encode())
        return 1
    health: dict[str, Any] = {}
    if rec.config.get("Config", {}).get("Healthcheck"):
        health = {"Status": "starting", "FailingStreak": 0, "Log": []}
    store.update(
        cid,
        config=rec.config,
        status=Status.RUNNING,
        pid=created.pid,
        start_time=proc_start_time(created.pid) or 0,
        started_at=now(),
        op="",
        op_pid=0,
        op_start=0,
        error="",
        oom_killed=False,
        health=health,
    )
    msg = f"ok {created.pid}".encode()
    if created.pty_master is not None:
        socket.send_fds(sock, [msg], [created.pty_master])
    else:
        sock.send(msg)
    return 0


def prefork_start(
    root: str, cid: str, go_r: int, tty: bool, stdin: bool, close: list[int]
) -> tuple[int, int, int, int, int]:
    """Fork the first start's helper from the launcher's image (everything is imported
    already); it waits for the launcher's go, so nothing starts before the launcher has
    recorded who owns the start. Returns (out_r, err_r, in_w, sock, pid) for the monitor."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = (-1, -1) if tty else os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC) if stdin and not tty else (-1, -1)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            left.close()
            for fd in (out_r, err_r, in_w, *close):
                if fd >= 0:
                    os.close(fd)
            if os.read(go_r, 1) == b"g":  # EOF: the launcher died before recording us
                os.close(go_r)
                code = start(root, cid, (in_r, out_w, err_w), right.detach())
        except BaseException as e:
            os.write(2, f"cove-monitor: start: {e}\n".encode())
        os._exit(code)  # never run the launcher's exit handlers or close its database
    right.close()
    for fd in (out_w, err_w, in_r):
        if fd >= 0:
            os.close(fd)
    return out_r, err_r, in_w, left.detach(), pid


def _policy_restarts(rec: Record, code: int) -> bool:
    policy = rec.config.get("HostConfig", {}).get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if rec.manual_stop or name == "no":
        return False
    if name in ("always", "unless-stopped"):
        return True
    limit = int(policy.get("MaximumRetryCount") or 0)
    return code != 0 and (limit == 0 or rec.restart_count < limit)


def finish(root: str, cid: str, status: str) -> int:
    """Record the exit (code, OOM, time), clean up the runtime, decide about a restart."""
    from cove.runtime.api import exit_status
    from cove.runtime.cgroups import Cgroups

    code = exit_status(int(status))
    oom = False
    with contextlib.suppress(Exception):
        oom = Cgroups(f"cove/{cid}").oom_killed()
    if oom:
        code = 137
    with contextlib.suppress(Exception):
        _runtime(root).delete(cid, force=True)
    store = Store(root)
    from cove.containers import network_down

    network_down(root, store.db, cid)
    rec = store.get(cid)
    if rec.status == Status.REMOVING:
        return 0
    if _policy_restarts(rec, code):
        store.update(
            cid,
            status=Status.RESTARTING,
            exit_code=code,
            oom_killed=oom,
            finished_at=now(),
            restart_count=rec.restart_count + 1,
        )
        return RESTART
    store.update(
        cid,
        status=Status.EXITED,
        exit_code=code,
        oom_killed=oom,
        finished_at=now(),
        monitor_pid=0,
    )
    if rec.config.get("HostConfig", {}).get("AutoRemove"):
        from cove.containers import ContainerEngine
        from cove.engine import Engine

        with contextlib.suppress(Exception):
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
    with contextlib.suppress(Exception):
        rec = store.get(cid)
        if rec.status == Status.RESTARTING:
            store.update(cid, status=Status.EXITED, monitor_pid=0)
    return 0


def health(root: str, cid: str) -> int:
    """Run the health check once inside the container and record it as Docker does."""
    from cove.containers import ContainerEngine
    from cove.engine import Engine
    from cove.exec import run_check

    store = Store(root)
    rec = store.get(cid)
    if rec.status != Status.RUNNING:
        return 0
    hc = rec.config.get("Config", {}).get("Healthcheck") or {}
    test = list(hc.get("Test") or [])
    if not test or test[0] == "NONE":
        return 0
    args = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
    timeout = (hc.get("Timeout") or 30_000_000_000) / 1e9
    retries = hc.get("Retries") or 3
    start_period = (hc.get("StartPeriod") or 0) / 1e9
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
    store.update(cid, health=h)
    return 0


def _ts(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
