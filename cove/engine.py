"""The engine: the one API every face (CLI, later REST) calls.

Faces parse and format; the engine resolves names, enforces the rules
(Docker's semantics for rmi, tag, prune) and calls the stores.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cove.errors import Conflict, InvalidSpec
from cove.image.store import Image, ImageStore
from cove.spec import image as spec
from cove.spec import reference as refs

DEFAULT_ROOT = "/var/lib/cove"


def default_root() -> str:
    return os.environ.get("COVE_ROOT") or DEFAULT_ROOT


@dataclass(frozen=True)
class ImageRow:
    """One line of ``cove images``: an image under one of its names (or none)."""

    image: Image
    name: refs.Reference | None
    size: int


@dataclass(frozen=True)
class HistoryRow:
    image_id: str | None
    created: str
    created_by: str
    size: int
    comment: str


class Engine:
    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or default_root())
        self.images = ImageStore(self.root)

    # -- images -------------------------------------------------------------

    def image(self, name: str) -> Image:
        return self.images.resolve(name)

    def image_size(self, img: Image) -> int:
        """Uncompressed size of the layers (as ``docker images`` shows), else blob sizes."""
        total = 0
        for layer, diff_id in zip(img.manifest.layers, img.config.diff_ids, strict=False):
            size = self.images.layer_size(diff_id)
            total += layer.size if size is None else size
        return total

    def import_image(
        self,
        path: str,
        name: str | None = None,
        changes: list[str] | None = None,
        platform: str | None = None,
        message: str = "",
    ) -> str:
        from cove.image.importer import import_rootfs

        names = [refs.parse(name)] if name else []
        plat = spec.Platform.parse(platform) if platform else spec.Platform.host()
        with self._collect_on_failure():
            image_id, _ = import_rootfs(self.images, path, names, changes or [], plat, message)
        return image_id

    def load(self, path: str) -> list[Any]:
        from cove.image.archive import load

        with self._collect_on_failure():
            return load(self.images, path)

    @contextlib.contextmanager
    def _collect_on_failure(self) -> Iterator[None]:
        """A failed ingest leaves no unreferenced blob or layer behind."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.images.collect()
            raise

    def save(self, names: list[str], out: str | None, fmt: str = "docker-archive") -> None:
        from cove.image.archive import save

        if not names:
            raise InvalidSpec("save needs at least one image")
        chosen: dict[str, tuple[Image, list[refs.Reference]]] = {}
        for text in names:
            img = self.images.resolve(text)
            entry = chosen.setdefault(img.manifest_digest, (img, []))
            ref = _as_name(text)
            wanted = [ref] if ref and ref in img.names else ([] if ref else list(img.names))
            entry[1].extend(n for n in wanted if n not in entry[1])
        save(self.images, list(chosen.values()), out, fmt)

    def list_images(self) -> list[ImageRow]:
        rows = []
        for img in self.images.images():
            size = self.image_size(img)
            for name in img.names or (None,):
                rows.append(ImageRow(img, name, size))
        rows.sort(key=lambda r: r.image.config.created, reverse=True)
        return rows

    def inspect_image(self, name: str) -> dict[str, Any]:
        img = self.images.resolve(name)
        cfg = img.config
        history = cfg.history
        lower = [self.images.layer_path(d) for d in reversed(cfg.diff_ids)]
        repos = sorted({n.familiar_repository for n in img.names})
        out: dict[str, Any] = {
            "Id": img.id,
            "RepoTags": [n.familiar() for n in img.names],
            "RepoDigests": [f"{r}@{img.manifest_digest}" for r in repos],
            "Parent": "",
            "Comment": history[-1].get("comment", "") if history else "",
            "Created": cfg.created,
            "DockerVersion": "",
            "Author": cfg.raw.get("author", ""),
            "Config": cfg.config,
            "Architecture": cfg.platform.architecture,
            "Os": cfg.platform.os,
            "Size": self.image_size(img),
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDir": ":".join(p for p in lower if os.path.isdir(p))},
            },
            "RootFS": {"Type": "layers", "Layers": cfg.diff_ids},
            "Metadata": {"LastTagTime": ""},
            "Descriptor": {
                "mediaType": img.manifest.media_type,
                "digest": img.manifest_digest,
                "size": self.images.blobs.size(img.manifest_digest),
            },
        }
        if cfg.platform.variant:
            out["Variant"] = cfg.platform.variant
        return out

    def tag(self, source: str, target: str) -> None:
        img = self.images.resolve(source)
        ref = refs.parse(target)
        if ref.digest:
            raise InvalidSpec(f"refusing to create a tag with a digest reference: {target}")
        desc = spec.Descriptor(
            img.manifest.media_type,
            img.manifest_digest,
            self.images.blobs.size(img.manifest_digest),
        )
        self.images.add_image(desc, [*img.names, ref])

    def remove_image(self, name: str, *, force: bool = False) -> list[tuple[str, str]]:
        """Docker's rmi: untag a name; delete the image when no name is left.

        Returns ("Untagged"|"Deleted", what) pairs in the order Docker prints them.
        """
        img = self.images.resolve(name)
        ref = _as_name(name)
        events: list[tuple[str, str]] = []
        untag_only = ref is not None and ref in img.names and len(img.names) > 1
        if not force and not untag_only:
            users = self._image_users(img.id)
            if users:
                raise Conflict(
                    f"conflict: unable to remove image {name} (must be forced) - image is being "
                    f"used by container {users[0][:12]}"
                )
        with self.images.edit_index() as entries:
            mine = [e for e in entries if e.manifest.digest == img.manifest_digest]
            if ref is not None and ref in img.names:
                drop = [e for e in mine if e.name == ref]
            elif len(img.names) > 1 and not force:
                raise Conflict(
                    f"conflict: unable to delete {_short(img.id)} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            else:
                drop = mine
            for e in drop:
                entries.remove(e)
                if e.name:
                    events.append(("Untagged", e.name.familiar()))
            if not any(e.manifest.digest == img.manifest_digest for e in entries):
                events.append(("Deleted", img.id))
        if events and events[-1][0] == "Deleted":
            self.images.collect()
        return events

    def _image_users(self, image_id: str) -> list[str]:
        if not os.path.exists(os.path.join(self.root, "state.db")):
            return []
        from cove.state import Store

        store = Store(self.root)
        try:
            return [r.id for r in store.image_users(image_id)]
        finally:
            store.close()

    def prune_images(self, *, all_images: bool = False) -> tuple[list[tuple[str, str]], int]:
        events: list[tuple[str, str]] = []
        in_use: set[str] = set()
        for img in self.images.images():
            if self._image_users(img.id):
                in_use.add(img.manifest_digest)
        with self.images.edit_index() as entries:
            doomed = [
                e
                for e in entries
                if (all_images or e.name is None) and e.manifest.digest not in in_use
            ]
            for e in doomed:
                entries.remove(e)
                if e.name:
                    events.append(("untagged", e.name.familiar()))
            gone = {e.manifest.digest for e in doomed} - {e.manifest.digest for e in entries}
        for digest in sorted(gone):
            events.append(("deleted", digest))
        _, freed = self.images.collect()
        return events, freed

    def history(self, name: str) -> list[HistoryRow]:
        img = self.images.resolve(name)
        layers = list(zip(img.manifest.layers, img.config.diff_ids, strict=False))
        rows: list[HistoryRow] = []
        for h in img.config.history:
            size = 0
            if not h.get("empty_layer") and layers:
                desc, diff_id = layers.pop(0)
                known = self.images.layer_size(diff_id)
                size = desc.size if known is None else known
            rows.append(
                HistoryRow(
                    None,
                    str(h.get("created", "")),
                    str(h.get("created_by", "")),
                    size,
                    str(h.get("comment", "")),
                )
            )
        rows.reverse()
        if rows:
            top = rows[0]
            rows[0] = HistoryRow(img.id, top.created, top.created_by, top.size, top.comment)
        return rows

    def unpack(self, name: str) -> list[str]:
        """The unpacked layer directories of an image, lowest first."""
        return self.unpack_image(self.images.resolve(name))

    def unpack_image(self, img: Image) -> list[str]:
        with self.images.ingest_lock():
            return [
                self.images.unpack_layer(desc, diff_id)
                for desc, diff_id in zip(img.manifest.layers, img.config.diff_ids, strict=True)
            ]


def _as_name(text: str) -> refs.Reference | None:
    """``text`` as a tagged name, or None when it is an id or digest."""
    bare = text.removeprefix("sha256:")
    if text.startswith("sha256:") or (
        len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare)
    ):
        return None
    ref = refs.parse(text)
    return ref if ref.tag and not ref.digest else None


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


# -- containers ------------------------------------------------------------------

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


def _container_name(cid: str) -> str:
    n = int(cid[:8], 16)
    return f"{_ADJECTIVES[n % len(_ADJECTIVES)]}_{_NAMES[(n >> 8) % len(_NAMES)]}_{cid[:4]}"


class ContainerEngine:
    """Container verbs; kept apart so that image-only commands never import the runtime."""

    def __init__(self, engine: Engine) -> None:
        from cove.state import Store

        self.engine = engine
        self.root = engine.root
        self.store = Store(engine.root)

    def _runtime(self) -> Any:
        from cove.runtime.api import Runtime

        return Runtime(os.path.join(self.root, "runtime"), os.path.join(self.root, "cache"))

    def run(self, opts: Any) -> int:
        """``docker run`` in the foreground: returns the container's exit code."""
        import secrets

        from cove import container as ctr
        from cove.runtime.init import ANNOTATION_OVERLAY
        from cove.state import Record, Status, now

        img = self.engine.images.resolve(opts.image)
        host = spec.Platform.host()
        want = spec.Platform.parse(opts.platform) if opts.platform else None
        have = img.config.platform
        if want and (want.os, want.architecture) != (have.os, have.architecture):
            raise InvalidSpec(f"image {opts.image} is {have}, not the requested {want}")
        if (have.os, have.architecture) != (host.os, host.architecture):
            raise InvalidSpec(f"image {opts.image} is {have}; this host runs {host}")
        cid = secrets.token_hex(32)
        rec = Record(
            cid,
            opts.name or _container_name(cid),
            opts.image,
            img.id,
            now(),
            Status.CREATED,
            0,
            0,
            0,
            False,
            0,
            0,
            {"Tty": opts.tty},
        )
        self.store.add(rec)
        cdir = os.path.join(self.root, "containers", cid)
        runtime = self._runtime()
        created = None
        code = 125
        try:
            os.makedirs(os.path.join(self.root, "containers"), mode=0o711, exist_ok=True)
            os.mkdir(cdir, 0o711)  # searchable: a user-namespaced root reaches its bundle
            os.mkdir(os.path.join(cdir, "rootfs"), 0o755)
            for d in ("upper", "work"):
                os.mkdir(os.path.join(cdir, d), 0o755)
            layers = self.engine.unpack_image(img)
            top_first = list(reversed(layers))
            image_cfg = img.config.config
            user = ctr.resolve_user(
                opts.user or image_cfg.get("User") or "", opts.group_add, top_first
            )
            hostname = opts.hostname or cid[:12]
            files = ctr.etc_files(cdir, hostname, opts.network)
            oci = ctr.build_spec(opts, image_cfg, user, cid, files, None)
            if not opts.privileged and oci.process.capabilities is not None:
                oci.linux.seccomp = self._seccomp(opts, oci.process.capabilities.bounding)
            if oci.namespace("user") is not None:
                self._prepare_userns(cdir, oci)
            oci.annotations[ANNOTATION_OVERLAY] = ctr.overlay_annotation(
                self.engine.images.layers_dir,
                top_first,
                os.path.join(cdir, "upper"),
                os.path.join(cdir, "work"),
            )
            if opts.tty:
                size = _terminal_size()
                if size:
                    from cove.spec.runtime import Box

                    oci.process.console_size = Box(*size)
            with open(os.path.join(cdir, "config.json"), "wb") as f:
                f.write(oci.to_bytes())
            stdio = None
            devnull = -1
            if not opts.interactive and not opts.tty:
                devnull = os.open(os.devnull, os.O_RDONLY)
                stdio = (devnull, 1, 2)
            try:
                created = runtime.create(cid, cdir, stdio=stdio)
            finally:
                if devnull >= 0:
                    os.close(devnull)
            from cove.runtime.api import proc_start_time

            self.store.update(
                cid,
                status=Status.RUNNING,
                pid=created.pid,
                start_time=proc_start_time(created.pid) or 0,
                started_at=now(),
            )
            with _forward_signals(created.pid):
                runtime.start(cid)
                try:
                    runtime.wait_exec(created)
                except Exception:
                    os.waitpid(created.pid, 0)
                    raise
                if created.pty_master is not None:
                    status = _proxy_tty(created.pty_master, created.pid, opts.interactive)
                else:
                    _, status = os.waitpid(created.pid, 0)
            from cove.runtime.api import exit_status

            code = exit_status(status)
            oom = created.cgroups.oom_killed()
            if oom:
                code = 137
            self.store.update(
                cid, status=Status.EXITED, exit_code=code, oom_killed=oom, finished_at=now()
            )
            return code
        except BaseException as e:
            from cove.runtime.api import ContainerStartError

            code = e.exit_code if isinstance(e, ContainerStartError) else 125
            with contextlib.suppress(Exception):
                self.store.update(cid, status=Status.EXITED, exit_code=code, finished_at=now())
            raise
        finally:
            with contextlib.suppress(Exception):
                runtime.delete(cid, force=True)
            if opts.rm:
                self._remove_files(cid)
                self.store.remove(cid)

    def _prepare_userns(self, cdir: str, oci: Any) -> None:
        """The mapped root must own its upper layer and reach the bundle by path."""
        from cove.runtime.api import host_root_ids

        uid, gid = host_root_ids(oci)
        for d in ("upper", "work"):
            os.chown(os.path.join(cdir, d), uid, gid)
        path = cdir
        while path != "/":
            if not os.stat(path).st_mode & 0o001:
                raise InvalidSpec(
                    f"a user namespace needs every directory above the bundle searchable by "
                    f"others: {path} is not (chmod o+x, or use a state root elsewhere)"
                )
            path = os.path.dirname(path)

    def _seccomp(self, opts: Any, caps: list[str]) -> Any:
        from cove.runtime import seccomp

        for so in opts.security_opt:
            key, _, value = so.partition("=" if "=" in so else ":")
            if key != "seccomp":
                continue
            if value == "unconfined":
                return None
            try:
                with open(value, "rb") as f:
                    return seccomp.from_docker_json(f.read(), caps, value)
            except OSError as e:
                raise InvalidSpec(f"cannot read seccomp profile {value}: {e.strerror}") from e
        return seccomp.default_profile(caps)

    def _remove_files(self, cid: str) -> None:
        import shutil

        shutil.rmtree(os.path.join(self.root, "containers", cid), ignore_errors=True)

    def remove(self, ref: str, *, force: bool = False) -> str:
        rec = self.store.get(ref)
        runtime = self._runtime()
        live = rec.status.can_kill() and _alive(rec.pid, rec.start_time)
        if live and not force:
            raise Conflict(
                f"cannot remove container {rec.name}: container is running: stop it first or use -f"
            )
        if live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, 9)
        with contextlib.suppress(Exception):
            runtime.delete(rec.id, force=True)
        self._remove_files(rec.id)
        self.store.remove(rec.id)
        return rec.id

    def list(self) -> list[Any]:
        return self.store.all()

    def inspect(self, ref: str) -> dict[str, Any]:
        import datetime

        rec = self.store.get(ref)

        def ts(t: float) -> str:
            if not t:
                return "0001-01-01T00:00:00Z"
            return (
                datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
            )

        running = rec.status.can_kill() and _alive(rec.pid, rec.start_time)
        cfg_path = os.path.join(self.root, "containers", rec.id, "config.json")
        oci: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            with open(cfg_path) as f:
                oci = json.loads(f.read())
        return {
            "Id": rec.id,
            "Name": "/" + rec.name,
            "Created": ts(rec.created),
            "Image": rec.image_id,
            "Config": {"Image": rec.image, **rec.config},
            "State": {
                "Status": rec.status.value if running or not rec.status.can_kill() else "exited",
                "Running": running,
                "Paused": False,
                "Pid": rec.pid if running else 0,
                "ExitCode": rec.exit_code,
                "OOMKilled": rec.oom_killed,
                "StartedAt": ts(rec.started_at),
                "FinishedAt": ts(rec.finished_at),
            },
            "HostConfig": {},
            "Mounts": oci.get("mounts", []),
        }


def _alive(pid: int, start_time: int) -> bool:
    from cove.runtime.api import proc_start_time

    return pid > 0 and proc_start_time(pid) == start_time


def _terminal_size() -> tuple[int, int] | None:
    import shutil

    if not os.isatty(1):
        return None
    size = shutil.get_terminal_size()
    return size.lines, size.columns


@contextlib.contextmanager
def _forward_signals(pid: int) -> Iterator[None]:
    import signal

    sigs = [
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ]

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    old = {s: signal.signal(s, forward) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _proxy_tty(master: int, pid: int, interactive: bool) -> int:
    """Copy between our terminal and the container's pty; returns the wait status."""
    import select
    import signal
    import termios
    import tty

    stdin = 0
    saved = None
    if interactive and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)

    def winch(_s: int, _f: Any) -> None:
        import fcntl

        with contextlib.suppress(OSError):
            size = fcntl.ioctl(1 if os.isatty(1) else stdin, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    old = signal.signal(signal.SIGWINCH, winch)
    try:
        fds = [master] + ([stdin] if interactive else [])
        while True:
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if stdin in ready and interactive:
                data = os.read(stdin, 65536)
                if not data:
                    fds.remove(stdin)
                    os.write(master, b"\x04")
                else:
                    os.write(master, data)
    finally:
        signal.signal(signal.SIGWINCH, old)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return status
