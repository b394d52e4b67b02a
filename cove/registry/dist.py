"""pull, push and login against OCI distribution registries.

Every byte is verified while it streams: a manifest against the digest asked for (or the
``Docker-Content-Digest`` the registry states), blobs against their descriptors, layers'
uncompressed content against the config's diff ids. A blob is published into the store only
after its digest matched, and a pull that fails on content or auth sweeps what it fetched, so
the store is as before. An interrupted download stays as ``tmp/pull-<hex>.partial`` and is
resumed with ``Range`` by the next pull.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import sys
import threading
import tomllib
from dataclasses import dataclass
from typing import Any

from cove.errors import CorruptContent, InvalidSpec, NotFound
from cove.registry import auth
from cove.registry.client import (
    AuthError,
    Client,
    Endpoint,
    RegistryError,
    _is_localhost,
    read_bounded,
)
from cove.spec import image as spec
from cove.spec import reference as refs

ACCEPT = ", ".join(
    [spec.OCI_INDEX, spec.DOCKER_MANIFEST_LIST, spec.OCI_MANIFEST, spec.DOCKER_MANIFEST]
)
DOCKER_HUB_API = "registry-1.docker.io"
CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20  # a manifest or index (containerd's limit)
MAX_CONFIG = 8 << 20  # an image config
# digests cove can compute: anything else would verify nothing, so it is refused
DIGEST_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


@dataclass
class RegistryConf:
    insecure: set[str]
    mirrors: dict[str, list[str]]
    search: list[str]


def registries_conf() -> RegistryConf:
    """``/etc/cove/registries.conf`` (or ``$COVE_REGISTRIES_CONF``), containers-registries style:
    ``unqualified-search-registries``, ``[[registry]]`` with ``location``, ``insecure`` and
    ``[[registry.mirror]]`` entries."""
    path = os.environ.get("COVE_REGISTRIES_CONF", "/etc/cove/registries.conf")
    conf = RegistryConf(set(), {}, [])
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return conf
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidSpec(f"{path}: {e}") from e
    conf.search = [str(x) for x in doc.get("unqualified-search-registries", [])]
    for reg in doc.get("registry", []):
        loc = str(reg.get("location", ""))
        if reg.get("insecure"):
            conf.insecure.add(loc)
        conf.mirrors[loc] = [str(m.get("location")) for m in reg.get("mirror", [])]
    return conf


def endpoint(root: str, domain: str, *, tls_verify: bool = True) -> Endpoint:
    """Where to talk to for ``domain``: scheme, verification and credentials."""
    host = DOCKER_HUB_API if domain == refs.DEFAULT_DOMAIN else domain
    conf = registries_conf()
    insecure = domain in conf.insecure
    if not tls_verify and not insecure and not _is_localhost(domain):
        raise InvalidSpec(
            f"--tls-verify=false is only honoured for localhost; list {domain} as insecure in "
            f"/etc/cove/registries.conf to use it without TLS verification"
        )
    ep = Endpoint(host, insecure=insecure or not tls_verify, tls_verify=tls_verify and not insecure)
    ep.creds = auth.lookup(root, domain)
    return ep


def connect(root: str, domain: str, *, tls_verify: bool = True) -> Client:
    """A client whose scheme is settled: an insecure registry may speak plain HTTP."""
    ep = endpoint(root, domain, tls_verify=tls_verify)
    client = Client(ep)
    if ep.insecure:
        ep.scheme = "https"
        try:
            client.discard(client._send("GET", client.url("/v2/"), {}, None))
        except RegistryError:
            client.close()
            ep.scheme = "http"  # Docker's insecure-registries: HTTPS first, then HTTP
    return client


def _clone(client: Client) -> Client:
    ep = client.ep
    other = Endpoint(ep.host, ep.insecure, ep.tls_verify, ep.creds, dict(ep._tokens), {}, ep.scheme)
    return Client(other)


class Progress:
    """Per-blob lines: a bar that redraws on a TTY, one line per event otherwise.

    Faces that report elsewhere (``cove serve``'s Docker progress JSON) subclass it; the
    pull and push code only calls these methods."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.lock = threading.Lock()

    def say(self, digest: str, text: str) -> None:
        if self.quiet:
            return
        with self.lock:
            sys.stderr.write(f"{digest.removeprefix('sha256:')[:12]}: {text}\n")
            sys.stderr.flush()

    def queued(self, digest: str) -> None:
        """A blob this pull or push will transfer (before any of them starts)."""

    def summary(self, text: str) -> None:
        """The closing lines: ``Digest: ...``/``Status: ...`` or ``TAG: digest: ...``."""
        if not self.quiet:
            sys.stderr.write(text)

    def pulled(self, ref: refs.Reference, digest: str, fresh: bool) -> None:
        self.summary(f"Digest: {digest}\nStatus: downloaded {ref}\n")

    def pushed(self, tag: str, digest: str, size: int) -> None:
        self.summary(f"{tag}: digest: {digest} size: {size}\n")

    def bar(self, digest: str, done: int, total: int) -> None:
        if not self.tty or not total:
            return
        width = 30
        filled = int(width * done / total)
        with self.lock:
            sys.stderr.write(
                f"\r{digest.removeprefix('sha256:')[:12]}: [{'=' * filled}{' ' * (width - filled)}]"
                f" {done >> 20}/{total >> 20} MiB"
            )
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _media_type(resp: Any, data: bytes) -> str:
    ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip()
    if ctype in (*spec.INDEX_TYPES, *spec.MANIFEST_TYPES):
        return ctype
    try:
        import json

        doc = json.loads(data)
        if doc.get("mediaType"):
            return str(doc["mediaType"])
        return spec.OCI_INDEX if "manifests" in doc else spec.OCI_MANIFEST
    except ValueError as e:
        raise CorruptContent("the registry sent a manifest that is not JSON") from e


def check_algorithm(digest: str, what: str) -> None:
    """Refuse a digest whose algorithm cove cannot compute: it would verify nothing."""
    algorithm = digest.partition(":")[0]
    if algorithm not in DIGEST_ALGORITHMS:
        raise InvalidSpec(
            f"{what}: unsupported digest algorithm {algorithm!r} (want sha256 or sha512)"
        )


def _matches(data: bytes, digest: str) -> bool:
    algorithm, _, hexd = digest.partition(":")
    return DIGEST_ALGORITHMS[algorithm](data).hexdigest() == hexd.lower()


def _fetch_manifest(client: Client, repo: str, target: str, scope: str) -> tuple[bytes, str, str]:
    if ":" in target:
        check_algorithm(target, f"{client.ep.host}/{repo}@{target}")
    resp = client.request(
        "GET",
        f"/v2/{repo}/manifests/{target}",
        headers={"Accept": ACCEPT},
        scope=scope,
    )
    data = read_bounded(resp, MAX_MANIFEST, f"manifest {client.ep.host}/{repo}:{target}")
    digest = spec.sha256_digest(data)
    stated = resp.getheader("Docker-Content-Digest")
    if ":" in target and not _matches(data, target):
        raise CorruptContent(f"manifest {target} does not match its digest (got {digest})")
    if stated:
        check_algorithm(stated, f"manifest {client.ep.host}/{repo}:{target}")
        if not _matches(data, stated):
            raise CorruptContent(f"manifest {repo}:{target} does not match the digest {stated}")
    return data, digest, _media_type(resp, data)


def _choose(index: spec.Index, want: spec.Platform, what: str) -> spec.Descriptor:
    for d in index.manifests:
        p = d.platform
        if (
            p
            and p.os == want.os
            and p.architecture == want.architecture
            and (not want.variant or p.variant == want.variant)
        ):
            return d
    have = ", ".join(str(d.platform) for d in index.manifests if d.platform)
    raise NotFound(f"{what}: no image for {want} (the index has {have or 'no platforms'})")


class _Source:
    """The layer's bytes for one pass: what an earlier, interrupted pull left in the partial
    file, then the network; network bytes are appended to the partial file as they pass,
    so a pull killed now resumes from here next time."""

    def __init__(self, partial: Any, resp: Any, sink: Any, done: int, total: int,
                 tick: Any) -> None:  # fmt: skip
        self.partial, self.resp, self.sink = partial, resp, sink
        self.done, self.total, self.tick = done, total, tick
        # a test hook: die (SIGKILL) once this many network bytes of a layer are kept
        self.kill_after = int(os.environ.get("COVE_PULL_KILL_AFTER", "0"))

    def read(self, n: int = -1) -> bytes:
        size = CHUNK if n is None or n < 0 else n
        if self.partial is not None:
            data: bytes = self.partial.read(size)
            if data:
                return data
            self.partial.close()
            self.partial = None
        # never more than the descriptor's size from the network: a registry that keeps
        # sending is cut off here, and the digest check fails on what was kept
        data = self.resp.read(min(size, self.total - self.done)) if self.done < self.total else b""
        if data:
            view = memoryview(data)
            while view:  # an unbuffered file may take part of it
                view = view[self.sink.write(view) :]
            self.done += len(data)
            self.tick(self.done, self.total)
            if self.kill_after and self.done >= self.kill_after:
                import signal

                self.sink.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return data


def _download(
    client: Client,
    store: Any,
    repo: str,
    desc: spec.Descriptor,
    diff_id: str,
    scope: str,
    progress: Progress,
) -> None:
    """Layer ``desc``: stored and unpacked in one pass (verified against its digest and
    diff id as it streams), resuming after the bytes an interrupted pull kept."""
    compression = spec.LAYER_COMPRESSION.get(desc.media_type)
    if compression is None:
        raise InvalidSpec(f"layer {desc.digest} has unsupported media type {desc.media_type}")
    hexd = desc.digest.removeprefix("sha256:")
    from cove.sys.syscalls import flocked

    # one puller per blob: parallel pulls of one image wait here, then find it stored
    with flocked(os.path.join(store.locks, f"pull-{hexd}.lock")):
        if store.blobs.has(desc.digest):
            progress.say(desc.digest, "already exists")
            return
        _download_locked(client, store, repo, desc, diff_id, scope, progress, compression, hexd)


def _download_locked(
    client: Client,
    store: Any,
    repo: str,
    desc: spec.Descriptor,
    diff_id: str,
    scope: str,
    progress: Progress,
    compression: str,
    hexd: str,
) -> None:
    partial = os.path.join(store.tmpdir, f"pull-{hexd}.partial")
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    headers = {"Range": f"bytes={have}-"} if 0 < have < desc.size else {}
    resp = client.request(
        "GET", f"/v2/{repo}/blobs/{desc.digest}", headers=headers, scope=scope, ok=(200, 206)
    )
    resumed = resp.status == 206 and have > 0
    if resumed:
        progress.say(desc.digest, f"resuming after {have} of {desc.size} bytes")
    # unbuffered: every byte handed on is in the file, which becomes the blob itself
    sink = open(partial, "ab" if resumed else "wb", buffering=0)
    try:
        src = _Source(open(partial, "rb") if resumed else None, resp, sink,
                      have if resumed else 0, desc.size,
                      lambda d, t: progress.bar(desc.digest, d, t))  # fmt: skip
        store.ingest_layer(
            src, compression, what=f"layer {desc.digest} from {client.ep.host}/{repo}",
            expected_digest=desc.digest, expected_size=desc.size, expected_diff_id=diff_id,
            blob_file=partial,
        )  # fmt: skip
    except CorruptContent:
        sink.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)  # bad bytes are not worth resuming from
        raise
    finally:
        sink.close()
    progress.say(desc.digest, "pull complete")  # the partial file is the blob now


def pull(
    engine: Any,
    text: str,
    *,
    platform: str | None = None,
    quiet: bool = False,
    tls_verify: bool = True,
    progress: Progress | None = None,
) -> str:
    """``cove pull``: returns the image id."""
    ref = refs.parse(text)
    conf = registries_conf()
    candidates = [ref]
    if "/" not in text.split("@")[0].split(":")[0] and conf.search:
        # an unqualified name: the search registries, in order (containers-registries.conf)
        candidates = [refs.parse(f"{host}/{text}") for host in conf.search]
    last: Exception | None = None
    for cand in candidates:
        for domain in [*conf.mirrors.get(cand.domain, []), cand.domain]:
            try:
                return _pull_one(engine, cand, domain, platform=platform, quiet=quiet,
                                 tls_verify=tls_verify, progress=progress)  # fmt: skip
            except (RegistryError, NotFound) as e:
                if isinstance(e, AuthError) and len(candidates) == 1:
                    raise
                last = e
    assert last is not None
    raise last


def _pull_one(
    engine: Any,
    ref: refs.Reference,
    domain: str,
    *,
    platform: str | None,
    quiet: bool,
    tls_verify: bool,
    progress: Progress | None = None,
) -> str:
    """Pull ``ref`` from ``domain`` (the reference's own registry or one of its mirrors)."""
    store = engine.images
    store.ensure()
    client = connect(engine.root, domain, tls_verify=tls_verify)
    progress = progress or Progress(quiet)
    repo = ref.path
    scope = f"repository:{repo}:pull"
    try:
        with store.ingest_lock():
            target = ref.digest or ref.tag or refs.DEFAULT_TAG
            data, digest, mtype = _fetch_manifest(client, repo, target, scope)
            if mtype in spec.INDEX_TYPES:
                want = spec.Platform.parse(platform) if platform else spec.Platform.host()
                chosen = _choose(spec.Index.parse(data, f"index of {ref}"), want, str(ref))
                data, digest, mtype = _fetch_manifest(client, repo, chosen.digest, scope)
            manifest = spec.Manifest.parse(data, f"manifest of {ref}")
            if not store.blobs.has(manifest.config.digest):
                cfg = manifest.config
                what = f"config {cfg.digest} of {ref}"
                if cfg.size > MAX_CONFIG:
                    raise RegistryError(f"{what} is larger than {MAX_CONFIG >> 20} MiB: refused")
                resp = client.request("GET", f"/v2/{repo}/blobs/{cfg.digest}", scope=scope)
                # no more than the descriptor's size is read; put() checks size and digest
                store.blobs.put(read_bounded(resp, MAX_CONFIG, what), cfg.digest)
            config = spec.ImageConfig.parse(store.blobs.read(manifest.config.digest))
            if len(config.diff_ids) != len(manifest.layers):
                raise CorruptContent(f"{ref}: config and manifest disagree on the layer count")
            todo = []
            for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
                if store.blobs.has(desc.digest):
                    progress.say(desc.digest, "already exists")
                else:
                    todo.append((desc, diff_id))
                    progress.queued(desc.digest)
            # Docker's "Downloaded newer image": the name did not name this manifest before
            fresh = bool(todo) or not store.blobs.has(digest)
            if ref.tag and not ref.digest:
                try:
                    fresh = fresh or store.resolve(str(ref)).manifest_digest != digest
                except NotFound:
                    fresh = True
            errors: list[BaseException] = []
            if todo:
                with concurrent.futures.ThreadPoolExecutor(max_workers=min(3, len(todo))) as ex:
                    futs = [ex.submit(_download, _clone(client), store, repo, d, diff, scope,
                                      progress) for d, diff in todo]  # fmt: skip
                    for fut in futs:
                        exc = fut.exception()
                        if exc is not None:
                            errors.append(exc)
            if errors:
                raise errors[0]
            for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
                if not store.has_layer(diff_id):
                    store.unpack_layer(desc, diff_id)
            store.blobs.put(data, digest)
            names = [ref] if ref.tag and not ref.digest else []
            store.add_image(spec.Descriptor(mtype, digest, len(data)), names)
    except (CorruptContent, AuthError):
        with contextlib.suppress(Exception):
            store.collect()  # what this pull fetched before the failure goes again
        raise
    finally:
        client.close()
    progress.pulled(ref, digest, fresh)
    image_id = str(config_digest(store, digest))
    from cove.sys import events

    events.emit(engine.root, "image", "pull", str(ref), {"name": str(ref)})
    return image_id


def config_digest(store: Any, manifest_digest: str) -> str:
    m = spec.Manifest.parse(store.blobs.read(manifest_digest))
    return m.config.digest


def push(
    engine: Any,
    source: str,
    dest: str | None = None,
    *,
    quiet: bool = False,
    tls_verify: bool = True,
    progress: Progress | None = None,
) -> str:
    """``cove push``: returns the manifest digest."""
    img = engine.image(source)
    ref = refs.parse(dest or source)
    if ref.digest:
        raise InvalidSpec(f"cannot push to a digest reference: {ref}")
    tag = ref.tag or refs.DEFAULT_TAG
    store = engine.images
    client = connect(engine.root, ref.domain, tls_verify=tls_verify)
    progress = progress or Progress(quiet)
    repo = ref.path
    others = sorted({n.path for n in img.names if n.domain == ref.domain and n.path != repo})
    scope = f"repository:{repo}:pull,push"
    try:
        index = store.platform_index(img)
        # a multi-platform image: every platform's manifest goes up by digest first, then
        # the index under the tag (a registry refuses an index naming a manifest it lacks)
        children = [store.load_image(m.digest, ()) for m in index.manifests] if index else [img]
        for child in children:
            for desc in child.manifest.layers:
                progress.queued(desc.digest)
        for child in children:
            for desc in [*child.manifest.layers, child.manifest.config]:
                _push_blob(client, store, repo, desc, scope, others, progress)
            if index is not None:
                resp = client.request(
                    "PUT", f"/v2/{repo}/manifests/{child.manifest_digest}",
                    headers={"Content-Type": child.manifest.media_type},
                    body=store.blobs.read(child.manifest_digest), scope=scope, ok=(201, 200),
                )  # fmt: skip
                client.discard(resp)
        digest = img.index_digest if index is not None else img.manifest_digest
        data = store.blobs.read(digest)
        mtype = index.media_type if index is not None else img.manifest.media_type
        resp = client.request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            headers={"Content-Type": mtype},
            body=data,
            scope=scope,
            ok=(201, 200),
        )
        client.discard(resp)
    finally:
        client.close()
    progress.pushed(tag, digest, len(data))
    from cove.sys import events

    events.emit(engine.root, "image", "push", str(ref), {"name": str(ref)})
    return str(digest)


def _push_blob(
    client: Client,
    store: Any,
    repo: str,
    desc: spec.Descriptor,
    scope: str,
    others: list[str],
    progress: Progress,
) -> None:
    head = client.request("HEAD", f"/v2/{repo}/blobs/{desc.digest}", scope=scope, ok=(200, 404))
    client.discard(head)
    if head.status == 200:
        progress.say(desc.digest, "already exists")
        return
    for other in others:
        mscope = f"{scope} repository:{other}:pull"
        resp = client.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?mount={desc.digest}&from={other}",
            scope=mscope,
            ok=(201, 202),
        )
        client.discard(resp)
        if resp.status == 201:
            progress.say(desc.digest, f"mounted from {other}")
            return
        _cancel(client, resp, scope)
    resp = client.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, ok=(202,))
    client.discard(resp)
    location = resp.getheader("Location") or ""
    if not location:
        raise RegistryError(f"{client.ep.host}: upload started without a Location")
    sep = "&" if "?" in location else "?"
    src = store.blobs.open(desc.digest, desc.size)
    try:
        resp = client.request(
            "PUT", f"{_absolute(client, location)}{sep}digest={desc.digest}",
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(desc.size)},
            body=_Reader(src), scope=scope, ok=(201, 204),
        )  # fmt: skip
        client.discard(resp)
    finally:
        src.close()
    progress.say(desc.digest, "pushed")


def _absolute(client: Client, location: str) -> str:
    return location if "://" in location else client.url(location)


def _cancel(client: Client, resp: Any, scope: str) -> None:
    location = resp.getheader("Location")
    if location:
        with contextlib.suppress(RegistryError):
            client.discard(client.request("DELETE", _absolute(client, location), scope=scope,
                                          ok=(204, 200, 404)))  # fmt: skip


class _Reader:
    """A file-like body for http.client that never reads past the blob."""

    def __init__(self, src: Any) -> None:
        self.src = src

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.src.read(CHUNK if n < 0 else n)
        return data


def login(engine: Any, registry: str, user: str, password: str, *, tls_verify: bool = True) -> str:
    """Check the credentials against the registry, then store them; the file written."""
    registry = registry.removeprefix("https://").removeprefix("http://").rstrip("/")
    domain = refs.parse(f"{registry}/x").domain
    client = connect(engine.root, domain, tls_verify=tls_verify)
    client.ep.creds = (user, password)
    try:
        client.ping()
    finally:
        client.close()
    return auth.store(engine.root, domain, user, password)


def logout(engine: Any, registry: str) -> bool:
    registry = registry.removeprefix("https://").removeprefix("http://").rstrip("/")
    domain = refs.parse(f"{registry}/x").domain
    return auth.remove(engine.root, domain)
