"""Registry credentials in Docker's ``config.json`` format (``auths``: base64 user:password).

cove writes ``<root>/auth.json`` (or ``$COVE_AUTH_FILE``), mode 0600, atomically, and reads
that first, then Podman's (``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``)
and Docker's (``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``) files.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile

from cove.errors import InvalidSpec

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")


def auth_file(root: str) -> str:
    return os.environ.get("COVE_AUTH_FILE") or os.path.join(root, "auth.json")


def _read_files(root: str) -> list[str]:
    files = [auth_file(root)]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    docker = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    files.append(os.path.join(docker, "config.json"))
    return files


def _keys(host: str) -> tuple[str, ...]:
    return DOCKER_HUB_KEYS if host in ("docker.io", "registry-1.docker.io") else (host,)


def _load(path: str) -> dict[str, object]:
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def lookup(root: str, host: str) -> tuple[str, str] | None:
    for path in _read_files(root):
        auths = _load(path).get("auths")
        if not isinstance(auths, dict):
            continue
        for key in _keys(host):
            entry = auths.get(key) or auths.get(f"https://{key}")
            if isinstance(entry, dict) and entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
                except ValueError:
                    continue
                return user, password
    return None


def _write(path: str, doc: dict[str, object]) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".auth-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def store(root: str, host: str, user: str, password: str) -> str:
    if not user or ":" in user:
        raise InvalidSpec("a username is required and may not contain ':'")
    path = auth_file(root)
    doc = _load(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    auths[_keys(host)[0]] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    doc["auths"] = auths
    _write(path, doc)
    return path


def remove(root: str, host: str) -> bool:
    path = auth_file(root)
    doc = _load(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return False
    found = False
    for key in _keys(host):
        for k in (key, f"https://{key}"):
            if k in auths:
                del auths[k]
                found = True
    if found:
        _write(path, doc)
    return found
