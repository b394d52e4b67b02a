"""``cove system check [--repair] [--quick]`` (Podman's verb): verify a state root, rebuild
what can be rebuilt from what is on disk.

What is checked, and what ``--repair`` does about it:
- the state database (SQLite's integrity_check, quick_check with --quick): a damaged file is
  set aside as ``state.db.corrupt-<time>`` (never deleted), a fresh one made, the rows still
  readable in the old file copied over, and the container and volume rows rebuilt from their
  mirrors (``record.json`` in each bundle, ``volume.json`` beside each volume's ``_data``,
  written by ``cove.state`` on every change of a row);
- the container records against their bundles (a bundle with a mirror but no row gets its row
  back) and against the kernel (a record whose process and monitor are gone is reconciled);
- the image index (an unreadable one is set aside and rebuilt from the manifests among the
  blobs, named from the container records that used them), every blob's digest (skipped with
  --quick; a damaged blob cannot be rebuilt: it is reported with the images that use it), and
  every layer directory against its recorded entry count and size (a damaged one is unpacked
  again from its blob, after the blob is verified).

Nothing the user made is deleted: damaged files are set aside or replaced by a verified copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from cove.engine import Engine
from cove.errors import CoveError
from cove.image.store import layer_figures
from cove.spec import image as spec
from cove.spec import reference as refs
from cove.state import (
    RECORD_FILE,
    VOLUME_FILE,
    Record,
    Store,
    Volume,
    is_corrupt,
    quick_check,
    record_from_json,
)


@dataclass
class Finding:
    """One problem: ``what`` is one line; ``fixed`` says how --repair dealt with it."""

    what: str
    fixed: str = ""


class Checker:
    def __init__(self, engine: Engine, *, repair: bool = False, quick: bool = False) -> None:
        self.engine = engine
        self.root = engine.root
        self.repair = repair
        self.quick = quick
        self.findings: list[Finding] = []
        self.stamp = time.strftime("%Y%m%dT%H%M%S")

    def _found(self, what: str, fixed: str = "") -> Finding:
        f = Finding(what, fixed)
        self.findings.append(f)
        return f

    def run(self) -> list[Finding]:
        records = self._database()
        self._index(records)
        self._blobs()
        self._layers()
        if records is not None:  # a sound (or rebuilt) database
            self._containers()
        return self.findings

    # -- the state database ---------------------------------------------------

    def _database(self) -> list[Record] | None:
        """Check (and with --repair rebuild) the database; the records, None if unreadable."""
        path = os.path.join(self.root, "state.db")
        if not os.path.exists(path):
            if not (self.repair and self._mirrors()):
                return None  # a root without containers yet: nothing to check, nothing made
            self._found(f"state database {path} is missing", "rebuilt")
            self._rebuild(None)  # lost altogether, but the bundles remember
            return self._records()
        damage = self._integrity(path)
        if not damage:
            return self._records()
        f = self._found(f"state database {path} is damaged: {damage}")
        if not self.repair:
            return None
        aside = self._set_aside(path)
        f.fixed = f"set aside as {aside}, rebuilt"
        self._rebuild(aside)
        return self._records()

    def _integrity(self, path: str) -> str:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as e:
            return str(e)
        try:
            if self.quick:
                return quick_check(db)
            rows = db.execute("PRAGMA integrity_check").fetchall()
            return "" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:3])
        except sqlite3.DatabaseError as e:
            if is_corrupt(e):
                return str(e)
            raise
        finally:
            db.close()

    def _records(self) -> list[Record]:
        store = Store(self.root)
        try:
            return store.all()
        finally:
            store.close()

    def _set_aside(self, path: str) -> str:
        """Rename the damaged file and its WAL and shared memory files, keeping them."""
        aside = f"{path}.corrupt-{self.stamp}"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(path + suffix, aside + suffix)
        return aside

    def _mirrors(self) -> list[str]:
        cdir = os.path.join(self.root, "containers")
        try:
            names = os.listdir(cdir)
        except FileNotFoundError:
            return []
        return [n for n in names if os.path.isfile(os.path.join(cdir, n, RECORD_FILE))]

    def _rebuild(self, old: str | None) -> None:
        """A fresh database: what the old file still yields, then the mirrors over it."""
        store = Store(self.root)
        try:
            if old is not None:
                self._salvage(old, store.db)
            self._restore_volumes(store)
        finally:
            store.close()

    def _salvage(self, old: str, new: sqlite3.Connection) -> None:
        """Copy every row still readable in ``old`` (tables other than containers and
        volumes too: networks, leases, ports, vms); the tables it had are made first."""
        try:
            src = sqlite3.connect(f"file:{old}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as e:
            self._found(f"state database {old}: nothing could be read ({e})")
            return
        try:
            try:
                tables = src.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                ).fetchall()
            except sqlite3.DatabaseError as e:
                self._found(f"state database {old}: its schema is unreadable ({e})")
                return
            for name, sql in tables:
                if sql and "IF NOT EXISTS" not in sql.upper():
                    sql = sql.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
                with contextlib.suppress(sqlite3.Error):
                    new.execute(sql)
                self._copy_table(src, new, name, old)
        finally:
            src.close()

    def _copy_table(self, src: sqlite3.Connection, new: sqlite3.Connection, name: str,
                    old: str) -> None:  # fmt: skip
        cols = [r[1] for r in new.execute(f'PRAGMA table_info("{name}")')]
        try:
            have = [r[1] for r in src.execute(f'PRAGMA table_info("{name}")')]
        except sqlite3.DatabaseError:
            have = []
        cols = [c for c in cols if c in have]
        if not cols:
            return
        quoted = ", ".join(f'"{c}"' for c in cols)
        copied = 0
        try:
            for row in src.execute(f'SELECT {quoted} FROM "{name}"'):
                new.execute(
                    f'INSERT OR IGNORE INTO "{name}" ({quoted}) VALUES '
                    f"({', '.join('?' * len(cols))})",
                    row,
                )
                copied += 1
        except sqlite3.DatabaseError as e:
            if name in ("containers", "volumes"):
                return  # rebuilt from the mirrors instead
            self._found(f"state database {old}: table {name} unreadable after {copied} rows "
                        f"({e})")  # fmt: skip

    def _restore_volumes(self, store: Store) -> None:
        vdir = os.path.join(self.root, "volumes")
        try:
            names = sorted(os.listdir(vdir))
        except FileNotFoundError:
            return
        known = {v.name for v in store.volumes()}
        for name in names:
            if name in known or not os.path.isdir(os.path.join(vdir, name, "_data")):
                continue
            try:
                with open(os.path.join(vdir, name, VOLUME_FILE), "rb") as f:
                    doc = json.load(f)
                vol = Volume(name, float(doc["created"]), bool(doc["anonymous"]),
                             dict(doc["labels"]), dict(doc["options"]))  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError):
                st = os.stat(os.path.join(vdir, name))
                vol = Volume(name, st.st_mtime, _is_hex64(name), {}, {})
                self._found(f"volume {name}: its labels and options are lost",
                            "recorded again without them")  # fmt: skip
            store.add_volume(vol)

    # -- containers -----------------------------------------------------------

    def _containers(self) -> None:
        from cove.containers.engine import ContainerEngine
        from cove.containers.lifecycle import alive

        ce = ContainerEngine(self.engine)
        try:
            rows = {r.id: r for r in ce.store.all()}
            cdir = os.path.join(self.root, "containers")
            with contextlib.suppress(FileNotFoundError):
                for cid in sorted(os.listdir(cdir)):
                    if cid not in rows:
                        self._orphan_bundle(ce, cid)
            for rec in list(ce.store.all()):
                if not os.path.isdir(ce.cdir(rec.id)):
                    self._found(f"container {rec.name} ({rec.id[:12]}): its bundle "
                                f"{ce.cdir(rec.id)} is missing")  # fmt: skip
                    continue
                stale = ""
                if rec.op and not alive(rec.op_pid, rec.op_start):
                    stale = f"its {rec.op} was left half-done by a dead command"
                elif rec.status.can_kill() and not alive(rec.monitor_pid, rec.monitor_start):
                    stale = f"recorded {rec.status} but its monitor is gone"
                if not stale:
                    continue
                f = self._found(f"container {rec.name} ({rec.id[:12]}): {stale}")
                if self.repair:
                    try:
                        now = ce.reconcile(rec)
                        f.fixed = f"reconciled: now {now.status}"
                    except CoveError as e:
                        f.fixed = f"reconciled: {e}"
        finally:
            ce.store.close()

    def _orphan_bundle(self, ce: Any, cid: str) -> None:
        path = os.path.join(ce.cdir(cid), RECORD_FILE)
        try:
            with open(path, "rb") as fh:
                rec = record_from_json(json.load(fh))
        except FileNotFoundError:
            self._found(f"container {cid[:12]}: bundle {ce.cdir(cid)} has no record and no "
                        f"{RECORD_FILE} to rebuild it from")  # fmt: skip
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._found(f"container {cid[:12]}: {path} is unreadable ({e})")
            return
        f = self._found(f"container {rec.name} ({cid[:12]}): no record in the database")
        if not self.repair:
            return
        from cove.containers import lifecycle

        try:
            lifecycle.add(ce.store, rec)
        except CoveError as e:
            f.fixed = ""
            self._found(f"container {cid[:12]}: cannot be recorded again: {e}")
            return
        f.fixed = f"rebuilt from {path}"

    # -- images ---------------------------------------------------------------

    def _index(self, records: list[Record] | None) -> None:
        store = self.engine.images
        try:
            entries = store.entries()
        except (CoveError, ValueError, OSError) as e:
            f = self._found(f"image index {store.index_path} is unreadable: {e}")
            if self.repair:
                f.fixed = self._rebuild_index(records or [])
            return
        for entry in entries:
            what = entry.name.familiar() if entry.name else entry.manifest.digest
            for digest in self._image_blobs(entry.manifest.digest):
                if not store.blobs.has(digest):
                    self._found(f"image {what}: blob {digest} is missing (pull or import the "
                                "image again)")  # fmt: skip

    def _image_blobs(self, manifest_digest: str) -> list[str]:
        store = self.engine.images
        try:
            m = spec.Manifest.parse(store.blobs.read(manifest_digest), manifest_digest)
        except CoveError:
            return [manifest_digest]  # missing or damaged: the blob check names it
        return [manifest_digest, m.config.digest, *(layer.digest for layer in m.layers)]

    def _rebuild_index(self, records: list[Record]) -> str:
        """The images are the manifests among the blobs whose blobs are all there; names
        come back from the container records that used them, the others stay untagged."""
        store = self.engine.images
        names: dict[str, list[refs.Reference]] = {}
        for rec in records:
            with contextlib.suppress(CoveError):
                ref = refs.parse(rec.image)
                if ref not in names.setdefault(rec.image_id, []):
                    names[rec.image_id].append(ref)
        found = 0
        with store.edit_index() as entries:
            aside = f"{store.index_path}.corrupt-{self.stamp}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(store.index_path, aside)
            entries.clear()
            for digest in sorted(store.blobs.digests()):
                try:
                    data = store.blobs.read(digest)
                    doc = json.loads(data)
                    if not isinstance(doc, dict) or "config" not in doc or "layers" not in doc:
                        continue
                    m = spec.Manifest.parse(data, digest)
                except (CoveError, ValueError):
                    continue
                if not all(store.blobs.has(d) for d in self._image_blobs(digest)):
                    continue
                desc = spec.Descriptor(m.media_type, digest, len(data))
                from cove.image.store import IndexEntry

                refs_for: list[refs.Reference | None] = [*names.get(m.config.digest, [])]
                entries.extend(IndexEntry(desc, n) for n in refs_for or [None])
                found += 1
        return f"set aside as {aside}, rebuilt with {found} images"

    def _blobs(self) -> None:
        if self.quick:
            return
        blobs = self.engine.images.blobs
        for digest in sorted(blobs.digests()):
            h = hashlib.sha256()
            try:
                with open(blobs.path(digest), "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError as e:
                self._found(f"blob {digest}: unreadable ({e.strerror})")
                continue
            if "sha256:" + h.hexdigest() != digest:
                users = self._users_of_blob(digest)
                self._found(f"blob {digest} does not match its digest (used by "
                            f"{users or 'no image'}: pull or import it again)")  # fmt: skip

    def _users_of_blob(self, digest: str) -> str:
        out = []
        with contextlib.suppress(CoveError, ValueError, OSError):
            for e in self.engine.images.entries():
                if digest in self._image_blobs(e.manifest.digest):
                    out.append(e.name.familiar() if e.name else e.manifest.digest[:19])
        return ", ".join(sorted(set(out)))

    def _layers(self) -> None:
        store = self.engine.images
        wanted: dict[str, spec.Descriptor] = {}  # diff id -> its blob's descriptor
        with contextlib.suppress(CoveError, ValueError, OSError):
            for img in _loadable_images(store):
                for desc, diff_id in zip(img.manifest.layers, img.config.diff_ids, strict=False):
                    wanted[diff_id] = desc
        try:
            names = sorted(os.listdir(store.layers_dir))
        except FileNotFoundError:
            names = []
        for name in names:
            path = os.path.join(store.layers_dir, name)
            if name.endswith(".json") or ".damaged-" in name or not os.path.isdir(path):
                continue
            diff_id = "sha256:" + name
            want = _recorded(path + ".json")
            if want is None:
                problem = f"layer {diff_id}: no recorded size and entry count"
            else:
                have = layer_figures(path)
                if have == want:
                    continue
                problem = (f"layer {diff_id}: {have[0]} entries and {have[1]} bytes on disk, "
                           f"{want[0]} and {want[1]} recorded")  # fmt: skip
            f = self._found(problem)
            if self.repair:
                desc = wanted.get(diff_id)
                if desc is None:
                    f.fixed = ""
                    self._found(f"layer {diff_id}: no image names its blob; cannot unpack it "
                                "again")  # fmt: skip
                    continue
                try:
                    kept = self._unpack_again(desc, diff_id)
                    f.fixed = (
                        f"unpacked again from blob {desc.digest}; the damaged copy is "
                        f"{kept} (containers started before this still use it)"
                    )
                except CoveError as e:
                    self._found(f"layer {diff_id}: cannot unpack it again: {e}")

    def _unpack_again(self, desc: spec.Descriptor, diff_id: str) -> str:
        """Unpack the (verified) blob in place of the damaged directory; the damaged one is
        kept as ``layers/<hex>.damaged-<time>``, returned: a running container's overlay
        still has it as a lower layer (removing its files would pull them from under it);
        garbage collection keeps it too (its name starts with a live layer's hex)."""
        store = self.engine.images
        store.ensure()
        final = store.layer_path(diff_id)
        kept = f"{final}.damaged-{self.stamp}"
        with store.ingest_lock():
            os.rename(final, kept)
            with contextlib.suppress(FileNotFoundError):
                os.rename(final + ".json", kept + ".json")
            try:
                store.unpack_layer(desc, diff_id)
            except BaseException:
                if not os.path.exists(final):  # put the damaged copy back: better than none
                    os.rename(kept, final)
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(kept + ".json", final + ".json")
                raise
        return kept


def _loadable_images(store: Any) -> list[Any]:
    out = []
    seen: set[str] = set()
    for e in store.entries():
        if e.manifest.digest in seen:
            continue
        seen.add(e.manifest.digest)
        with contextlib.suppress(CoveError, ValueError):
            out.append(store.load_image(e.manifest.digest, ()))
    return out


def _recorded(path: str) -> list[int] | None:
    """The figures a layer was unpacked with: the walk's if recorded, else the tar's."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        if isinstance(doc.get("disk"), list):
            return [int(doc["disk"][0]), int(doc["disk"][1])]
        return [int(doc["entries"]), int(doc["size"])]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _is_hex64(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
