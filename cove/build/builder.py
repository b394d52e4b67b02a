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
"""

from __future__ import annotations

import contextlib
import copy as copymod
import hashlib
import json
import os
import posixpath
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from cove.build import dockerfile as df
from cove.build.cache import BuildCache, Entry
from cove.build.context import Context, glob
from cove.build.dockerfile import Heredoc
from cove.errors import CoveError, InvalidSpec, NotFound
from cove.spec import image as spec
from cove.spec import reference as refs

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
PIPES = "/dev/pipes"  # where a RUN's executable here-document is mounted (BuildKit's place)
# Docker's predefined proxy args: usable without an ARG line, never in the history
PROXY_ARGS = frozenset(
    n for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
    for n in (base, base.lower())
)  # fmt: skip
_METADATA = frozenset(
    {"ENV", "ARG", "LABEL", "EXPOSE", "CMD", "ENTRYPOINT", "USER", "VOLUME", "STOPSIGNAL",
     "HEALTHCHECK", "ONBUILD", "SHELL", "MAINTAINER"}
)  # fmt: skip


class BuildError(CoveError):
    """A step failed; the message names the Dockerfile line."""


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


@dataclass
class Layer:
    desc: spec.Descriptor
    diff_id: str


@dataclass
class State:
    """A stage in progress: the image so far and what is in scope."""

    key: str
    doc: dict[str, Any]  # the image config document
    layers: list[Layer]
    args: dict[str, str] = field(default_factory=dict)
    cmd_set: bool = False  # CMD given in this stage (ENTRYPOINT then keeps it)

    @property
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = self.doc.setdefault("config", {})
        return cfg

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in self.config.get("Env") or []:
            k, _, v = e.partition("=")
            out[k] = v
        return out

    def scope(self) -> dict[str, str]:
        """What ${VAR} sees: the args in scope, overridden by ENV (Docker's precedence)."""
        return {**self.args, **self.env()}

    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)

    def workdir(self) -> str:
        return str(self.config.get("WorkingDir") or "/")


def _key(*parts: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _rfc3339(epoch: float, exact: bool) -> str:
    t = datetime.fromtimestamp(epoch, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if exact else "%Y-%m-%dT%H:%M:%SZ")


# -- progress -------------------------------------------------------------------


class Progress:
    """Step lines on stderr. ``plain`` streams RUN output; ``tty`` keeps one line per step
    and shows a RUN's output only when it fails; ``quiet`` shows nothing but failures."""

    def __init__(self, mode: str, out: TextIO = sys.stderr) -> None:
        if mode == "auto":
            mode = "tty" if out.isatty() else "plain"
        if mode not in ("plain", "tty", "quiet"):
            raise InvalidSpec(f"invalid --progress {mode!r}: want auto, plain or tty")
        self.mode = mode
        self.out = out
        self.label = ""
        self.started = 0.0
        self.buffer = bytearray()

    def note(self, text: str) -> None:
        if self.mode != "quiet":
            self.out.write(f"note: {text}\n")
            self.out.flush()

    def step(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.buffer.clear()
        if self.mode == "plain":
            self.out.write(label + "\n")
        elif self.mode == "tty":
            self.out.write(label + " ...\r")
        self.out.flush()

    def output(self, stream: int, data: bytes) -> None:
        if self.mode == "plain":
            self.out.flush()
            os.write(self.out.fileno(), data)
        else:
            self.buffer += data
            del self.buffer[: -(1 << 16)]  # the tail is what explains a failure

    def finish(self, cached: bool) -> None:
        word = "CACHED" if cached else f"DONE {time.monotonic() - self.started:.2f}s"
        if self.mode == "plain":
            self.out.write(f"{self.label.split(']')[0]}] {word}\n")
        elif self.mode == "tty":
            self.out.write(f"\x1b[2K{self.label} {word}\n")
        self.out.flush()

    def failed(self) -> None:
        if self.mode != "plain" and self.buffer:
            if self.mode == "tty":
                self.out.write(f"\x1b[2K{self.label} ERROR\n")
            self.out.flush()
            os.write(self.out.fileno(), bytes(self.buffer))
        self.out.flush()

    def line(self, text: str) -> None:
        if self.mode != "quiet":
            self.out.write(text + "\n")
            self.out.flush()


# -- the builder ------------------------------------------------------------------


class Builder:
    def __init__(self, ce: Any, opts: BuildOptions, ctx: Context, progress: Progress) -> None:
        self.ce = ce  # a ContainerEngine: RUN steps are its containers
        self.engine = ce.engine
        self.store = ce.engine.images
        self.opts = opts
        self.ctx = ctx
        self.progress = progress
        self.cache = BuildCache(self.engine.root)
        self.build_args = _parse_build_args(opts.build_args)
        self.used_args: set[str] = set()
        epoch = self.build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
        try:
            self.epoch = int(epoch) if epoch else None
        except ValueError as e:
            raise InvalidSpec(f"invalid SOURCE_DATE_EPOCH {epoch!r}: want seconds") from e
        self.platform = (
            spec.Platform.parse(opts.platform) if opts.platform else spec.Platform.host()
        )
        self.file = df.parse(ctx.dockerfile, ctx.filename)
        self.results: dict[int, State] = {}
        self.current = 0  # the index of the stage being built
        self._downloads: dict[str, str] = {}  # ADD's fetched URLs -> temp files

    # -- driving ------------------------------------------------------------------

    def build(self) -> str:
        """Build the target stage; name it; its image id."""
        for note in self.file.notes:
            self.progress.note(note)
        target = self._target()
        meta = self._meta_args()
        needed = self._needed(target, meta)
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
        unused = sorted(set(self.build_args) - self.used_args - PROXY_ARGS - {"SOURCE_DATE_EPOCH"})
        if unused:
            self.progress.note(f"build args {', '.join(unused)} were not consumed")
        return image_id

    def _target(self) -> df.Stage:
        if not self.opts.target:
            return self.file.stages[-1]
        for stage in self.file.stages:
            if stage.name == self.opts.target.lower():
                return stage
        raise NotFound(f"target stage {self.opts.target!r} could not be found")

    def _meta_args(self) -> dict[str, str]:
        """The global scope: predefined platform args, then ARGs before the first FROM."""
        host = spec.Platform.host()
        scope = {
            "TARGETPLATFORM": str(self.platform),
            "TARGETOS": self.platform.os,
            "TARGETARCH": self.platform.architecture,
            "TARGETVARIANT": self.platform.variant,
            "BUILDPLATFORM": str(host),
            "BUILDOS": host.os,
            "BUILDARCH": host.architecture,
            "BUILDVARIANT": host.variant,
        }
        for ins in self.file.meta_args:
            for name, default in self._arg_pairs(ins, lambda: scope):
                if name in self.build_args:
                    self.used_args.add(name)
                    scope[name] = self.build_args[name]
                elif default is not None:
                    scope[name] = default
        return scope

    def _stage_ref(self, word: str, before: int) -> df.Stage | None:
        """The earlier stage ``word`` names (by name or index), else None: an image
        (``FROM node AS node`` means the image node, as BuildKit reads it)."""
        for stage in self.file.stages[:before]:
            if stage.name == word.lower():
                return stage
        if word.isdigit() and int(word) < before:
            return self.file.stages[int(word)]
        return None

    def _needed(self, target: df.Stage, meta: dict[str, str]) -> set[int]:
        """The stages the target depends on (FROM and COPY --from), as BuildKit builds
        only those."""
        needed: set[int] = set()
        todo = [target]
        while todo:
            stage = todo.pop()
            if stage.index in needed:
                continue
            needed.add(stage.index)
            refs_: list[str] = [self._expand(stage.from_instr, stage.base, meta)]
            for ins in stage.instructions:
                refs_ += [v for k, v in ins.flags if k == "from" and v]
            for word in refs_:
                dep = self._stage_ref(word, stage.index)
                if dep is not None:
                    todo.append(dep)
        return needed

    def _stage(self, stage: df.Stage, meta: dict[str, str]) -> State:
        total = 1 + len(stage.instructions)
        name = f"{stage.name} " if stage.name else ""
        label = f"[{name}1/{total}]"
        base = self._expand(stage.from_instr, stage.base, meta)
        self.progress.step(f"{label} FROM {base}")
        self.current = stage.index
        platform = dict(stage.from_instr.flags).get("platform")
        state = self._from(
            stage, base, self._expand(stage.from_instr, platform, meta) if platform else None
        )
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
            return State(_key("scratch", str(self.platform)), doc, [])
        dep = self._stage_ref(base, stage.index)
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
        return State(_key("image", img.manifest_digest), doc, layers)

    def _image(self, ref: str, platform: str | None) -> Any:
        want = spec.Platform.parse(platform) if platform else self.platform
        if self.opts.pull:
            from cove.registry.dist import pull

            pull(self.engine, ref, platform=str(want), quiet=True)
        try:
            img = self.store.resolve(ref)
        except NotFound:
            from cove.registry.dist import pull

            self.progress.note(f"image {ref} is not in the store: pulling it")
            pull(self.engine, ref, platform=str(want), quiet=True)
            img = self.store.resolve(ref)
        have = img.config.platform
        if (have.os, have.architecture) != (want.os, want.architecture):
            raise InvalidSpec(f"image {ref} is {have}, not the requested {want}")
        return img

    # -- one step ------------------------------------------------------------------

    def _expand(self, ins: df.Instruction, text: str, scope: dict[str, str]) -> str:
        try:
            return df.expand(text, scope, escape=self.file.escape)
        except ValueError as e:
            raise self._error(ins, str(e)) from e

    def _words(self, ins: df.Instruction, scope: dict[str, str]) -> list[str]:
        if ins.json:
            return [self._expand(ins, w, scope) for w in ins.args] if ins.cmd not in (
                "RUN", "CMD", "ENTRYPOINT", "SHELL"
            ) else list(ins.args)  # fmt: skip
        try:
            return df.expand_words(ins.raw, scope, escape=self.file.escape)
        except ValueError as e:
            raise self._error(ins, str(e)) from e

    def _error(self, ins: df.Instruction, message: str) -> df.DockerfileError:
        return df.DockerfileError(self.file.filename, ins.line, message)

    def _flags(self, ins: df.Instruction, scope: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in ins.flags:
            out[k] = self._expand(ins, v, scope) if v is not None else "true"
        return out

    def _arg_pairs(
        self, ins: df.Instruction, scope: Callable[[], dict[str, str]]
    ) -> Iterator[tuple[str, str | None]]:
        """``ARG A=1 B=$A``: each default is expanded in the scope its predecessors made
        (``scope()`` is asked again for every pair, after the caller applied the last)."""
        for word in ins.args:
            name, eq, default = word.partition("=")
            if not name or not all(c.isalnum() or c == "_" for c in name):
                raise self._error(ins, f"invalid ARG name {name!r}")
            yield name, self._expand(ins, default, scope()) if eq else None

    def _step(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        handler: Callable[[State, df.Instruction, dict[str, str]], Any] | None = getattr(
            self, f"_do_{ins.cmd.lower()}", None
        )
        if handler is None:
            raise self._error(ins, f"unknown instruction: {ins.cmd}")
        handler(state, ins, meta)

    def _record(
        self,
        state: State,
        ins: df.Instruction,
        material: Any,
        created_by: str,
        make: Callable[[], Layer | None] | None = None,
    ) -> None:
        """Look the step up in the cache, else run ``make``; add its layer and history."""
        key = _key(state.key, ins.cmd, material, self.epoch)
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
            hit = Entry(hit.layer, hit.diff_id, _rfc3339(self.epoch, exact=False))
        if hit is None:
            layer = make() if make is not None else None
            created = (
                _rfc3339(self.epoch, exact=False)
                if self.epoch is not None
                else _rfc3339(time.time(), exact=True)
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
        entry: dict[str, Any] = {
            "created": created,
            "created_by": created_by,
            "comment": "buildkit.dockerfile.v0",
        }
        if layer is None:
            entry["empty_layer"] = True
        else:
            state.layers.append(layer)
            state.doc.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            state.doc["rootfs"]["diff_ids"] = [
                *state.doc["rootfs"].get("diff_ids", []),
                layer.diff_id,
            ]
        state.doc["history"] = [*(state.doc.get("history") or []), entry]
        state.doc["created"] = created
        state.key = key
        self.progress.finish(cached=hit is not None)

    # -- metadata instructions --------------------------------------------------------

    def _meta(self, state: State, ins: df.Instruction, change: Any) -> None:
        self._record(state, ins, change, ins.original)

    def _do_env(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        try:
            pairs = df.parse_kv(ins.raw, state.scope(), escape=self.file.escape)
        except ValueError as e:
            raise self._error(ins, str(e)) from e
        env = state.env()
        for k, v in pairs:
            env.pop(k, None)
            env[k] = v
        state.config["Env"] = [f"{k}={v}" for k, v in env.items()]
        self._meta(state, ins, pairs)

    def _do_arg(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        for name, default in self._arg_pairs(ins, state.scope):
            if name in self.build_args:
                self.used_args.add(name)
                state.args[name] = self.build_args[name]
            elif default is not None:
                state.args[name] = default
            elif name in meta:
                state.args[name] = meta[name]  # ``ARG NAME`` inherits the global value
            # else declared without a value: unset, as ${NAME-x} and RUN's env see it
        self._meta(state, ins, sorted(state.args.items()))

    def _do_label(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        try:
            pairs = df.parse_kv(ins.raw, state.scope(), escape=self.file.escape)
        except ValueError as e:
            raise self._error(ins, str(e)) from e
        labels = dict(state.config.get("Labels") or {})
        labels.update(pairs)
        state.config["Labels"] = labels
        self._meta(state, ins, pairs)

    def _do_maintainer(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        state.doc["author"] = ins.raw
        self._meta(state, ins, ins.raw)

    def _do_expose(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        ports = dict(state.config.get("ExposedPorts") or {})
        words = [p for w in self._words(ins, state.scope()) for p in w.split()]
        for word in words:
            port, _, proto = word.partition("/")
            proto = (proto or "tcp").lower()
            lo, _, hi = port.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()) or proto not in ("tcp", "udp", "sctp"):
                raise self._error(ins, f"invalid port {word!r}")
            for p in range(int(lo), int(hi or lo) + 1):
                ports[f"{p}/{proto}"] = {}
        state.config["ExposedPorts"] = ports
        self._meta(state, ins, sorted(ports))

    def _command(self, state: State, ins: df.Instruction) -> list[str]:
        return list(ins.args) if ins.json else [*state.shell(), ins.raw]

    def _do_cmd(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        state.config["Cmd"] = self._command(state, ins)
        state.cmd_set = True
        self._meta(state, ins, state.config["Cmd"])

    def _do_entrypoint(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        state.config["Entrypoint"] = self._command(state, ins)
        if not state.cmd_set:
            state.config["Cmd"] = None  # Docker: a new ENTRYPOINT drops the base image's CMD
        self._meta(state, ins, [state.config["Entrypoint"], state.config.get("Cmd")])

    def _do_shell(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        if not ins.json or not ins.args:
            raise self._error(ins, "SHELL requires the arguments in JSON form")
        state.config["Shell"] = list(ins.args)
        self._meta(state, ins, ins.args)

    def _whole(self, ins: df.Instruction, scope: dict[str, str]) -> str:
        """WORKDIR, USER, STOPSIGNAL: the whole argument is one word (``WORKDIR /my app``)."""
        word = self._expand(ins, ins.raw, scope)
        if not word:
            raise self._error(ins, f"{ins.cmd} requires exactly one argument")
        return word

    def _do_user(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        user = self._whole(ins, state.scope())
        state.config["User"] = user
        self._meta(state, ins, user)

    def _do_volume(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        vols = dict(state.config.get("Volumes") or {})
        for word in self._words(ins, state.scope()):
            if not word:
                raise self._error(ins, "VOLUME specified can not be an empty string")
            vols[word] = {}
        state.config["Volumes"] = vols
        self._meta(state, ins, sorted(vols))

    def _do_stopsignal(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        from cove.container import parse_signal

        sig = self._whole(ins, state.scope())
        try:
            parse_signal(sig)
        except InvalidSpec as e:
            raise self._error(ins, str(e)) from e
        state.config["StopSignal"] = sig
        self._meta(state, ins, sig)

    def _do_onbuild(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        trigger = ins.raw + "".join(f"\n{d.content}{d.name}" for d in ins.heredocs)
        state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), trigger]
        self._meta(state, ins, ins.raw)

    def _do_healthcheck(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        from cove.container import parse_duration

        words = ins.raw.split(None, 1)
        kind = words[0].upper() if words else ""
        if kind == "NONE":
            if ins.flags or len(words) > 1:
                raise self._error(ins, "HEALTHCHECK NONE takes no arguments")
            state.config["Healthcheck"] = {"Test": ["NONE"]}
            self._meta(state, ins, ["NONE"])
            return
        if kind != "CMD" or len(words) < 2:
            raise self._error(ins, "HEALTHCHECK wants NONE or CMD command")
        rest = words[1].strip()
        try:
            test = ["CMD", *json.loads(rest)] if rest.startswith("[") else ["CMD-SHELL", rest]
        except ValueError:
            test = ["CMD-SHELL", rest]
        check: dict[str, Any] = {"Test": test}
        names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval"}  # fmt: skip
        for flag, value in self._flags(ins, state.scope()).items():
            try:
                if flag == "retries":
                    check["Retries"] = int(value)
                else:
                    check[names[flag]] = int(parse_duration(value, f"--{flag}") * 1e9)
            except (ValueError, InvalidSpec) as e:
                raise self._error(ins, f"invalid --{flag} {value!r}") from e
        state.config["Healthcheck"] = check
        self._meta(state, ins, check)

    # -- file system instructions ----------------------------------------------------------

    def _do_workdir(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        path = posixpath.normpath(posixpath.join(state.workdir(), self._whole(ins, state.scope())))
        state.config["WorkingDir"] = path
        lowers = self._lowers(state)
        user = str(state.config.get("User") or "")
        # BuildKit makes the directories as the current USER, so a later RUN can write there
        owner = self._owner(state, ins, user) if user else (0, 0)

        def make() -> Layer | None:
            def mkdir(rootfd: int, srcfd: int) -> None:
                _make_dirs_owned(rootfd, path.strip("/"), owner)

            return self._in_overlay(state, lowers, None, mkdir)

        self._record(state, ins, [path, owner], f"WORKDIR {path}", make)

    def _do_run(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        flags = self._flags(ins, state.scope())
        if "mount" in flags or "security" in flags:
            name = "mount" if "mount" in flags else "security"
            raise self._error(ins, f"RUN --{name} is not supported by cove")
        network = flags.get("network", self.opts.network)
        if network == "default":
            network = self.opts.network
        script: Heredoc | None = None
        if ins.heredocs and not ins.json:
            argv, script = self._heredoc_run(state, ins)
        else:
            argv = self._command(state, ins)
        env_names = set(state.env())
        args = {k: v for k, v in sorted(state.args.items()) if k not in env_names}
        shown_args = {k: v for k, v in args.items() if k not in PROXY_ARGS}
        # proxies reach every RUN without an ARG line, and stay out of the key and history
        proxies = {k: v for k, v in self.build_args.items() if k in PROXY_ARGS}
        self.used_args.update(proxies)
        prefix = f"|{len(shown_args)} " + " ".join(
            f"{k}={v}" for k, v in shown_args.items()
        ) + " " if shown_args else ""  # fmt: skip
        created_by = f"RUN {prefix}{' '.join(argv)} # buildkit"
        material = [argv, shown_args, network, state.config.get("User"), state.workdir(),
                    script.content if script else None]  # fmt: skip
        env = {**proxies, **args}
        self._record(
            state, ins, material, created_by,
            lambda: self._run(state, ins, argv, env, network, script),
        )  # fmt: skip

    def _heredoc_run(self, state: State, ins: df.Instruction) -> tuple[list[str], Heredoc | None]:
        """``RUN <<EOF`` alone runs the body as the shell's script, or, when it starts with
        ``#!``, as an executable file of its own (BuildKit mounts it under /dev/pipes);
        ``RUN cmd <<EOF`` hands the line and its bodies to the shell, which knows
        here-documents itself. ``$VAR`` is the shell's to expand, at run time."""
        first = ins.raw.split("\n", 1)[0].strip()
        if len(ins.heredocs) == 1 and first.startswith("<<") and " " not in first:
            doc = ins.heredocs[0]
            if doc.content.startswith("#!"):
                return [f"{PIPES}/{doc.name}"], doc
            return [*state.shell(), doc.content], None
        script = first + "\n" + "".join(f"{d.content}{d.name}\n" for d in ins.heredocs)
        return [*state.shell(), script], None

    def _do_copy(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        self._copy(state, ins, add=False)

    def _do_add(self, state: State, ins: df.Instruction, meta: dict[str, str]) -> None:
        self._copy(state, ins, add=True)

    # -- COPY and ADD ------------------------------------------------------------------

    def _copy(self, state: State, ins: df.Instruction, *, add: bool) -> None:
        scope = state.scope()
        flags = self._flags(ins, scope)
        for unsupported in ("link", "parents", "exclude", "checksum", "keep-git-dir"):
            if unsupported in flags and unsupported not in ("link",):
                raise self._error(ins, f"{ins.cmd} --{unsupported} is not supported by cove")
        words = self._words(ins, scope)
        heredocs = {d.name: d for d in ins.heredocs}
        if len(words) < 2:
            raise self._error(ins, f"{ins.cmd} requires at least two arguments")
        srcs, dest = words[:-1], words[-1]
        if not posixpath.isabs(dest):
            dest = posixpath.join(state.workdir(), dest) + ("/" if dest.endswith("/") else "")
        chmod: int | None = None
        if "chmod" in flags:
            try:
                chmod = int(flags["chmod"], 8)
                if not 0 <= chmod <= 0o7777:
                    raise ValueError(flags["chmod"])
            except ValueError as e:
                raise self._error(ins, f"invalid --chmod {flags['chmod']!r}") from e
        owner = self._owner(state, ins, flags.get("chown"))
        source_from = flags.get("from")
        plan: list[tuple[str, str]] = []  # (kind, what): context path, stage path, url, heredoc
        material: list[Any] = [ins.cmd, dest, chmod, owner]
        from_layers: list[str] | None = None
        count = 0  # sources known here; --from globs are counted in the child
        if source_from is not None:
            if add:
                raise self._error(ins, "ADD does not take --from")
            from_layers, from_key = self._from_source(ins, source_from)
            material.append(from_key)
            plan = [("from", s) for s in srcs]
            material.append(srcs)
        else:
            for s in srcs:
                try:
                    opened = df.parse_heredoc_word(s)
                except ValueError as e:
                    raise self._error(ins, str(e)) from e
                if opened is not None and opened.name in heredocs:
                    doc = heredocs[opened.name]
                    text = doc.content
                    if doc.expand and "$" in text:
                        try:
                            text = df.expand_heredoc(text, scope)
                        except ValueError as e:
                            raise self._error(ins, str(e)) from e
                    plan.append(("heredoc", doc.name + "\0" + text))
                    material.append(["heredoc", doc.name, text])
                elif add and s.startswith(("http://", "https://")):
                    plan.append(("url", s))
                    material.append(["url", s, self._fetch(ins, s)])
                elif s.startswith(("http://", "https://", "git@")) or s.endswith(".git"):
                    raise self._error(ins, f"{ins.cmd} cannot take a URL source: {s}")
                else:
                    try:
                        found = self.ctx.sources(s)
                    except NotFound as e:
                        raise self._error(ins, f"{ins.cmd} failed: {e}") from e
                    plan += [("context", r) for r in found]
                    count += len(found) - 1
                    material.append(["context", s, found, self.ctx.digest(found)])
        if count + len(plan) > 1 and not dest.endswith("/"):
            raise self._error(
                ins, f"when using {ins.cmd} with more than one source file, the destination "
                "must be a directory and end with a /",
            )  # fmt: skip
        lowers = self._lowers(state)
        shown_flags = "".join(f"--{k}={v} " if v is not None else f"--{k} " for k, v in ins.flags)
        created_by = f"{ins.cmd} {shown_flags}{' '.join(srcs)} {words[-1]} # buildkit"

        def make() -> Layer | None:
            def action(rootfd: int, srcfd: int) -> None:
                keep = source_from is not None and "chown" not in flags
                _apply_copy(self, plan, dest, rootfd, srcfd, None if keep else owner, chmod,
                            add, ins)  # fmt: skip

            return self._in_overlay(state, lowers, from_layers, action)

        self._record(state, ins, material, created_by, make)

    def _owner(self, state: State, ins: df.Instruction, chown: str | None) -> tuple[int, int]:
        if not chown:
            return 0, 0
        from cove.container import resolve_user

        try:
            user = resolve_user(chown, [], list(reversed(self._lowers(state))))
        except CoveError as e:
            raise self._error(ins, f"--chown {chown}: {e}") from e
        return user.uid, user.gid

    def _from_source(self, ins: df.Instruction, ref: str) -> tuple[list[str], str]:
        """The layers (lowest first) and cache key of COPY --from's stage or image."""
        dep = self._stage_ref(ref, self.current)
        if dep is not None:
            if dep.index not in self.results:
                raise self._error(ins, f"stage {ref!r} is not built before it is used")
            st = self.results[dep.index]
            return [self.store.layer_path(la.diff_id) for la in st.layers], st.key
        try:
            img = self._image(ref, None)
        except CoveError as e:
            raise self._error(ins, f"COPY --from={ref}: {e}") from e
        paths = [
            self.store.unpack_layer(d, i)
            for d, i in zip(img.manifest.layers, img.config.diff_ids, strict=True)
        ]  # fmt: skip
        return paths, img.manifest_digest

    def _fetch(self, ins: df.Instruction, url: str) -> str:
        """Download ``url`` into the build's temp files; the content digest (its cache key)."""
        import urllib.error
        import urllib.request

        if self.opts.network == "none":
            # the host fetches ADD URLs (as BuildKit): a build without network fetches nothing
            raise self._error(ins, f"ADD {url}: remote sources need network; this build runs "
                              "with --network none")  # fmt: skip
        path = self._downloads.get(url)
        if path is None:
            fd, path = tempfile.mkstemp(dir=self.store.tmpdir, prefix="add-")
            self._downloads[url] = path
            try:
                with urllib.request.urlopen(url, timeout=30) as resp, os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(resp, f)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise self._error(
                    ins, f"ADD {url}: cannot fetch it ({reason}); remote sources need network, "
                    "which this build does not have: not supported offline",
                ) from e  # fmt: skip
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return "sha256:" + h.hexdigest()

    def cleanup(self) -> None:
        for path in self._downloads.values():
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
        from cove.rootfs import write_layer_tar

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

    # -- RUN ----------------------------------------------------------------------------

    def _intermediate(self, state: State) -> Any:
        """The state as an unnamed store image a container can start from. Without its
        VOLUMEs: BuildKit keeps what a RUN writes below them."""
        doc = self._image_doc(state)
        doc.get("config", {}).pop("Volumes", None)
        img, _ = self.store.put_image(doc, [la.desc for la in state.layers])
        return img

    @staticmethod
    def _image_doc(state: State) -> dict[str, Any]:
        doc = copymod.deepcopy(state.doc)
        doc["rootfs"] = {"type": "layers", "diff_ids": [la.diff_id for la in state.layers]}
        return doc

    def _run(
        self,
        state: State,
        ins: df.Instruction,
        argv: list[str],
        args: dict[str, str],
        network: str,
        script: Heredoc | None,
    ) -> Layer | None:
        from cove.container import RunOptions
        from cove.state import OP_CREATE

        img = self._intermediate(state)
        volumes: list[str] = []
        if script is not None:
            fd, path = tempfile.mkstemp(dir=self.store.tmpdir, prefix="pipe-")
            with os.fdopen(fd, "w") as f:
                f.write(script.content)
            os.chmod(path, 0o755)
            self._downloads[path] = path  # removed with the build's other temp files
            # under /dev, a tmpfs: the mount point never reaches the layer
            volumes.append(f"{path}:{PIPES}/{script.name}:ro")
        opts = RunOptions(
            volumes=volumes,
            image=f"cove-build:{img.id.removeprefix('sha256:')[:12]}",
            command=argv,
            entrypoint="",
            env=[f"{k}={v}" for k, v in args.items()],
            network=network,
            user=state.config.get("User") or None,
            workdir=state.workdir(),
            hostname="buildkitsandbox",
            pull="never",
        )
        cid = self.ce.create(opts, op=OP_CREATE, image=img)
        try:
            code = self.ce.run_captured(cid, self.progress.output)
            if code != 0:
                self.progress.failed()
                raise BuildError(
                    f"{self.file.filename}:{ins.line}: {ins.original[:200]} "
                    f"returned a non-zero code: {code}"
                )
            rec = self.ce.store.get(cid)
            upper = self.ce.layers_top_first(rec)[0]
            _drop_mount_targets(upper, self._lowers(state), self.ce.oci_spec(rec))
            return self._commit_upper(upper)
        finally:
            with contextlib.suppress(Exception):
                self.ce.discard(self.ce.store.get(cid), volumes=True)

    # -- the result ---------------------------------------------------------------------

    def _finish(self, state: State) -> str:
        doc = self._image_doc(state)
        labels = _parse_labels(self.opts.labels)
        if labels:
            doc["config"]["Labels"] = {**(doc["config"].get("Labels") or {}), **labels}
        if not doc.get("created"):
            doc["created"] = (
                _rfc3339(self.epoch, exact=False) if self.epoch is not None else
                _rfc3339(time.time(), exact=True)
            )  # fmt: skip
        img, desc = self.store.put_image(doc, [la.desc for la in state.layers])
        names = [_tag(t) for t in self.opts.tags]
        self.store.add_image(desc, names)
        self.progress.line(f"writing image {img.id}")
        for n in names:
            self.progress.line(f"naming to {n}")
        return str(img.id)


# -- helpers -------------------------------------------------------------------------------


def _tag(text: str) -> refs.Reference:
    ref = refs.parse(text)
    if ref.digest:
        raise InvalidSpec(f"invalid tag {text!r}: a build names images by tag, not digest")
    return ref if ref.tag else refs.parse(text + ":latest")


def _parse_build_args(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not name:
            raise InvalidSpec(f"invalid --build-arg {item!r}: want NAME=VALUE")
        if not eq:
            if name not in os.environ:
                continue  # Docker: a bare name takes the value from the environment, if any
            value = os.environ[name]
        out[name] = value
    return out


def _parse_labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name:
            raise InvalidSpec(f"invalid --label {item!r}: want KEY=VALUE")
        out[name] = value
    return out


def _lookup(dirfd: int, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` below ``dirfd`` without following any symlink on the way (a
    step's upper directory and an image's layers are the container's to shape), or None."""
    from cove.syscalls import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, openat2

    parent, base = posixpath.split(rel)
    try:
        pfd = openat2(dirfd, parent or ".", os.O_PATH | os.O_DIRECTORY,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)  # fmt: skip
    except OSError:
        return None
    try:
        return os.stat(base, dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _remove_empty(dirfd: int, rel: str) -> bool:
    """Remove ``rel`` below ``dirfd`` if it is an empty directory or empty file, reached
    without following symlinks; whether it went."""
    from cove.syscalls import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, openat2

    parent, base = posixpath.split(rel)
    try:
        pfd = openat2(dirfd, parent or ".", os.O_PATH | os.O_DIRECTORY,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)  # fmt: skip
    except OSError:
        return False
    try:
        st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(base, dir_fd=pfd)  # only when empty: anything in it is the step's work
        elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(base, dir_fd=pfd)
        else:
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(pfd)


def _drop_mount_targets(upper: str, lowers: list[str], oci: Any) -> None:
    """Take out of a RUN's upper directory what only the runtime made: empty files and
    directories created as mount points (/etc/hosts, /proc, ...) that no layer has, and
    parents left empty without them. Every path is resolved below its directory fd with
    no symlink followed: the step may have planted ``/x -> /`` in the upper directory."""
    ufd = os.open(upper, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    lfds = [os.open(lo, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for lo in lowers]
    try:
        for m in oci.mounts:
            rel = posixpath.normpath("/" + m.destination).strip("/")
            if not rel or any(_lookup(fd, rel) is not None for fd in lfds):
                continue
            if not _remove_empty(ufd, rel):
                continue
            parent = posixpath.dirname(rel)
            while parent:
                below = [_lookup(fd, parent) for fd in lfds]
                if any(st is not None and not stat.S_ISDIR(st.st_mode) for st in below):
                    break
                if not _remove_empty(ufd, parent):
                    break
                parent = posixpath.dirname(parent)
    finally:
        for fd in (ufd, *lfds):
            os.close(fd)


def _make_dirs_owned(rootfd: int, rel: str, owner: tuple[int, int]) -> None:
    """mkdir -p ``rel`` inside the root (symlinks resolved in it); the ones made get
    ``owner``."""
    from cove import safepath

    done = ""
    for comp in [c for c in rel.split("/") if c]:
        done = posixpath.join(done, comp) if done else comp
        try:
            os.close(safepath.open_dir(rootfd, done, create=False))
            continue
        except FileNotFoundError:
            pass
        fd = safepath.open_dir(rootfd, done, create=True)
        try:
            if owner != (0, 0):
                os.chown(f"/proc/self/fd/{fd}", *owner)
        finally:
            os.close(fd)


def _apply_copy(
    b: Builder,
    plan: list[tuple[str, str]],
    dest: str,
    rootfd: int,
    srcfd: int,
    owner: tuple[int, int] | None,
    chmod: int | None,
    add: bool,
    ins: df.Instruction,
) -> None:
    """COPY/ADD inside the child: place each planned source at ``dest``. ``owner`` None
    keeps the sources' own (COPY --from without --chown)."""
    from cove import fscopy, safepath
    from cove.build.context import tar_compression
    from cove.syscalls import openat2

    sources: list[tuple[str, str]] = []
    for kind, what in plan:
        if kind != "from":
            sources.append((kind, what))
            continue
        found = glob(srcfd, what)
        if not found:
            raise NotFound(f"{ins.cmd} --from: {what}: not found")
        sources += [(kind, rel) for rel in found]
    into_dir = dest.endswith("/")
    if len(sources) > 1 and not into_dir:
        raise InvalidSpec(f"when using {ins.cmd} with more than one source file, the "
                          "destination must be a directory and end with a /")  # fmt: skip
    rel_dest = dest.strip("/")
    if not into_dir and rel_dest:
        with contextlib.suppress(OSError):
            os.close(safepath.open_dir(rootfd, rel_dest, create=False))
            into_dir = True  # an existing directory takes the sources in, as Docker's COPY
    made_owner = owner or (0, 0)

    def made_dir(rel: str) -> int:
        _make_dirs_owned(rootfd, rel, made_owner)
        return safepath.open_dir(rootfd, rel, create=False)

    def copier(kind: str, base: str) -> fscopy._Copier:
        return fscopy._Copier(
            owner=owner or (0, 0), keep_setid=True, chmod=chmod, keep_owner=owner is None,
            keep_links=True, skip=_below(b.ctx.excluded, b.ctx.resolve(base))
            if kind == "context" else None,
        )  # fmt: skip

    for kind, what in sources:
        if kind == "heredoc":
            name, _, text = what.partition("\0")
            parent, base = (rel_dest, name) if into_dir else posixpath.split(rel_dest)
            dfd = made_dir(parent)
            try:
                out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                              0o644, dir_fd=dfd)  # fmt: skip
            finally:
                os.close(dfd)
            try:
                os.write(out, text.encode())
                os.fchown(out, *made_owner)
                os.fchmod(out, 0o644 if chmod is None else chmod)
            finally:
                os.close(out)
            continue
        if kind == "url":
            path = b._downloads[what]
            name = posixpath.basename(what.split("?", 1)[0].rstrip("/")) or "index.html"
            parent, base = (rel_dest, name) if into_dir else posixpath.split(rel_dest)
            dfd = made_dir(parent)
            try:
                c = copier(kind, "")
                c.chmod = 0o600 if chmod is None else chmod  # Docker's mode for URL sources
                sfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    c.entry(sfd, os.fstat(sfd), dfd, base, dest)
                finally:
                    os.close(sfd)
            finally:
                os.close(dfd)
            continue
        rel = what
        try:
            sfd = openat2(srcfd, rel or ".", os.O_PATH, safepath.IN_ROOT)
        except FileNotFoundError as e:
            raise NotFound(f"{ins.cmd} failed: {rel or '.'}: not found") from e
        try:
            st = os.fstat(sfd)
            if stat.S_ISDIR(st.st_mode):
                dfd = made_dir(rel_dest)
                try:
                    copier(kind, rel).contents(sfd, dfd, dest)
                finally:
                    os.close(dfd)
                continue
            if add and kind == "context" and stat.S_ISREG(st.st_mode):
                rfd = os.open(f"/proc/self/fd/{sfd}", os.O_RDONLY | os.O_CLOEXEC)
                with os.fdopen(rfd, "rb") as f:
                    compression = tar_compression(f)
                    if compression is not None:
                        dfd = made_dir(rel_dest)
                        try:
                            _extract(f, compression, dfd, what)
                        finally:
                            os.close(dfd)
                        continue
            base = posixpath.basename(rel) if into_dir else posixpath.basename(rel_dest)
            parent = rel_dest if into_dir else posixpath.dirname(rel_dest)
            dfd = made_dir(parent)
            try:
                copier(kind, rel).entry(sfd, st, dfd, base, posixpath.join("/", parent, base))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)


def _below(skip: Callable[[str, bool], bool], base: str) -> Callable[[str, bool], bool]:
    """``skip`` for paths given relative to ``base``."""
    return lambda rel, is_dir: skip(posixpath.join(base, rel) if base else rel, is_dir)


def _extract(f: Any, compression: str, dfd: int, what: str) -> None:
    """ADD's auto-extraction, with the layer unpacker's containment: every entry lands
    inside the destination directory; ``.wh.`` names are plain files here."""
    from cove.image import streams
    from cove.image.layers import unpack_stream

    src = streams.decompressor(f, compression, what)
    unpack_stream(src, f"/proc/self/fd/{dfd}", what, privileged=True, whiteouts=False)


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM and SIGHUP end a build like Ctrl-C: through the clean-up paths."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def build(ce: Any, opts: BuildOptions, stdin: Any = None) -> str:
    """Build ``opts``; the new image's id."""
    from cove.build import context

    progress = Progress("quiet" if opts.quiet else opts.progress)
    ce.engine.images.ensure()
    with (
        interrupts_as_keyboard(),
        context.load(
            opts.context, opts.dockerfile, stdin or sys.stdin.buffer, ce.engine.images.tmpdir
        ) as ctx,
    ):
        builder = Builder(ce, opts, ctx, progress)
        try:
            return builder.build()
        finally:
            builder.cleanup()


__all__ = ["BuildError", "BuildOptions", "Builder", "build", "glob"]
