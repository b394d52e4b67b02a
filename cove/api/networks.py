"""Network endpoints: list, inspect, create, connect, disconnect, delete, prune. The verbs
are the container engine's network manager (``ContainerEngine.networks``, ``connect``,
``disconnect``), as ``cove network`` calls them; labels are stored and returned (compose
compares its ``com.docker.compose.*`` labels).
"""

from __future__ import annotations

from typing import Any

from cove.api.server import ApiError, Request, Response, Route
from cove.errors import NotFound


def _builtin(name: str) -> dict[str, Any]:
    """``host`` and ``none``: Docker lists them; cove has them as network modes only."""
    return {
        "Name": name,
        "Id": name,
        "Created": "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": "null" if name == "none" else name,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": []},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": {},
        "Labels": {},
    }


def _doc(nm: Any, n: Any, users: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = nm.inspect(n, users)
    doc.setdefault("ConfigFrom", {"Network": ""})
    doc.setdefault("ConfigOnly", False)
    doc["Labels"] = doc.get("Labels") or {}
    return doc


def _all(req: Request) -> list[dict[str, Any]]:
    ce = req.ce
    nm = ce.networks()
    nm.default()  # Docker always has its default network
    users = ce.network_users()
    docs = [_doc(nm, n, users) for n in nm.all()]
    return [*docs, _builtin("host"), _builtin("none")]


def _get(req: Request, ref: str) -> tuple[Any, Any]:
    from cove.network.manager import DEFAULT, SPECIAL

    nm = req.ce.networks()
    if ref in SPECIAL:
        return nm, None
    try:
        if ref == DEFAULT:
            return nm, nm.default()
        try:
            return nm, nm.get(ref)
        except NotFound:
            # a unique id prefix, as Docker
            hits = [n for n in nm.all() if n.id.startswith(ref)]
            if len(hits) == 1:
                return nm, hits[0]
            raise
    except NotFound as e:
        raise ApiError(404, f"network {ref} not found") from e


def _matches(doc: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    for key, values in filters.items():
        if not values:
            continue
        if key == "name" and not any(v in doc["Name"] for v in values):
            return False
        if key == "id" and not any(doc["Id"].startswith(v) for v in values):
            return False
        if key == "driver" and doc["Driver"] not in values:
            return False
        if key == "scope" and doc["Scope"] not in values:
            return False
        if key == "type":
            builtin = doc["Name"] in ("bridge", "host", "none")
            if not any((v == "builtin") == builtin for v in values):
                return False
        if key == "label":
            labels = doc.get("Labels") or {}
            for v in values:
                k, eq, want = v.partition("=")
                if k not in labels or (eq and labels[k] != want):
                    return False
        if key == "dangling":
            dangling = values[-1].lower() in ("1", "true")
            unused = not doc.get("Containers") and doc["Name"] not in ("bridge", "host", "none")
            if dangling != unused:
                return False
    return True


def list_networks(req: Request) -> Response:
    filters = req.filters()
    return Response(200, [d for d in _all(req) if _matches(d, filters)])


def inspect(req: Request) -> Response:
    ref = req.params["id"]
    nm, n = _get(req, ref)
    if n is None:
        return Response(200, _builtin(ref))
    return Response(200, _doc(nm, n, req.ce.network_users()))


def create(req: Request) -> Response:
    body = req.json()
    name = body.get("Name") or ""
    if not name:
        raise ApiError(400, "network name must not be empty")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise ApiError(400, f"plugin {driver!r} not found: cove networks use the bridge driver")
    if body.get("EnableIPv6"):
        raise ApiError(501, "IPv6 networks are not supported")
    configs = ((body.get("IPAM") or {}).get("Config")) or []
    subnet = gateway = None
    if configs:
        subnet = configs[0].get("Subnet") or None
        gateway = configs[0].get("Gateway") or None
    labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items()}
    n = req.ce.networks().create(name, subnet=subnet, gateway=gateway,
                                 internal=bool(body.get("Internal")), labels=labels)  # fmt: skip
    return Response(201, {"Id": n.id, "Warning": ""})


def delete(req: Request) -> Response:
    ref = req.params["id"]
    nm, n = _get(req, ref)
    nm.remove(n.id if n is not None else ref)
    return Response(204)


def connect(req: Request) -> Response:
    body = req.json()
    _nm, n = _get(req, req.params["id"])
    if n is None:
        raise ApiError(400, f"container cannot be connected to network {req.params['id']}")
    cfg = body.get("EndpointConfig") or {}
    ip = (cfg.get("IPAMConfig") or {}).get("IPv4Address") or None
    aliases = [str(a) for a in cfg.get("Aliases") or []]
    req.ce.connect(n.id, str(body.get("Container") or ""), aliases=aliases, ip=ip)
    return Response(200, raw=b"")


def disconnect(req: Request) -> Response:
    body = req.json()
    _nm, n = _get(req, req.params["id"])
    if n is None:
        raise ApiError(400, f"container cannot be disconnected from network {req.params['id']}")
    req.ce.disconnect(n.id, str(body.get("Container") or ""))
    return Response(200, raw=b"")


def prune(req: Request) -> Response:
    """Unused networks other than the default (``until`` and ``label`` filters narrow it)."""
    from cove.api.filters import created_time, prune_filter
    from cove.errors import Conflict

    accepts = prune_filter(req.filters())
    nm = req.ce.networks()
    wanted = {
        d["Id"] for d in _all(req) if accepts(created_time(d["Created"]), d.get("Labels") or {})
    }
    removed = []
    for n in nm.all():
        if n.id in wanted and n.name != "bridge" and not nm.users(n):
            try:
                nm.remove(n.id)
            except (Conflict, NotFound):
                continue
            removed.append(n.name)
    return Response(200, {"NetworksDeleted": removed or None})


ID = r"(?P<id>[^/]+)"
ROUTES: list[Route] = [
    ("GET", r"/networks", list_networks),
    ("POST", r"/networks/create", create),
    ("POST", r"/networks/prune", prune),
    ("GET", rf"/networks/{ID}", inspect),
    ("DELETE", rf"/networks/{ID}", delete),
    ("POST", rf"/networks/{ID}/connect", connect),
    ("POST", rf"/networks/{ID}/disconnect", disconnect),
]
