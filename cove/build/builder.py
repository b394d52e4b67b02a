"""``cove build``: a Dockerfile and its context become an image in the store.

Each stage starts from an image, ``scratch`` or an earlier stage and applies its
instructions in order. Metadata instructions (ENV, CMD, ...) only edit the image
config. A step that changes files (RUN, COPY, ADD, WORKDIR creating its directory)
runs on an overlay of the current layers with a fresh upper directory; that upper
directory, whiteouts and all, becomes the step's layer, or none when it stayed
empty. RUN runs in a real cove container (the runtime, its seccomp filter, its
network); COPY and ADD write through a private overlay mount in a child process,
resolving every destination with RESOLVE_IN_ROOT so an image's symlinks cannot
send a write outside its root.

Every step has a cache key: its parent's key, the instruction as expanded, the
build args in scope for RUN, and a content digest of the files COPY and ADD read.
A hit reuses the recorded layer and creation time, so a fully cached build gives
the very same image id. Nothing is named until the last step succeeded.

As BuildKit, dispatch is kept apart from execution: ``dispatch`` and ``metadata`` hold
the state and its pure edits, ``filesteps`` and ``runsteps`` execute the steps that make
layers; this module walks the stages, keys the cache and names the result.
"""

from __future__ import annotations

import contextlib
import copy as copymod
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from cove.build import dispatch, filesteps, metadata, runsteps
from cove.build import dockerfile as df
from cove.build.cache import BuildCache, Entry
from cove.build.context import Context, glob
from cove.build.dispatch import (
    DEFAULT_PATH,
    PROXY_ARGS,
    BuildError,
    Dispatch,
    Layer,
    State,
    rfc3339,
    step_key,
)
from cove.build.progress import Progress, interrupts_as_keyboard
from cove.errors import InvalidSpec, NotFound
from cove.spec import image as spec

if TYPE_CHECKING:
    from cove.image.store import Image


@dataclass
class BuildOptions:
    context: str
    dockerfile: str | None = None
    tags: list[str] = field(default_factory=list)
    build_args: list[str] = field(default_factory=list)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    platform: str | None = None
    labels: list[str] = field(default_factory=list)
    quiet: bool = False
    progress: str = "auto"
    network: str = "bridge"


class Builder:
    """Walks the stages a target needs, keys each step in the build cache and hands it to
    dispatch (state edits) and, for a step that makes a layer, to its executor."""

    def __init__(
        self, ce: runsteps.Containers, opts: BuildOptions, ctx: Context, progress: Progress
    ) -> None:
        self.ce = ce  # a ContainerEngine: RUN steps are its containers
        self.engine = ce.engine
        self.store = ce.engine.images
        self.opts = opts
        self.ctx = ctx
        self.progress = progress
        self.cache = BuildCache(self.engine.root)
        self.build_args = dispatch.parse_build_args(opts.build_args)
        epoch = self.build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
        try:
            self.epoch = int(epoch) if epoch else None
        except ValueError as e:
            raise InvalidSpec(f"invalid SOURCE_DATE_EPOCH {epoch!r}: want seconds") from e
        self.platform = (
            spec.Platform.parse(opts.platform) if opts.platform else spec.Platform.host()
        )
        self.file = df.parse(ctx.dockerfile, ctx.filename)
        self.dispatch = Dispatch(self.file, self.build_args)
        self.results: dict[int, State] = {}
        self.current = 0  # the index of the stage being built
        self.downloads: dict[str, str] = {}  # ADD's fetched URLs -> temp files

    # -- driving ------------------------------------------------------------------

    def build(self) -> str:
        """Build the target stage; name it; its image id."""
        for note in self.file.notes:
            self.progress.note(note)
        target = self.dispatch.target(self.opts.target)
        meta = self.dispatch.meta_args(self.platform, spec.Platform.host())
        needed = self.dispatch.needed(target, meta)
        self.store.ensure()
        # held for the whole build: layers made by earlier steps are referenced by no
        # image yet, and a concurrent garbage collection must not take them
        with self.store.ingest_lock():
            for stage in self.file.stages:
                if stage.index in needed:
                    self.results[stage.index] = self._stage(stage, meta)
                if stage.index == target.index:
                    break
            image_id = self._finish(self.results[target.index])
        used = self.dispatch.used_args
        unused = sorted(set(self.build_args) - used - PROXY_ARGS - {"SOURCE_DATE_EPOCH"})
        if unused:
            self.progress.note(f"build args {', '.join(unused)} were not consumed")
        return image_id

    def _stage(self, stage: df.Stage, meta: dict[str, str]) -> State:
        total = 1 + len(stage.instructions)
        name = f"{stage.name} " if stage.name else ""
        label = f"[{name}1/{total}]"
        base = self.dispatch.expand(stage.from_instr, stage.base, meta)
        self.progress.step(f"{label} FROM {base}")
        self.current = stage.index
        platform = dict(stage.from_instr.flags).get("platform")
        if platform:
            platform = self.dispatch.expand(stage.from_instr, platform, meta)
        state = self._from(stage, base, platform)
        self.progress.finish(cached=True)
        triggers = list(state.config.get("OnBuild") or [])
        if triggers:
            state.config["OnBuild"] = None
            for text in triggers:
                parsed = df.parse(f"FROM scratch\n{text}\n", f"ONBUILD of {base}")
                for ins in parsed.stages[0].instructions:
                    self.progress.step(f"{label} ONBUILD {ins.original}")
                    self._step(state, ins, meta)
        for i, ins in enumerate(stage.instructions, start=2):
            self.progress.step(f"[{name}{i}/{total}] {ins.original}")
            self._step(state, ins, meta)
        return state

    def _from(self, stage: df.Stage, base: str, platform: str | None) -> State:
        if base.lower() == "scratch":
            doc = spec.new_config([], self.platform, "", {"Env": [f"PATH={DEFAULT_PATH}"]})
            return State(step_key("scratch", str(self.platform)), doc, [])
        dep = self.dispatch.stage_ref(base, stage.index)
        if dep is not None:
            prev = self.results[dep.index]
            # BuildKit carries the base stage's build args into the stage built on it
            return State(prev.key, copymod.deepcopy(prev.doc), list(prev.layers), dict(prev.args))
        img = self._image(base, platform)
        doc = copymod.deepcopy(img.config.raw)
        env = doc.setdefault("config", {}).get("Env") or []
        if not any(e.startswith("PATH=") for e in env):
            doc["config"]["Env"] = [f"PATH={DEFAULT_PATH}", *env]
        layers = [
            Layer(d, i)
            for d, i in zip(img.manifest.layers, img.config.diff_ids, strict=True)
        ]  # fmt: skip
        for layer in layers:
            self.store.unpack_layer(layer.desc, layer.diff_id)
        return State(step_key("image", img.manifest_digest), doc, layers)

    def _image(self, ref: str, platform: str | None) -> Image:
        want = spec.Platform.parse(platform) if platform else self.platform
        if self.opts.pull:
            from cove.registry.dist import pull

            pull(self.engine, ref, platform=str(want), quiet=True)
        try:  # a multi-platform base: its manifest for this build's platform
            img = self.store.resolve(ref, str(want))
        except NotFound:
            from cove.registry.dist import pull

            self.progress.note(f"image {ref} is not in the store: pulling it")
            pull(self.engine, ref, platform=str(want), quiet=True)
            img = self.store.resolve(ref, str(want))
        have = img.config.platform
        if (have.os, have.architecture) != (want.os, want.architecture):
            raise InvalidSpec(f"image {ref} is {have}, not the requested {want}")
        return img

    # -- one step ------------------------------------------------------------------

    def _step(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        """Dispatch ``ins`` on ``state``; execute it when it makes a layer."""
        if ins.cmd in metadata.HANDLERS:
            change = metadata.apply(self.dispatch, state, ins, meta)
            self._record(state, ins, change, ins.original)
        elif ins.cmd == "RUN":
            plan = self.dispatch.run(state, ins, self.opts.network)
            self._record(
                state, ins, plan.material, plan.created_by,
                lambda: runsteps.run(self, state, ins, plan),
            )  # fmt: skip
        elif ins.cmd in ("COPY", "ADD"):
            filesteps.copy(self, state, ins, add=ins.cmd == "ADD")
        elif ins.cmd == "WORKDIR":
            filesteps.workdir(self, state, ins)
        else:
            raise self.dispatch.error(ins, f"unknown instruction: {ins.cmd}")

    def _record(
        self,
        state: State,
        ins: df.Instruction,
        material: object,
        created_by: str,
        make: Callable[[], Layer | None] | None = None,
    ) -> None:
        """Look the step up in the cache, else run ``make``; add its layer and history."""
        key = step_key(state.key, ins.cmd, material, self.epoch)
        hit = None if self.opts.no_cache else self.cache.get(key)
        layer: Layer | None = None
        if hit is not None and hit.layer is not None:
            desc = spec.Descriptor(
                str(hit.layer["mediaType"]), str(hit.layer["digest"]), int(hit.layer["size"])
            )
            if (
                hit.diff_id
                and self.store.blobs.has(desc.digest)
                and self.store.has_layer(hit.diff_id)
            ):
                layer = Layer(desc, hit.diff_id)
            else:
                hit = None  # its layer was collected since: make it again
        if hit is not None and self.epoch is not None:
            hit = Entry(hit.layer, hit.diff_id, rfc3339(self.epoch, exact=False))
        if hit is None:
            layer = make() if make is not None else None
            created = (
                rfc3339(self.epoch, exact=False)
                if self.epoch is not None
                else rfc3339(time.time(), exact=True)
            )
            self.cache.put(
                key,
                Entry(
                    layer.desc.to_json() if layer else None,
                    layer.diff_id if layer else None,
                    created,
                ),
            )
        else:
            created = hit.created
        dispatch.add_step(state, key, created, created_by, layer)
        self.progress.finish(cached=hit is not None)

    def cleanup(self) -> None:
        for path in self.downloads.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- overlays and layers ------------------------------------------------------------

    def _lowers(self, state: State) -> list[str]:
        """The state's layer directories, lowest first."""
        return [self.store.layer_path(la.diff_id) for la in state.layers]

    def _in_overlay(
        self,
        state: State,
        lowers: list[str],
        source: list[str] | None,
        action: Callable[[int, int], None],
    ) -> Layer | None:
        """Run ``action(rootfd, sourcefd)`` in a child with the state's root mounted on a
        fresh upper directory (and ``source`` layers mounted read-only, else the context);
        the upper directory as a layer."""
        from cove.sys import overlay

        tmp = tempfile.mkdtemp(dir=self.store.tmpdir, prefix="build-")
        try:
            upper = os.path.join(tmp, "upper")
            work = os.path.join(tmp, "work")
            mnt = os.path.join(tmp, "root")
            src_mnt = os.path.join(tmp, "src")
            empty = os.path.join(tmp, "empty")
            for d in (upper, work, mnt, src_mnt, empty):
                os.mkdir(d, 0o755)

            def mounted() -> None:
                below = list(reversed(lowers)) or [empty]
                overlay.mount(overlay.Layers(below, upper, work), mnt)
                rootfd = os.open(mnt, os.O_PATH | os.O_DIRECTORY)
                if source is not None:
                    overlay.mount(overlay.Layers(list(reversed(source)) or [empty]), src_mnt)
                    srcfd = os.open(src_mnt, os.O_PATH | os.O_DIRECTORY)
                else:
                    srcfd = self.ctx.open_root()
                action(rootfd, srcfd)

            overlay.in_private_mount_ns(mounted, default=BuildError)
            return self._commit_upper(upper)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _commit_upper(self, upper: str) -> Layer | None:
        if not os.listdir(upper):
            return None
        from cove.image.diff import write_layer_tar

        fd, tmp = tempfile.mkstemp(dir=self.store.tmpdir, prefix="layer-")
        try:
            with os.fdopen(fd, "wb") as f:
                write_layer_tar(upper, f, mtime=self.epoch)
            with open(tmp, "rb") as src:
                desc, diff_id = self.store.ingest_layer(
                    src, "", what="a build step's layer", store_as="gzip"
                )
            return Layer(desc, diff_id)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # -- the result ---------------------------------------------------------------------

    def _finish(self, state: State) -> str:
        doc = dispatch.image_doc(state)
        labels = dispatch.parse_labels(self.opts.labels)
        if labels:
            doc["config"]["Labels"] = {**(doc["config"].get("Labels") or {}), **labels}
        if not doc.get("created"):
            doc["created"] = (
                rfc3339(self.epoch, exact=False) if self.epoch is not None else
                rfc3339(time.time(), exact=True)
            )  # fmt: skip
        img, desc = self.store.put_image(doc, [la.desc for la in state.layers])
        names = [dispatch.tag(t) for t in self.opts.tags]
        self.store.add_image(desc, names)
        self.progress.line(f"writing image {img.id}")
        for n in names:
            self.progress.line(f"naming to {n}")
        return str(img.id)


def build(
    ce: runsteps.Containers,
    opts: BuildOptions,
    stdin: BinaryIO | None = None,
    progress: Progress | None = None,
) -> str:
    """Build ``opts``; the new image's id. ``progress``: where steps are reported (a face's
    own, e.g. ``cove serve``'s JSON stream); default stderr as ``opts`` say."""
    import threading

    from cove.build import context

    progress = progress or Progress("quiet" if opts.quiet else opts.progress)
    ce.engine.images.ensure()
    # signal handlers can only be set from the main thread; a server's request thread
    # ends a build through its own clean-up paths instead
    main = threading.current_thread() is threading.main_thread()
    with (
        interrupts_as_keyboard() if main else contextlib.nullcontext(),
        context.load(
            opts.context, opts.dockerfile, stdin or sys.stdin.buffer, ce.engine.images.tmpdir
        ) as ctx,
    ):
        platforms = [p.strip() for p in (opts.platform or "").split(",") if p.strip()]
        if len(platforms) > 1:
            return _build_platforms(ce, opts, ctx, progress, platforms)
        builder = Builder(ce, opts, ctx, progress)
        try:
            return builder.build()
        finally:
            builder.cleanup()


def _build_platforms(
    ce: runsteps.Containers,
    opts: BuildOptions,
    ctx: Context,
    progress: Progress,
    platforms: list[str],
) -> str:
    """BuildKit's ``--platform a,b``: each platform built in turn (a foreign one's RUN steps
    through QEMU), then one OCI index over their manifests named by the tags. The image id
    of the default manifest (the host's, else the first) is returned."""
    from dataclasses import replace

    wanted = [spec.Platform.parse(p) for p in platforms]
    if len({str(p) for p in wanted}) != len(wanted):
        raise InvalidSpec(f"--platform {opts.platform!r} names a platform twice")
    store = ce.engine.images
    manifests = []
    for plat in wanted:
        progress.note(f"building for {plat}")
        builder = Builder(ce, replace(opts, platform=str(plat), tags=[]), ctx, progress)
        try:
            img = store.resolve(builder.build())
        finally:
            builder.cleanup()
        manifests.append(
            spec.Descriptor(img.manifest.media_type, img.manifest_digest,
                            store.blobs.size(img.manifest_digest), platform=img.config.platform)
        )  # fmt: skip
    names = [dispatch.tag(t) for t in opts.tags]
    digest = store.add_platforms(manifests, names)
    progress.line(f"writing image index {digest}")
    for n in names:
        progress.line(f"naming to {n}")
    host = spec.Platform.host()
    default = next((m for m in manifests if m.platform and m.platform.architecture
                    == host.architecture), manifests[0])  # fmt: skip
    return str(store.load_image(default.digest, ()).id)


__all__ = ["BuildError", "BuildOptions", "Builder", "Progress", "build", "glob"]
