"""The build state and how each Dockerfile instruction edits it: pure, no I/O.

BuildKit keeps dispatch apart from execution: an instruction first becomes an edit of the
stage's state (its image config, build args, history); only steps that change files then
run anything. This module is that first half. Metadata instructions (ENV, CMD, ...) are
nothing but an edit (their handlers are in ``metadata``); RUN, COPY, ADD and WORKDIR get
what they need from here (the expanded words, the RUN command line and its cache material)
and are executed by ``filesteps`` and ``runsteps``.
"""

from __future__ import annotations

import copy as copymod
import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cove.build import dockerfile as df
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


class BuildError(CoveError):
    """A step failed; the message names the Dockerfile line."""


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


@dataclass
class RunPlan:
    """A RUN step as dispatched: what runs, in which environment, and its cache identity."""

    argv: list[str]
    env: dict[str, str]  # the build args in scope (not shadowed by ENV) and the proxies
    network: str
    script: Heredoc | None  # an executable here-document, mounted under PIPES
    created_by: str
    material: list[Any]


def step_key(*parts: Any) -> str:
    """A cache key: the digest of ``parts`` as canonical JSON."""
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def rfc3339(epoch: float, exact: bool) -> str:
    t = datetime.fromtimestamp(epoch, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if exact else "%Y-%m-%dT%H:%M:%SZ")


def add_step(state: State, key: str, created: str, created_by: str, layer: Layer | None) -> None:
    """A step done: its history entry as BuildKit writes it (``empty_layer`` when it made
    no layer), its layer appended, the state's key moved on."""
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
        state.doc["rootfs"]["diff_ids"] = [*state.doc["rootfs"].get("diff_ids", []), layer.diff_id]
    state.doc["history"] = [*(state.doc.get("history") or []), entry]
    state.doc["created"] = created
    state.key = key


def image_doc(state: State) -> dict[str, Any]:
    """The state's image config document, its rootfs naming the state's layers."""
    doc = copymod.deepcopy(state.doc)
    doc["rootfs"] = {"type": "layers", "diff_ids": [la.diff_id for la in state.layers]}
    return doc


def tag(text: str) -> refs.Reference:
    ref = refs.parse(text)
    if ref.digest:
        raise InvalidSpec(f"invalid tag {text!r}: a build names images by tag, not digest")
    return ref if ref.tag else refs.parse(text + ":latest")


def parse_build_args(items: list[str], env: Mapping[str, str] = os.environ) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not name:
            raise InvalidSpec(f"invalid --build-arg {item!r}: want NAME=VALUE")
        if not eq:
            if name not in env:
                continue  # Docker: a bare name takes the value from the environment, if any
            value = env[name]
        out[name] = value
    return out


def parse_labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name:
            raise InvalidSpec(f"invalid --label {item!r}: want KEY=VALUE")
        out[name] = value
    return out


class Dispatch:
    """Expansion in a Dockerfile's escape and scope rules, and the state edit of each
    instruction. ``build_args`` are the --build-arg values; ``used_args`` collects the
    ones a stage consumed (Docker warns about the rest)."""

    def __init__(self, file: df.Dockerfile, build_args: dict[str, str]) -> None:
        self.file = file
        self.build_args = build_args
        self.used_args: set[str] = set()

    # -- stages ---------------------------------------------------------------------

    def target(self, name: str | None) -> df.Stage:
        """The stage ``--target`` names, else the last."""
        if not name:
            return self.file.stages[-1]
        for stage in self.file.stages:
            if stage.name == name.lower():
                return stage
        raise NotFound(f"target stage {name!r} could not be found")

    def meta_args(self, platform: spec.Platform, host: spec.Platform) -> dict[str, str]:
        """The global scope: predefined platform args, then ARGs before the first FROM."""
        scope = {
            "TARGETPLATFORM": str(platform),
            "TARGETOS": platform.os,
            "TARGETARCH": platform.architecture,
            "TARGETVARIANT": platform.variant,
            "BUILDPLATFORM": str(host),
            "BUILDOS": host.os,
            "BUILDARCH": host.architecture,
            "BUILDVARIANT": host.variant,
        }
        for ins in self.file.meta_args:
            for name, default in self.arg_pairs(ins, lambda: scope):
                if name in self.build_args:
                    self.used_args.add(name)
                    scope[name] = self.build_args[name]
                elif default is not None:
                    scope[name] = default
        return scope

    def stage_ref(self, word: str, before: int) -> df.Stage | None:
        """The earlier stage ``word`` names (by name or index), else None: an image
        (``FROM node AS node`` means the image node, as BuildKit reads it)."""
        for stage in self.file.stages[:before]:
            if stage.name == word.lower():
                return stage
        if word.isdigit() and int(word) < before:
            return self.file.stages[int(word)]
        return None

    def needed(self, target: df.Stage, meta: dict[str, str]) -> set[int]:
        """The stages the target depends on (FROM and COPY --from), as BuildKit builds
        only those."""
        needed: set[int] = set()
        todo = [target]
        while todo:
            stage = todo.pop()
            if stage.index in needed:
                continue
            needed.add(stage.index)
            refs_: list[str] = [self.expand(stage.from_instr, stage.base, meta)]
            for ins in stage.instructions:
                refs_ += [v for k, v in ins.flags if k == "from" and v]
            for word in refs_:
                dep = self.stage_ref(word, stage.index)
                if dep is not None:
                    todo.append(dep)
        return needed

    # -- words ----------------------------------------------------------------------

    def expand(self, ins: df.Instruction, text: str, scope: dict[str, str]) -> str:
        try:
            return df.expand(text, scope, escape=self.file.escape)
        except ValueError as e:
            raise self.error(ins, str(e)) from e

    def words(self, ins: df.Instruction, scope: dict[str, str]) -> list[str]:
        if ins.json:
            return [self.expand(ins, w, scope) for w in ins.args] if ins.cmd not in (
                "RUN", "CMD", "ENTRYPOINT", "SHELL"
            ) else list(ins.args)  # fmt: skip
        try:
            return df.expand_words(ins.raw, scope, escape=self.file.escape)
        except ValueError as e:
            raise self.error(ins, str(e)) from e

    def error(self, ins: df.Instruction, message: str) -> df.DockerfileError:
        return df.DockerfileError(self.file.filename, ins.line, message)

    def flags(self, ins: df.Instruction, scope: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in ins.flags:
            out[k] = self.expand(ins, v, scope) if v is not None else "true"
        return out

    def arg_pairs(
        self, ins: df.Instruction, scope: Callable[[], dict[str, str]]
    ) -> Iterator[tuple[str, str | None]]:
        """``ARG A=1 B=$A``: each default is expanded in the scope its predecessors made
        (``scope()`` is asked again for every pair, after the caller applied the last)."""
        for word in ins.args:
            name, eq, default = word.partition("=")
            if not name or not all(c.isalnum() or c == "_" for c in name):
                raise self.error(ins, f"invalid ARG name {name!r}")
            yield name, self.expand(ins, default, scope()) if eq else None

    def whole(self, ins: df.Instruction, scope: dict[str, str]) -> str:
        """WORKDIR, USER, STOPSIGNAL: the whole argument is one word (``WORKDIR /my app``)."""
        word = self.expand(ins, ins.raw, scope)
        if not word:
            raise self.error(ins, f"{ins.cmd} requires exactly one argument")
        return word

    @staticmethod
    def command(state: State, ins: df.Instruction) -> list[str]:
        return list(ins.args) if ins.json else [*state.shell(), ins.raw]

    # -- WORKDIR ----------------------------------------------------------------------

    def workdir(self, state: State, ins: df.Instruction) -> str:
        """WORKDIR's state edit; the absolute path (made by the file step)."""
        path = posixpath.normpath(posixpath.join(state.workdir(), self.whole(ins, state.scope())))
        state.config["WorkingDir"] = path
        return path

    # -- RUN ------------------------------------------------------------------------

    def run(self, state: State, ins: df.Instruction, default_network: str) -> RunPlan:
        """RUN as dispatched: its command, environment, network and history line."""
        flags = self.flags(ins, state.scope())
        if "mount" in flags or "security" in flags:
            name = "mount" if "mount" in flags else "security"
            raise self.error(ins, f"RUN --{name} is not supported by cove")
        network = flags.get("network", default_network)
        if network == "default":
            network = default_network
        script: Heredoc | None = None
        if ins.heredocs and not ins.json:
            argv, script = heredoc_run(state, ins)
        else:
            argv = self.command(state, ins)
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
        return RunPlan(argv, {**proxies, **args}, network, script, created_by, material)


def heredoc_run(state: State, ins: df.Instruction) -> tuple[list[str], Heredoc | None]:
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
