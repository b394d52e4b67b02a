"""``GET /system/df`` and ``GET /events`` (streamed from the events log the verbs write,
``cove.sys.events``)."""

from __future__ import annotations

import json
import time
from typing import Any

from cove.api.server import ApiError, Request, Response, Route


def df(req: Request) -> Response:
    from cove.api import containers, images

    engine = req.engine
    ce = req.ce
    users: dict[str, int] = {}
    for rec in ce.all():
        users[rec.image_id] = users.get(rec.image_id, 0) + 1
    imgs = images.summary(engine, engine.list_images())
    for d in imgs:
        d["Containers"] = users.get(d["Id"], 0)
    layers = {diff for row in engine.list_images() for diff in row.image.config.diff_ids}
    layers_size = sum(engine.images.layer_size(d) or 0 for d in layers)
    req.query = {"all": ["1"], "size": ["1"]}
    ctrs = containers.list_containers(req)
    vols = ce.volumes()
    from cove.containers.volumes import _du

    vdocs: list[dict[str, Any]] = []
    for v in vols.all():
        doc: dict[str, Any] = vols.inspect(v.name)
        doc["Labels"] = doc.get("Labels") or {}
        doc["Options"] = doc.get("Options") or {}
        doc["UsageData"] = {"Size": _du(vols.path(v.name)), "RefCount": len(vols.users(v.name))}
        vdocs.append(doc)
    body = {"LayersSize": layers_size, "Images": imgs, "Containers": json.loads(ctrs.raw or b"[]"),
            "Volumes": vdocs, "BuildCache": []}  # fmt: skip
    return Response(200, body)


def _match(ev: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    actor = ev.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    for key, values in filters.items():
        if not values:
            continue
        if key == "type" and ev.get("Type") not in values:
            return False
        if key == "event" and ev.get("Action") not in values:
            return False
        if key in ("container", "image", "network", "volume"):
            if ev.get("Type") != key:
                return False
            ident = str(actor.get("ID", ""))
            name = attrs.get("name", "")
            if not any(ident.startswith(v) or v == name for v in values):
                return False
        if key == "label":
            for v in values:
                k, eq, want = v.partition("=")
                if k not in attrs or (eq and attrs[k] != want):
                    return False
    return True


def _when(req: Request, name: str) -> float | None:
    raw = req.arg(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        from cove.api.images import epoch

        t = epoch(raw)
        if not t:
            raise ApiError(400, f"invalid {name}: {raw}") from None
        return float(t)


def events(req: Request) -> Response | None:
    """Past events from ``since``, then new ones as they are written, until ``until`` or
    the client goes (a poll of the log every 100 ms: its own thread, nobody else's)."""
    from cove.sys import events as log

    filters = req.filters()
    since = _when(req, "since")
    until = _when(req, "until")
    now = time.time()
    if since is None:
        since = now  # only what happens from now on, as Docker
    out = req.stream("application/json")
    offset = 0
    try:
        while True:
            evs, offset = log.read(req.root, offset)
            for ev in evs:
                t = ev.get("timeNano", 0) / 1e9
                if t < since or (until is not None and t > until):
                    continue
                if _match(ev, filters):
                    out.json(ev)
            if until is not None and time.time() > until:
                break
            if req.client_gone():
                break
            time.sleep(0.1)
    finally:
        out.close()
    return None


ROUTES: list[Route] = [
    ("GET", r"/system/df", df),
    ("GET", r"/events", events),
]
