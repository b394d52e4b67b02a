"""Metadata instructions (ENV, ARG, LABEL, ...): each one an edit of the stage's image
config or scope, and nothing else. Pure: no I/O. Each handler returns what identifies its
edit in the step's cache key; the builder records the step (history entry, no layer).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cove.build import dockerfile as df
from cove.build.dispatch import Dispatch, State
from cove.errors import InvalidSpec

Handler = Callable[[Dispatch, State, df.Instruction, dict[str, str]], Any]


def apply(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    """Edit ``state`` for the metadata instruction ``ins`` (``meta``: the global args);
    the cache material of the edit."""
    return HANDLERS[ins.cmd](d, state, ins, meta)


def _env(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    try:
        pairs = df.parse_kv(ins.raw, state.scope(), escape=d.file.escape)
    except ValueError as e:
        raise d.error(ins, str(e)) from e
    env = state.env()
    for k, v in pairs:
        env.pop(k, None)
        env[k] = v
    state.config["Env"] = [f"{k}={v}" for k, v in env.items()]
    return pairs


def _arg(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    for name, default in d.arg_pairs(ins, state.scope):
        if name in d.build_args:
            d.used_args.add(name)
            state.args[name] = d.build_args[name]
        elif default is not None:
            state.args[name] = default
        elif name in meta:
            state.args[name] = meta[name]  # ``ARG NAME`` inherits the global value
        # else declared without a value: unset, as ${NAME-x} and RUN's env see it
    return sorted(state.args.items())


def _label(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    try:
        pairs = df.parse_kv(ins.raw, state.scope(), escape=d.file.escape)
    except ValueError as e:
        raise d.error(ins, str(e)) from e
    labels = dict(state.config.get("Labels") or {})
    labels.update(pairs)
    state.config["Labels"] = labels
    return pairs


def _maintainer(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    state.doc["author"] = ins.raw
    return ins.raw


def _expose(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    ports = dict(state.config.get("ExposedPorts") or {})
    words = [p for w in d.words(ins, state.scope()) for p in w.split()]
    for word in words:
        port, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        lo, _, hi = port.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or proto not in ("tcp", "udp", "sctp"):
            raise d.error(ins, f"invalid port {word!r}")
        for p in range(int(lo), int(hi or lo) + 1):
            ports[f"{p}/{proto}"] = {}
    state.config["ExposedPorts"] = ports
    return sorted(ports)


def _cmd(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    state.config["Cmd"] = d.command(state, ins)
    state.cmd_set = True
    return state.config["Cmd"]


def _entrypoint(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    state.config["Entrypoint"] = d.command(state, ins)
    if not state.cmd_set:
        state.config["Cmd"] = None  # Docker: a new ENTRYPOINT drops the base image's CMD
    return [state.config["Entrypoint"], state.config.get("Cmd")]


def _shell(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    if not ins.json or not ins.args:
        raise d.error(ins, "SHELL requires the arguments in JSON form")
    state.config["Shell"] = list(ins.args)
    return ins.args


def _user(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    user = d.whole(ins, state.scope())
    state.config["User"] = user
    return user


def _volume(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    vols = dict(state.config.get("Volumes") or {})
    for word in d.words(ins, state.scope()):
        if not word:
            raise d.error(ins, "VOLUME specified can not be an empty string")
        vols[word] = {}
    state.config["Volumes"] = vols
    return sorted(vols)


def _stopsignal(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    from cove.spec.flags import parse_signal

    sig = d.whole(ins, state.scope())
    try:
        parse_signal(sig)
    except InvalidSpec as e:
        raise d.error(ins, str(e)) from e
    state.config["StopSignal"] = sig
    return sig


def _onbuild(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    trigger = ins.raw + "".join(f"\n{h.content}{h.name}" for h in ins.heredocs)
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), trigger]
    return ins.raw


def _healthcheck(d: Dispatch, state: State, ins: df.Instruction, meta: dict[str, str]) -> Any:
    from cove.spec.flags import parse_duration

    words = ins.raw.split(None, 1)
    kind = words[0].upper() if words else ""
    if kind == "NONE":
        if ins.flags or len(words) > 1:
            raise d.error(ins, "HEALTHCHECK NONE takes no arguments")
        state.config["Healthcheck"] = {"Test": ["NONE"]}
        return ["NONE"]
    if kind != "CMD" or len(words) < 2:
        raise d.error(ins, "HEALTHCHECK wants NONE or CMD command")
    rest = words[1].strip()
    try:
        test = ["CMD", *json.loads(rest)] if rest.startswith("[") else ["CMD-SHELL", rest]
    except ValueError:
        test = ["CMD-SHELL", rest]
    check: dict[str, Any] = {"Test": test}
    names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
             "start-interval": "StartInterval"}  # fmt: skip
    for flag, value in d.flags(ins, state.scope()).items():
        try:
            if flag == "retries":
                check["Retries"] = int(value)
            else:
                check[names[flag]] = int(parse_duration(value, f"--{flag}") * 1e9)
        except (ValueError, InvalidSpec) as e:
            raise d.error(ins, f"invalid --{flag} {value!r}") from e
    state.config["Healthcheck"] = check
    return check


HANDLERS: dict[str, Handler] = {
    "ENV": _env,
    "ARG": _arg,
    "LABEL": _label,
    "MAINTAINER": _maintainer,
    "EXPOSE": _expose,
    "CMD": _cmd,
    "ENTRYPOINT": _entrypoint,
    "SHELL": _shell,
    "USER": _user,
    "VOLUME": _volume,
    "STOPSIGNAL": _stopsignal,
    "ONBUILD": _onbuild,
    "HEALTHCHECK": _healthcheck,
}
