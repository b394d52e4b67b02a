"""Image endpoints: list, inspect, create (pull, or import with ``fromSrc``), push, tag,
delete, history, load, get (save), prune. Every verb is the engine's (``cove.engine``,
``cove.registry.dist``), called as the CLI calls it; this module parses and formats, and
renders pull/push progress as Docker's JSON messages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cove.api.server import ApiError, Chunks, Request, Response, Route
from cove.errors import CoveError, NotFound
from cove.registry.dist import Progress
from cove.spec import reference as refs

if TYPE_CHECKING:
    from cove.engine import Engine, ImageRow


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def epoch(text: str) -> int:
    """An RFC 3339 time as Unix seconds (0 when absent or unreadable, as Docker)."""
    return int(epoch_exact(text))


def epoch_exact(text: str) -> float:
    """An RFC 3339 time as Unix seconds with its fraction (0.0 when unreadable)."""
    import datetime

    if not text:
        return 0
    try:
        t = text.replace("Z", "+00:00")
        if "." in t:  # Go writes nanoseconds; fromisoformat takes at most microseconds
            head, _, rest = t.partition(".")
            frac = "".join(c for c in rest if c.isdigit())
            tz = rest[len(frac) :]
            t = f"{head}.{frac[:6]}{tz}"
        return datetime.datetime.fromisoformat(t).timestamp()
    except ValueError:
        return 0


class LazyStream:
    """A JSON-lines response that starts with its first message: a failure before any
    output is still a proper error status (dockerd: ``if !output.Flushed() { return err }``),
    a failure after it is an ``errorDetail`` message in the stream."""

    def __init__(self, req: Request) -> None:
        self.req = req
        self.chunks: Chunks | None = None
        self.lock = threading.Lock()

    def send(self, doc: dict[str, Any]) -> None:
        with self.lock:
            if self.chunks is None:
                self.chunks = self.req.stream("application/json")
            self.chunks.json(doc)

    def fail(self, err: BaseException) -> None:
        """Report ``err``: as the response's status if nothing went out, else in-stream."""
        if self.chunks is None:
            raise err
        msg = str(err)
        self.send({"errorDetail": {"message": msg}, "error": msg})

    def close(self) -> None:
        if self.chunks is not None:
            self.chunks.close()


@contextlib.contextmanager
def reporting(out: LazyStream) -> Iterator[None]:
    try:
        yield
    except (CoveError, ApiError, OSError) as e:
        out.fail(e)
    finally:
        out.close()


class JsonProgress(Progress):
    """cove's pull/push progress as Docker's JSON messages (what the docker CLI, compose
    and docker-py render): per-layer status lines keyed by the short digest."""

    def __init__(self, out: LazyStream, push: bool, header: dict[str, Any]) -> None:
        super().__init__(quiet=True)
        self.out = out
        self.push = push
        self.header: dict[str, Any] | None = header
        self.layers: set[str] = set()
        self.last: dict[str, float] = {}
        # "Already exists" lines wait for the first layer to fetch: dockerd names no
        # layer when the image is up to date
        self.present: list[str] = []

    def _head(self) -> None:
        if self.header is not None:
            self.out.send(self.header)
            self.header = None

    def _layer(self, digest: str, status: str, **extra: Any) -> None:
        self._head()
        self.out.send({"status": status, "progressDetail": extra.pop("detail", {}),
                       "id": short(digest), **extra})  # fmt: skip

    def _flush_present(self) -> None:
        for digest in self.present:
            self._layer(digest, "Layer already exists" if self.push else "Already exists")
        self.present.clear()

    def queued(self, digest: str) -> None:
        self.layers.add(digest)
        self._flush_present()
        self._layer(digest, "Preparing" if self.push else "Pulling fs layer")

    def say(self, digest: str, text: str) -> None:
        if text.startswith("resuming"):
            return
        if text == "already exists":
            if digest not in self.layers:  # before the downloads: held back (above)
                self.layers.add(digest)
                self.present.append(digest)
            else:
                self._layer(digest, "Layer already exists" if self.push else "Already exists")
        elif digest in self.layers:  # never the config blob: Docker shows layers only
            if text == "pull complete":
                self._layer(digest, "Download complete")
                self._layer(digest, "Pull complete")
            elif text == "pushed":
                self._layer(digest, "Pushed")
            elif text.startswith("mounted from "):
                self._layer(digest, "Mounted from " + text.removeprefix("mounted from "))

    def bar(self, digest: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last.get(digest, 0.0) < 0.1:
            return  # a line per 100 ms is what a renderer can use
        self.last[digest] = now
        width = 50
        filled = int(width * done / total) if total else width
        arrow = ("=" * max(filled - 1, 0) + ">").ljust(width) if filled < width else "=" * width
        bar = f"[{arrow}] {_human(done)}/{_human(total)}"
        self._layer(digest, "Pushing" if self.push else "Downloading",
                    detail={"current": done, "total": total}, progress=bar)  # fmt: skip

    def pulled(self, ref: refs.Reference, digest: str, fresh: bool) -> None:
        self._head()
        if fresh:
            self._flush_present()
        self.out.send({"status": f"Digest: {digest}"})
        how = "Downloaded newer image for" if fresh else "Image is up to date for"
        self.out.send({"status": f"Status: {how} {ref.familiar()}"})

    def pushed(self, tag: str, digest: str, size: int) -> None:
        self._head()
        self._flush_present()
        self.out.send({"status": f"{tag}: digest: {digest} size: {size}"})
        self.out.send({"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": size}})


def _human(n: int) -> str:
    """Docker's progress units (go-units HumanSize: decimal, 3 significant digits)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.4g}{unit}"
        size /= 1000
    return f"{n}B"


def _no_such_image(name: str, err: NotFound) -> ApiError:
    return ApiError(404, f"No such image: {name}")


def _resolve(engine: Engine, name: str) -> Any:
    try:
        return engine.image(name)
    except NotFound as e:
        raise _no_such_image(name, e) from e


def _insecure_ok(domain: str) -> bool:
    """dockerd trusts registries on 127.0.0.0/8 over plain HTTP by default (its
    ``insecure-registries`` start with that range); so does the API face."""
    from cove.registry.client import _is_localhost

    return _is_localhost(domain)


# -- list / inspect -------------------------------------------------------------------


def summary(engine: Engine, rows: list[ImageRow]) -> list[dict[str, Any]]:
    """ImageSummary objects (one per image, all its names), newest first."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        img = r.image
        doc = by_id.get(img.id)
        if doc is None:
            repos = sorted({n.familiar_repository for n in img.names})
            doc = by_id[img.id] = {
                "Id": img.id,
                "ParentId": "",
                "RepoTags": [],
                "RepoDigests": [f"{x}@{img.manifest_digest}" for x in repos]
                or [f"<none>@{img.manifest_digest}"],
                "Created": epoch(img.config.created),
                "Size": r.size,
                "VirtualSize": r.size,
                "SharedSize": -1,
                "Labels": (img.config.config or {}).get("Labels") or {},
                "Containers": -1,
            }
        if r.name is not None:
            doc["RepoTags"].append(r.name.familiar())
    for doc in by_id.values():
        doc["RepoTags"].sort(key=lambda t: str(refs.parse(t)))  # as inspect_doc
    # newest first by the exact time (RFC 3339 strings with and without a fraction do
    # not sort as text)
    created = {r.image.id: epoch_exact(r.image.config.created) for r in rows}
    return sorted(by_id.values(), key=lambda d: created[d["Id"]], reverse=True)


def _label_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for w in wanted:
        k, eq, v = w.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


def list_images(req: Request) -> Response:
    engine = req.engine
    filters = req.filters()
    docs = summary(engine, engine.list_images())
    for want in filters.get("dangling", []):
        dangling = want.lower() in ("1", "true")
        docs = [d for d in docs if (not d["RepoTags"]) == dangling]
    if filters.get("label"):
        docs = [d for d in docs if _label_match(d["Labels"], filters["label"])]
    if filters.get("reference"):
        import fnmatch

        def ref_ok(d: dict[str, Any]) -> bool:
            for tag in d["RepoTags"]:
                repo = tag.rsplit(":", 1)[0]
                for pat in filters["reference"]:
                    if fnmatch.fnmatchcase(tag, pat) or fnmatch.fnmatchcase(repo, pat):
                        return True
            return False

        docs = [d for d in docs if ref_ok(d)]
    for key, newer in (("since", True), ("before", False)):
        for name in filters.get(key, []):
            pivot = epoch(_resolve(engine, name).config.created)
            docs = [d for d in docs if (d["Created"] > pivot if newer else d["Created"] < pivot)]
    if not req.flag("all"):
        pass  # cove keeps no intermediate images: "all" lists the same
    return Response(200, docs)


def inspect_doc(engine: Engine, name: str) -> dict[str, Any]:
    try:
        doc = engine.inspect_image(name)
    except NotFound as e:
        raise _no_such_image(name, e) from e
    # dockerd lists a reference store's names in the order of their full strings
    # (docker.io/example/... before docker.io/library/...)
    doc["RepoTags"] = sorted(doc["RepoTags"], key=lambda t: str(refs.parse(t)))
    doc.setdefault("Container", "")
    doc.setdefault("ContainerConfig", {})
    doc["VirtualSize"] = doc["Size"]
    doc["Config"] = doc.get("Config") or {}
    return doc


def inspect_image(req: Request) -> Response:
    return Response(200, inspect_doc(req.engine, req.params["name"]))


def history(req: Request) -> Response:
    engine = req.engine
    name = req.params["name"]
    img = _resolve(engine, name)
    rows = engine.history(name)
    tags = [n.familiar() for n in img.names]
    out = [
        {
            "Id": r.image_id or "<missing>",
            "Created": epoch(r.created),
            "CreatedBy": r.created_by,
            "Tags": tags if i == 0 else None,
            "Size": r.size,
            "Comment": r.comment,
        }
        for i, r in enumerate(rows)
    ]
    return Response(200, out)


# -- create: pull or import -------------------------------------------------------------


def _pull_ref(image: str, tag: str | None) -> str:
    if tag:
        if tag.startswith("sha256:"):
            return f"{image}@{tag}"
        last = image.rsplit("/", 1)[-1]
        if ":" not in last and "@" not in last:
            return f"{image}:{tag}"
    return image


def create(req: Request) -> Response | None:
    engine = req.engine
    src = req.arg("fromSrc")
    out = LazyStream(req)
    if src is not None:
        return _import(req, src, out)
    registry_auth(req)
    image = req.arg("fromImage")
    if not image:
        raise ApiError(400, "fromImage or fromSrc is required")
    text = _pull_ref(image, req.arg("tag"))
    try:
        ref = refs.parse(text)
    except CoveError as e:
        raise ApiError(400, f"invalid reference format: {text}") from e
    if not ref.tag and not ref.digest:
        # the CLI's `pull -a` (every tag) leaves the tag out; cove pulls one name at a time
        ref = refs.parse(f"{text}:latest")
    from cove.registry.dist import pull

    header = {"status": f"Pulling from {ref.path}", "id": ref.digest or ref.tag}
    progress = JsonProgress(out, push=False, header=header)
    with reporting(out):
        try:
            pull(engine, str(ref), platform=req.arg("platform") or None, quiet=True,
                 tls_verify=not _insecure_ok(ref.domain), progress=progress)  # fmt: skip
        except NotFound as e:
            raise ApiError(404, _pull_not_found(ref, e)) from e
        except CoveError as e:
            if "404" in str(e) or "unknown" in str(e).lower():
                raise ApiError(404, _pull_not_found(ref, e)) from e
            raise
    return None


def _pull_not_found(ref: refs.Reference, err: BaseException) -> str:
    # dockerd's texts for a missing tag and a missing repository; the CLI and clients print it
    if "MANIFEST_UNKNOWN" in str(err):
        return f"manifest for {ref.familiar()} not found: manifest unknown: manifest unknown"
    name = ref.familiar_repository
    return (
        f"pull access denied for {name}, repository does not exist or may require "
        f"'docker login': {err}"
    )


def _spool(req: Request, prefix: str) -> str:
    """The request body in a private temporary file under the store's tmp/ (a context, an
    archive to load or import): the engine's verbs read files."""
    tmpdir = req.engine.images.tmpdir
    os.makedirs(tmpdir, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=tmpdir, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                data = req.body.read(1 << 20)
                if not data:
                    break
                f.write(data)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _import(req: Request, src: str, out: LazyStream) -> Response | None:
    if src != "-":
        raise ApiError(501, f"importing from a URL is not supported: {src}")
    repo = req.arg("repo") or ""
    tag = req.arg("tag") or ""
    name = _pull_ref(repo, tag) if repo else None
    changes = req.query.get("changes", [])
    path = _spool(req, "import-")
    try:
        with reporting(out):
            # the history names the upload "-", as the CLI's import from stdin
            image_id = req.engine.import_image(path, name, changes, req.arg("platform") or None,
                                               req.arg("message") or "", source="-")  # fmt: skip
            out.send({"status": image_id})
    finally:
        os.unlink(path)
    return None


# -- push, tag, delete ------------------------------------------------------------------


def push(req: Request) -> Response | None:
    engine = req.engine
    registry_auth(req)
    name = req.params["name"]
    tag = req.arg("tag") or ""
    text = _pull_ref(name, tag) if tag else name
    try:
        ref = refs.parse(text)
        engine.image(text)
    except NotFound as e:
        raise ApiError(404, f"An image does not exist locally with the tag: {name}") from e
    from cove.registry.dist import push as do_push

    out = LazyStream(req)
    header = {"status": f"The push refers to repository [{ref.repository}]"}
    progress = JsonProgress(out, push=True, header=header)
    progress._head()  # dockerd says where it pushes before it looks at the registry
    with reporting(out):
        do_push(engine, text, quiet=True, tls_verify=not _insecure_ok(ref.domain),
                progress=progress)  # fmt: skip
    return None


def tag(req: Request) -> Response:
    repo = req.arg("repo")
    if not repo:
        raise ApiError(400, "repository name must have at least one component")
    req.engine.tag(_resolve(req.engine, req.params["name"]).id, _pull_ref(repo, req.arg("tag")))
    return Response(201, raw=b"")


def delete(req: Request) -> Response:
    name = req.params["name"]
    try:
        events = req.engine.remove_image(name, force=req.flag("force"))
    except NotFound as e:
        raise _no_such_image(name, e) from e
    return Response(200, [{what: value} for what, value in events])


def prune(req: Request) -> Response:
    from cove.api.filters import prune_filter

    filters = req.filters()
    dangling = [v.lower() for v in filters.get("dangling", ["true"])]
    all_images = dangling[-1] in ("0", "false")
    accepts = prune_filter(
        {k: v for k, v in filters.items() if k != "dangling"}, ("until", "label", "label!")
    )

    def only(img: Any) -> bool:
        labels = (img.config.config or {}).get("Labels") or {}
        return accepts(epoch_exact(img.config.created), labels)

    events, freed = req.engine.prune_images(all_images=all_images, only=only)
    deleted = [{what.capitalize(): value} for what, value in events]
    return Response(200, {"ImagesDeleted": deleted or None, "SpaceReclaimed": freed})


# -- load, get ----------------------------------------------------------------------------


def load(req: Request) -> Response | None:
    path = _spool(req, "load-")
    out = LazyStream(req)
    try:
        with reporting(out):
            for loaded in req.engine.load(path):
                if loaded.names:
                    for n in loaded.names:
                        out.send({"stream": f"Loaded image: {n.familiar()}\n"})
                else:
                    out.send({"stream": f"Loaded image ID: {loaded.image_id}\n"})
    finally:
        os.unlink(path)
    return None


def get(req: Request) -> Response | None:
    names = [req.params["name"]] if "name" in req.params else req.query.get("names", [])
    if not names:
        raise ApiError(400, "no images named")
    engine = req.engine
    for n in names:
        _resolve(engine, n)
    tmpdir = engine.images.tmpdir
    os.makedirs(tmpdir, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=tmpdir, prefix="save-")
    os.close(fd)
    try:
        engine.save(names, path)
        chunks = req.stream("application/x-tar")
        with open(path, "rb") as f:
            while True:
                data = f.read(1 << 20)
                if not data:
                    break
                chunks.write(data)
        chunks.close()
    finally:
        os.unlink(path)
    return None


def registry_auth(req: Request) -> dict[str, Any]:
    """``X-Registry-Auth`` (base64url JSON, possibly ``{}``); cove uses its own stored
    credentials (``cove login``), so this is read only to reject garbage."""
    raw = req.headers.get("X-Registry-Auth") or ""
    if not raw:
        return {}
    try:
        doc = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError as e:
        raise ApiError(400, "invalid X-Registry-Auth header") from e
    return doc if isinstance(doc, dict) else {}


NAME = r"(?P<name>.+)"
ROUTES: list[Route] = [
    ("GET", r"/images/json", list_images),
    ("POST", r"/images/create", create),
    ("POST", r"/images/load", load),
    ("GET", r"/images/get", get),
    ("POST", r"/images/prune", prune),
    ("GET", rf"/images/{NAME}/json", inspect_image),
    ("GET", rf"/images/{NAME}/history", history),
    ("GET", rf"/images/{NAME}/get", get),
    ("POST", rf"/images/{NAME}/push", push),
    ("POST", rf"/images/{NAME}/tag", tag),
    ("DELETE", rf"/images/{NAME}", delete),
]
