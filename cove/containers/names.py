"""Container names: generated from the id (Docker's adjective_scientist style), checked
against Docker's grammar, and changed (``docker rename``)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from cove.containers import lifecycle
from cove.errors import InvalidSpec, best_effort
from cove.state import Status

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine

_ADJECTIVES = (
    "agile",
    "brave",
    "calm",
    "eager",
    "fond",
    "gentle",
    "happy",
    "keen",
    "lucid",
    "merry",
    "nifty",
    "proud",
    "quiet",
    "sharp",
    "tender",
    "vivid",
    "witty",
    "zen",
)
_NAMES = (
    "babbage",
    "curie",
    "darwin",
    "euler",
    "fermi",
    "gauss",
    "hopper",
    "kepler",
    "lovelace",
    "meitner",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "turing",
    "wirth",
)


def container_name(cid: str) -> str:
    n = int(cid[:8], 16)
    return f"{_ADJECTIVES[n % len(_ADJECTIVES)]}_{_NAMES[(n >> 8) % len(_NAMES)]}_{cid[:4]}"


def valid_name(name: str) -> bool:
    # fullmatch: "$" alone also matches before a trailing newline ("name\n")
    return bool(re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name))


def check_name(name: str) -> None:
    if not valid_name(name):
        raise InvalidSpec(
            f"invalid container name {json.dumps(name)}, only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )


def rename(ce: ContainerEngine, ref: str, new: str) -> None:
    rec = ce.get(ref)
    new = new.removeprefix("/")
    check_name(new)
    if new == rec.name:
        raise InvalidSpec("renaming a container with the same name as its current name")
    lifecycle.rename(ce.store, rec.id, new)
    if rec.status in (Status.RUNNING, Status.PAUSED):
        with best_effort(f"rename container {rec.id} on its networks", __name__):
            ce.networks().rename(rec.id, new)
