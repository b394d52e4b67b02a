"""Named and anonymous volumes: directories under ``<root>/volumes/<name>/_data``.

Records live in the state database (the ``volumes`` table); a volume is in use while a
container's recorded mounts name it. Creation makes the directory before the row, so a
crash in between leaves a directory that the next create of that name adopts.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from typing import Any

from cove.containers.record import config_of
from cove.errors import Conflict, InvalidSpec, NotFound
from cove.state import Store, Volume, now
from cove.sys import events, private

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


class Volumes:
    def __init__(self, root: str, store: Store) -> None:
        self.dir = os.path.join(root, "volumes")
        self.store = store

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name, "_data")

    def create(
        self,
        name: str | None = None,
        *,
        labels: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        anonymous: bool = False,
    ) -> tuple[Volume, bool]:
        """The volume (made if missing) and whether this call made it (Docker: idempotent)."""
        if name is None:
            name = os.urandom(32).hex()  # secrets.token_hex's source; secrets loads OpenSSL
            anonymous = True
        if not valid_name(name):
            raise InvalidSpec(
                f'"{name}" includes invalid characters for a local volume name, only '
                f'"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed'
            )
        for key in options or {}:
            raise InvalidSpec(f"invalid option key: {key!r}")
        # volumes/ and volumes/<name>/ are root's alone (a volume may hold a container's
        # setuid files); _data/ is the volume's content and keeps the mode it is given
        private.make_dir(self.dir, 0o700)
        private.make_dir(os.path.dirname(self.path(name)), 0o700)
        with contextlib.suppress(FileExistsError):  # a crash's leftover is adopted as is
            private.make_dir(self.path(name), 0o755, parents=False)
        vol = Volume(name, now(), anonymous, dict(labels or {}), dict(options or {}))
        made = self.store.add_volume(vol)
        if made:
            events.emit(os.path.dirname(self.dir), "volume", "create", name, {"driver": "local"})
        return (vol if made else self.store.get_volume(name)), made

    def get(self, name: str) -> Volume:
        return self.store.get_volume(name)

    def all(self) -> list[Volume]:
        return self.store.volumes()

    def users(self, name: str) -> list[str]:
        return [
            r.id
            for r in self.store.all()
            if any(m.get("Type") == "volume" and m.get("Name") == name for m in config_of(r).mounts)
        ]

    def inspect(self, name: str) -> dict[str, Any]:
        import datetime

        v = self.get(name)
        created = datetime.datetime.fromtimestamp(v.created, datetime.UTC).isoformat()
        return {
            "CreatedAt": created.replace("+00:00", "Z"),
            "Driver": "local",
            "Labels": v.labels or None,
            "Mountpoint": self.path(v.name),
            "Name": v.name,
            "Options": v.options or None,
            "Scope": "local",
        }

    def remove(self, name: str, *, force: bool = False) -> None:
        """Docker's rules: an in-use volume is never removed; ``force`` only makes a missing
        one not an error."""
        try:
            self.get(name)
        except NotFound:
            if force:
                return
            raise
        users = self.users(name)
        if users:
            ids = ", ".join(users)
            raise Conflict(f"remove {name}: volume is in use - [{ids}]")
        self.store.remove_volume(name)
        import shutil  # here: every --rm run consults volumes, few remove one

        shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
        events.emit(os.path.dirname(self.dir), "volume", "destroy", name, {"driver": "local"})

    def prune(
        self, *, all_volumes: bool = False, only: Callable[[Volume], bool] | None = None
    ) -> tuple[list[str], int]:
        """Unused anonymous volumes (all unused ones with ``all_volumes``), as Docker 23+;
        ``only``: those it accepts too (the API's label filters)."""
        removed: list[str] = []
        freed = 0
        for v in self.all():
            if only is not None and not only(v):
                continue
            if (v.anonymous or all_volumes) and not self.users(v.name):
                freed += _du(self.path(v.name))
                try:
                    self.remove(v.name)
                except (Conflict, NotFound):
                    continue
                removed.append(v.name)
        return removed, freed


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total
