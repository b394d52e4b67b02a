"""Docker's inspect JSON of a container (made here, at the edge, from the record), and
the reads of its bundle shared with exec and the file verbs.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from cove.state import Record, Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def inspect(ce: ContainerEngine, ref: str) -> dict[str, Any]:
    rec = ce.get(ref)
    return ce.inspect_record(rec)


def inspect_record(ce: ContainerEngine, rec: Record) -> dict[str, Any]:
    running = rec.status in (Status.RUNNING, Status.PAUSED)
    cfg = rec.config
    state: dict[str, Any] = {
        "Status": rec.status.value,
        "Running": running or rec.status == Status.RESTARTING,  # as Docker says
        "Paused": rec.status == Status.PAUSED,
        "Restarting": rec.status == Status.RESTARTING,
        "OOMKilled": rec.oom_killed,
        "Dead": rec.status == Status.DEAD,
        "Pid": rec.pid if running else 0,
        "ExitCode": rec.exit_code,
        "Error": rec.error,
        "StartedAt": _ts(rec.started_at),
        "FinishedAt": _ts(rec.finished_at),
    }
    if cfg.get("Config", {}).get("Healthcheck"):
        state["Health"] = rec.health or {"Status": "starting", "FailingStreak": 0, "Log": []}
    return {
        "Id": rec.id,
        "Created": _ts(rec.created),
        "Path": cfg.get("Path", ""),
        "Args": cfg.get("Args", []),
        "State": state,
        "Image": rec.image_id,
        "ResolvConfPath": os.path.join(ce.cdir(rec.id), "resolv.conf"),
        "HostnamePath": os.path.join(ce.cdir(rec.id), "hostname"),
        "HostsPath": os.path.join(ce.cdir(rec.id), "hosts"),
        "LogPath": ce.log_path(rec.id),
        "Name": "/" + rec.name,
        "RestartCount": rec.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "HostConfig": cfg.get("HostConfig", {}),
        "GraphDriver": {
            "Name": "overlay",
            "Data": {
                "UpperDir": os.path.join(ce.cdir(rec.id), "upper"),
                "WorkDir": os.path.join(ce.cdir(rec.id), "work"),
            },
        },
        "Mounts": [{k: v for k, v in m.items() if k != "Anonymous"} for m in cfg.get("Mounts", [])],
        "Config": cfg.get("Config", {"Image": rec.image}),
        "NetworkSettings": cfg.get(
            "NetworkSettings",
            {"Networks": {}, "Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""},
        ),
    }


# -- helpers shared with exec and the file verbs -------------------------------------


def oci_spec(ce: ContainerEngine, rec: Record) -> Any:
    from cove.spec.runtime import Spec

    with open(os.path.join(ce.cdir(rec.id), "config.json"), "rb") as f:
        return Spec.parse(f.read())


def layers_top_first(ce: ContainerEngine, rec: Record) -> list[str]:
    """The container's upper dir, then the image's layers, top first."""
    from cove.runtime.init import ANNOTATION_OVERLAY

    oci = ce.oci_spec(rec)
    overlay = json.loads(oci.annotations[ANNOTATION_OVERLAY])
    lowers = [os.path.join(overlay["layers_dir"], p) for p in overlay["lower"]]
    return [overlay["upper"], *lowers]


def id_shift(ce: ContainerEngine, rec: Record) -> tuple[int, int]:
    from cove.runtime.api import host_root_ids

    oci = ce.oci_spec(rec)
    if oci.namespace("user") is None:
        return 0, 0
    return host_root_ids(oci)


def _ts(t: float) -> str:
    import datetime

    if not t:
        return "0001-01-01T00:00:00Z"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
