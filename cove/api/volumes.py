"""Volume endpoints: list, create, inspect, delete, prune, as ``cove volume`` calls the
container engine's ``Volumes``; labels are stored and returned.
"""

from __future__ import annotations

from typing import Any

from cove.api.server import ApiError, Request, Response, Route
from cove.errors import NotFound


def _doc(vols: Any, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = vols.inspect(name)
    doc["Labels"] = doc.get("Labels") or {}
    doc["Options"] = doc.get("Options") or {}
    return doc


def _inspect(vols: Any, name: str) -> dict[str, Any]:
    try:
        return _doc(vols, name)
    except NotFound as e:
        raise ApiError(404, f"get {name}: no such volume") from e


def _matches(vols: Any, doc: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if not values:
            continue
        if key == "name" and not any(v in doc["Name"] for v in values):
            return False
        if key == "driver" and doc["Driver"] not in values:
            return False
        if key == "label":
            labels = doc["Labels"]
            for v in values:
                k, eq, want = v.partition("=")
                if k not in labels or (eq and labels[k] != want):
                    return False
        if key == "dangling":
            dangling = values[-1].lower() in ("1", "true")
            if dangling != (not vols.users(doc["Name"])):
                return False
    return True


def list_volumes(req: Request) -> Response:
    vols = req.ce.volumes()
    filters = req.filters()
    docs = [_doc(vols, v.name) for v in vols.all()]
    docs = [d for d in docs if _matches(vols, d, filters)]
    return Response(200, {"Volumes": docs, "Warnings": []})


def create(req: Request) -> Response:
    body = req.json()
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise ApiError(404, f"error looking up volume plugin {driver}: plugin not found")
    vols = req.ce.volumes()
    labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items()}
    opts = {str(k): str(v) for k, v in (body.get("DriverOpts") or {}).items()}
    vol, _made = vols.create(body.get("Name") or None, labels=labels, options=opts)
    return Response(201, _doc(vols, vol.name))


def inspect(req: Request) -> Response:
    return Response(200, _inspect(req.ce.volumes(), req.params["name"]))


def delete(req: Request) -> Response:
    name = req.params["name"]
    try:
        req.ce.volumes().remove(name, force=req.flag("force"))
    except NotFound as e:
        raise ApiError(404, f"get {name}: no such volume") from e
    return Response(204)


def prune(req: Request) -> Response:
    """API 1.41 (what cove serves) prunes every unused volume; the ``all`` filter of 1.42+
    is honoured when a newer client sends it."""
    filters = req.filters()
    vols = req.ce.volumes()
    anonymous_only = req.version >= (1, 42) and filters.get("all", ["false"])[-1] not in (
        "1",
        "true",
    )
    labels = filters.get("label", [])

    def only(v: Any) -> bool:
        return _matches(vols, {"Name": v.name, "Driver": "local", "Labels": v.labels},
                        {"label": labels})  # fmt: skip

    removed, freed = vols.prune(all_volumes=not anonymous_only, only=only if labels else None)
    return Response(200, {"VolumesDeleted": removed or None, "SpaceReclaimed": freed})


NAME = r"(?P<name>[^/]+)"
ROUTES: list[Route] = [
    ("GET", r"/volumes", list_volumes),
    ("POST", r"/volumes/create", create),
    ("POST", r"/volumes/prune", prune),
    ("GET", rf"/volumes/{NAME}", inspect),
    ("DELETE", rf"/volumes/{NAME}", delete),
]
