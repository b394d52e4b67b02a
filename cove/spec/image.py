"""OCI image-spec v1.1 types (and the Docker schema2 equivalents cove accepts).

Pure data: parsing validates shape and media types; serialisation is
canonical (sorted keys, no spaces) so that the same content always has the
same digest. No I/O.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from cove.errors import InvalidSpec
from cove.spec.reference import SHA256_RE

# OCI media types
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
# Docker schema2 media types
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)

# compression named by a layer media type: "" (none), "gzip" or "zstd"
LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER: "",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    DOCKER_LAYER: "",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_FOREIGN_LAYER: "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd+chunked": "zstd",
}
OCI_LAYER_FOR = {"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_CREATED = "org.opencontainers.image.created"

# Go's GOARCH names, as OCI platforms use them.
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    # CPython's built-in SHA-256 for the small documents (manifests, configs) every run
    # reads: importing hashlib loads OpenSSL's libcrypto first (~3 ms of a ~40 ms start)
    try:
        from _sha256 import sha256
    except ImportError:  # a build without it: hashlib's own choice
        from hashlib import sha256
    hexdigest: str = sha256(data).hexdigest()
    return "sha256:" + hexdigest


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
        raise InvalidSpec(f"unsupported or malformed digest {digest!r}")
    return digest


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        return f"{out}/{self.variant}" if self.variant else out

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` or ``arch``; machine names are mapped to GOARCH."""
        parts = text.strip().lower().split("/")
        if len(parts) == 1 and parts[0]:
            parts = ["linux", parts[0]]
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidSpec(f"invalid platform {text!r}: want os/arch[/variant]")
        arch = _GOARCH.get(parts[1], parts[1])
        variant = parts[2] if len(parts) == 3 else ""
        if arch == "arm64" and variant == "v8":
            variant = ""
        return cls(parts[0], arch, variant)

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine.lower()
        arch = _GOARCH.get(machine, machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, doc: Any) -> Platform:
        if not isinstance(doc, dict):
            return cls()
        return cls(
            str(doc.get("os", "linux")),
            str(doc.get("architecture", "amd64")),
            str(doc.get("variant", "")),
        )


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    platform: Platform | None = field(default=None, compare=False)
    urls: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @classmethod
    def from_json(cls, doc: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(doc, dict):
            raise InvalidSpec(f"{what} is not an object")
        try:
            media_type = doc.get("mediaType", "")
            digest = check_digest(doc["digest"])
            size = doc["size"]
        except KeyError as e:
            raise InvalidSpec(f"{what} lacks field {e.args[0]!r}") from e
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidSpec(f"{what} {digest} has an invalid size {size!r}")
        annotations = doc.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise InvalidSpec(f"{what} {digest} has invalid annotations")
        platform = Platform.from_json(doc["platform"]) if "platform" in doc else None
        return cls(
            str(media_type),
            digest,
            size,
            {str(k): str(v) for k, v in annotations.items()},
            platform,
            tuple(doc.get("urls") or ()),
        )


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidSpec(f"{what} is not valid json: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidSpec(f"{what} is not a json object")
    return doc


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, what: str = "manifest") -> Manifest:
        doc = _load_json(data, what)
        if doc.get("schemaVersion") != 2:
            raise InvalidSpec(f"{what} has unsupported schemaVersion {doc.get('schemaVersion')!r}")
        media_type = doc.get("mediaType") or OCI_MANIFEST
        if media_type not in MANIFEST_TYPES:
            raise InvalidSpec(f"{what} has unsupported media type {media_type!r}")
        config = Descriptor.from_json(doc.get("config"), f"{what} config")
        if config.media_type not in CONFIG_TYPES:
            raise InvalidSpec(f"{what} config has unsupported media type {config.media_type!r}")
        layers_doc = doc.get("layers")
        if not isinstance(layers_doc, list):
            raise InvalidSpec(f"{what} has no layers list")
        layers = tuple(Descriptor.from_json(d, f"{what} layer") for d in layers_doc)
        for layer in layers:
            if layer.media_type not in LAYER_COMPRESSION:
                raise InvalidSpec(
                    f"{what} layer {layer.digest} has unsupported media type {layer.media_type!r}"
                )
        return cls(media_type, config, layers, dict(doc.get("annotations") or {}))

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return canonical_json(doc)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes, what: str = "index") -> Index:
        doc = _load_json(data, what)
        if doc.get("schemaVersion") != 2:
            raise InvalidSpec(f"{what} has unsupported schemaVersion {doc.get('schemaVersion')!r}")
        media_type = doc.get("mediaType") or OCI_INDEX
        if media_type not in INDEX_TYPES:
            raise InvalidSpec(f"{what} has unsupported media type {media_type!r}")
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidSpec(f"{what} has no manifests list")
        return cls(
            media_type,
            tuple(Descriptor.from_json(d, f"{what} entry") for d in entries),
            dict(doc.get("annotations") or {}),
        )

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return canonical_json(doc)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config cove reads; ``raw`` keeps the document whole."""

    raw: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes, what: str = "image config") -> ImageConfig:
        doc = _load_json(data, what)
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise InvalidSpec(f"{what} has no rootfs of type layers")
        diff_ids = rootfs.get("diff_ids")
        if not isinstance(diff_ids, list):
            raise InvalidSpec(f"{what} has no rootfs.diff_ids list")
        for d in diff_ids:
            check_digest(d)
        return cls(doc)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.raw["rootfs"]["diff_ids"])

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.raw.get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def platform(self) -> Platform:
        return Platform(
            str(self.raw.get("os", "linux")),
            str(self.raw.get("architecture", "amd64")),
            str(self.raw.get("variant", "")),
        )

    @property
    def created(self) -> str:
        return str(self.raw.get("created", ""))

    @property
    def history(self) -> list[dict[str, Any]]:
        hist = self.raw.get("history")
        return [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []


def new_config(
    diff_ids: list[str],
    platform: Platform,
    created: str,
    container_config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An OCI image config document for a fresh image."""
    doc: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "config": container_config or {},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": history or [],
    }
    if platform.variant:
        doc["variant"] = platform.variant
    return doc
