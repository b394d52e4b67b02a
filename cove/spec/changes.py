"""``--change`` instructions (the Dockerfile subset ``docker import``/``commit`` accept). Pure."""

from __future__ import annotations

import json
import shlex
from typing import Any

from cove.errors import InvalidSpec

ALLOWED = (
    "CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
)  # fmt: skip


def _json_or_shell(arg: str, *, shell: bool) -> list[str]:
    if arg.startswith("["):
        try:
            value = json.loads(arg)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", arg] if shell else [arg]


def _pairs(arg: str, what: str) -> dict[str, str]:
    words = shlex.split(arg)
    if words and "=" not in words[0]:  # legacy "ENV key value"
        if len(words) < 2:
            raise InvalidSpec(f"{what} needs a value")
        key, _, rest = arg.strip().partition(" ")
        return {key: rest.strip()}
    out = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise InvalidSpec(f"{what}: {w!r} is not KEY=VALUE")
        out[key] = value
    return out


def apply_change(config: dict[str, Any], change: str) -> None:
    """Apply one instruction, e.g. ``CMD ["/bin/sh"]``, to an image's ``config`` section."""
    text = change.strip()
    word, _, arg = text.partition(" ")
    instr, arg = word.upper(), arg.strip()
    what = f"invalid --change {change!r}"
    if instr not in ALLOWED:
        raise InvalidSpec(f"{what}: unknown or unsupported instruction {word!r}")
    if not arg:
        raise InvalidSpec(f"{what}: {instr} needs an argument")
    if instr in ("CMD", "ENTRYPOINT"):
        config["Cmd" if instr == "CMD" else "Entrypoint"] = _json_or_shell(arg, shell=True)
    elif instr == "ENV":
        env = [e for e in config.get("Env") or [] if isinstance(e, str)]
        for key, value in _pairs(arg, what).items():
            env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
        config["Env"] = env
    elif instr == "LABEL":
        config.setdefault("Labels", {}).update(_pairs(arg, what))
    elif instr == "EXPOSE":
        ports = config.setdefault("ExposedPorts", {})
        for p in arg.split():
            port, _, proto = p.partition("/")
            if not port.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                raise InvalidSpec(f"{what}: bad port {p!r}")
            ports[f"{port}/{proto or 'tcp'}"] = {}
    elif instr == "VOLUME":
        vols = config.setdefault("Volumes", {})
        for v in _json_or_shell(arg, shell=False) if arg.startswith("[") else arg.split():
            vols[v] = {}
    elif instr == "ONBUILD":
        config.setdefault("OnBuild", []).append(arg)
    else:
        config[{"STOPSIGNAL": "StopSignal", "USER": "User", "WORKDIR": "WorkingDir"}[instr]] = arg
