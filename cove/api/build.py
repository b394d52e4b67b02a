"""``POST /build``: the legacy builder's face. The body is the context as a tar (the docker
CLI sends it chunked, docker-py with a length); the build is cove's own builder, called as
``cove build CONTEXT.tar`` would call it, and its steps are reported as the legacy
builder's JSON stream: ``{"stream": "Step 1/2 : FROM alpine\\n"}`` ..., then
``{"aux": {"ID": "sha256:..."}}``, ``Successfully built <12 hex>`` and one
``Successfully tagged NAME`` per tag (docker-py and compose v1 read the id from those).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from cove.api.images import LazyStream, _spool, reporting, short
from cove.api.server import ApiError, Request, Response, Route
from cove.build.progress import Progress
from cove.errors import CoveError

_LABEL = re.compile(r"^\[(?:[^\]]* )?(\d+)/(\d+)\] (.*)$", re.S)


class JsonBuildProgress(Progress):
    """The builder's progress as the legacy builder's ``stream`` messages."""

    def __init__(self, out: LazyStream, quiet: bool) -> None:
        super().__init__("quiet")
        self.sink = out
        self.quiet = quiet

    def _say(self, text: str) -> None:
        if not self.quiet:
            self.sink.send({"stream": text})

    def note(self, text: str) -> None:
        self._say(f"note: {text}\n")

    def step(self, label: str) -> None:
        self.label = label
        m = _LABEL.match(label)
        self._say(f"Step {m.group(1)}/{m.group(2)} : {m.group(3)}\n" if m else f"{label}\n")

    def output(self, stream: int, data: bytes) -> None:
        self._say(data.decode(errors="replace"))

    def finish(self, cached: bool) -> None:
        if cached and not self.label.split("] ", 1)[-1].startswith("FROM "):
            self._say(" ---> Using cache\n")

    def failed(self) -> None:
        pass  # the output went out as it came

    def line(self, text: str) -> None:
        pass  # "writing image"/"naming to": the face says it as Docker does, below


def _json_arg(req: Request, name: str) -> dict[str, Any]:
    raw = req.arg(name)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"invalid {name}: {raw}") from e
    return doc if isinstance(doc, dict) else {}


def build(req: Request) -> Response | None:
    from cove.build.builder import BuildOptions
    from cove.build.builder import build as do_build

    if req.arg("remote"):
        raise ApiError(501, "building from a remote context is not supported")
    tags = [t for t in req.query.get("t", []) if t]
    args = [f"{k}={v}" for k, v in _json_arg(req, "buildargs").items() if v is not None]
    labels = [f"{k}={v}" for k, v in _json_arg(req, "labels").items()]
    network = req.arg("networkmode") or "default"
    quiet = req.flag("q")
    path = _spool(req, "context-")
    out = LazyStream(req)
    try:
        opts = BuildOptions(
            context=path,
            dockerfile=req.arg("dockerfile") or None,
            tags=tags,
            build_args=args,
            target=req.arg("target") or None,
            no_cache=req.flag("nocache"),
            pull=req.flag("pull"),
            platform=req.arg("platform") or None,
            labels=labels,
            quiet=quiet,
            network="bridge" if network == "default" else network,
        )
        progress = JsonBuildProgress(out, quiet)
        with reporting(out):
            try:
                image_id = do_build(req.ce, opts, None, progress)
            except CoveError as e:
                if out.chunks is None:
                    out.send({"stream": ""})  # dockerd reports build failures in the stream
                raise e
            if quiet:
                out.send({"stream": f"{image_id}\n"})
            else:
                out.send({"aux": {"ID": image_id}})
                out.send({"stream": f"Successfully built {short(image_id)}\n"})
                from cove.build.dispatch import tag

                for t in tags:
                    out.send({"stream": f"Successfully tagged {tag(t).familiar()}\n"})
    finally:
        os.unlink(path)
    return None


def prune_cache(req: Request) -> Response:
    from cove.build.cache import BuildCache

    BuildCache(req.engine.root).prune()
    return Response(200, {"CachesDeleted": None, "SpaceReclaimed": 0})


ROUTES: list[Route] = [
    ("POST", r"/build", build),
    ("POST", r"/build/prune", prune_cache),
]
