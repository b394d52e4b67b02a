"""Seccomp profiles: cove's default (the allowlist of seccomp_default, Docker's semantics),
Docker's JSON format, and compilation to classic BPF through libseccomp, cached by content so
the start path only loads bytes.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

try:  # the compiled-in SHA-256: hashlib would load OpenSSL (~2.5 ms) for one small digest
    from _sha256 import sha256
except ImportError:  # pragma: no cover - an interpreter without it (3.12 calls it _sha2)
    from hashlib import sha256

from cove.errors import InvalidSpec
from cove.runtime.seccomp_default import (
    ARCH_MAP,
    DEFAULT_ERRNO,
    ERRNO,
    MACHINE_ARCH,
    RULES,
    applies,
)
from cove.spec.runtime import Seccomp, SeccompArg, SeccompSyscall

_NR_SCMP_ERROR = -1  # what seccomp_syscall_resolve_name_arch returns for an unknown name


def native_arch() -> str:
    """This machine's architecture in Docker's (libseccomp's) naming: amd64, arm64, ..."""
    machine = os.uname().machine
    return MACHINE_ARCH.get(machine, machine)


def kernel_version() -> tuple[int, int]:
    """The running kernel's major.minor, for Docker's ``minKernel``."""
    return _parse_kernel(os.uname().release)


def _parse_kernel(text: str) -> tuple[int, int]:
    parts = text.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError as e:
        raise InvalidSpec(f"seccomp: cannot read kernel version {text!r}") from e


def default_profile(
    caps: list[str], arch: str | None = None, kernel: tuple[int, int] | None = None
) -> Seccomp:
    """cove's default: the allowlist of seccomp_default.RULES for these capabilities (the
    bounding set), this architecture and kernel; everything else fails with EPERM."""
    held = set(caps)
    arch = arch or native_arch()
    kernel = kernel or kernel_version()
    rules = [
        SeccompSyscall(
            list(r.names),
            r.action,
            [SeccompArg(i, v, op) for i, v, op in r.args],
            r.errno_ret,
        )
        for r in RULES
        if applies(r, held, arch, kernel)
    ]
    return Seccomp(ERRNO, list(ARCH_MAP.get(arch, [])), rules, DEFAULT_ERRNO)


def _filter(doc: dict[str, Any], key: str, i: int, where: str) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidSpec(f"seccomp profile {where}: syscalls[{i}].{key} is not an object")
    return value


def _holds(
    cond: dict[str, Any], caps: set[str], arch: str, kernel: tuple[int, int], *, every_cap: bool
) -> list[bool]:
    """Which of Docker's criteria listed in ``cond`` hold. Caps: includes need all of them
    held (``every_cap``), excludes apply when any one is held."""
    out = []
    if cond.get("caps"):
        listed = set(cond["caps"])
        out.append(listed <= caps if every_cap else bool(listed & caps))
    if cond.get("arches"):
        out.append(arch in cond["arches"])
    if cond.get("minKernel"):
        out.append(kernel >= _parse_kernel(str(cond["minKernel"])))
    return out


def from_docker_json(
    data: bytes,
    caps: list[str],
    where: str,
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> Seccomp:
    """Read a profile in Docker's format with Docker's semantics (profiles/seccomp in moby):
    ``architectures`` or ``archMap`` (the native entry and its sub-architectures), syscalls
    kept when every ``includes`` criterion holds (caps, arches, minKernel) and dropped when
    any ``excludes`` one does (any listed cap held, the arch listed, the kernel at least
    minKernel); ``errnoRet``, ``defaultErrnoRet`` and ``valueTwo`` carried over."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidSpec(f"seccomp profile {where}: not valid json: {e}") from e
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise InvalidSpec(f"seccomp profile {where}: no defaultAction")
    if doc.get("architectures") and doc.get("archMap"):
        raise InvalidSpec(f"seccomp profile {where}: both architectures and archMap given")
    arch = arch or native_arch()
    kernel = kernel or kernel_version()
    held = set(caps)
    arches: list[str] = list(doc.get("architectures") or [])
    native = ARCH_MAP.get(arch, [""])[0]
    for entry in doc.get("archMap") or []:
        if entry.get("architecture") == native:
            arches = [native, *(entry.get("subArchitectures") or [])]
            break
    rules = []
    for i, s in enumerate(doc.get("syscalls") or []):
        if s.get("name") and s.get("names"):
            raise InvalidSpec(f"seccomp profile {where}: syscalls[{i}] has both name and names")
        names = s.get("names") or ([s["name"]] if s.get("name") else [])
        if not names or "action" not in s:
            raise InvalidSpec(f"seccomp profile {where}: syscalls[{i}] needs names and action")
        if not all(_holds(_filter(s, "includes", i, where), held, arch, kernel, every_cap=True)):
            continue
        if any(_holds(_filter(s, "excludes", i, where), held, arch, kernel, every_cap=False)):
            continue
        try:
            args = [
                SeccompArg(int(a["index"]), int(a["value"]), a["op"], int(a.get("valueTwo", 0)))
                for a in s.get("args") or []
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidSpec(f"seccomp profile {where}: syscalls[{i}] bad args: {e}") from e
        rules.append(SeccompSyscall(list(names), s["action"], args, s.get("errnoRet")))
    return Seccomp(doc["defaultAction"], arches, rules, doc.get("defaultErrnoRet"))


def _action(sc: Any, name: str, errno_ret: int | None) -> int:
    simple = {
        "SCMP_ACT_ALLOW": sc.ALLOW,
        "SCMP_ACT_KILL": sc.KILL,
        "SCMP_ACT_KILL_THREAD": sc.KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS,
        "SCMP_ACT_LOG": sc.LOG,
        "SCMP_ACT_TRAP": sc.TRAP,
    }
    if name in simple:
        return int(simple[name])
    if name == "SCMP_ACT_ERRNO":
        return int(sc.ERRNO(errno.EPERM if errno_ret is None else errno_ret))
    if name == "SCMP_ACT_TRACE":
        return int(sc.TRACE(errno_ret or 0))
    raise InvalidSpec(f"seccomp: unsupported action {name!r}")


def compile_bpf(profile: Seccomp) -> bytes:
    """Compile with libseccomp (pyseccomp binding) to a BPF program."""
    import logging
    import tempfile

    import pyseccomp as sc

    log = logging.getLogger(__name__)

    ops = {
        "SCMP_CMP_NE": sc.NE,
        "SCMP_CMP_LT": sc.LT,
        "SCMP_CMP_LE": sc.LE,
        "SCMP_CMP_EQ": sc.EQ,
        "SCMP_CMP_GE": sc.GE,
        "SCMP_CMP_GT": sc.GT,
        "SCMP_CMP_MASKED_EQ": sc.MASKED_EQ,
    }
    default = _action(sc, profile.default_action, profile.default_errno_ret)
    f = sc.SyscallFilter(default)
    native = sc.system_arch()
    for arch in profile.architectures:
        value = getattr(sc.Arch, arch.removeprefix("SCMP_ARCH_"), None)
        if value is not None and value != native:
            try:
                f.add_arch(value)
            except Exception as e:  # EEXIST when already present
                if getattr(e, "errno", None) != errno.EEXIST:
                    raise InvalidSpec(f"seccomp: cannot add architecture {arch}: {e}") from e
    for rule in profile.syscalls:
        action = _action(sc, rule.action, rule.errno_ret)
        if action == default:
            continue
        args = []
        for a in rule.args:
            if a.op not in ops:
                raise InvalidSpec(f"seccomp: unsupported operator {a.op!r}")
            args.append(sc.Arg(a.index, ops[a.op], a.value, a.value_two))
        for name in rule.names:
            # A name libseccomp cannot resolve (a syscall newer than this libseccomp, or
            # another architecture's) gets no rule, so it keeps the default action: with an
            # allowlist, unknown means refused, never allowed.
            if sc.resolve_syscall(sc.Arch.NATIVE, name) == _NR_SCMP_ERROR:
                log.debug("seccomp: %s unknown to libseccomp on this architecture, skipped", name)
                continue
            try:
                f.add_rule(action, name, *args)
            except (ValueError, RuntimeError, OSError) as e:
                raise InvalidSpec(f"seccomp: cannot add a rule for {name}: {e}") from e
    fd, path = tempfile.mkstemp(prefix="cove-bpf-")
    try:
        with os.fdopen(fd, "w+b") as out:
            f.export_bpf(out)
            out.flush()
            out.seek(0)
            return out.read()
    finally:
        os.unlink(path)


def bpf_for(profile: Seccomp, cache_dir: str) -> bytes:
    """The BPF program for ``profile``, compiled once and cached by its content."""
    from cove.spec.runtime import to_json

    key = sha256(
        json.dumps([to_json(profile), os.uname().machine], sort_keys=True).encode()
    ).hexdigest()
    path = os.path.join(cache_dir, key + ".bpf")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    program = compile_bpf(profile)
    import tempfile  # a cache miss only: with shutil and random, ~9 ms off the start path

    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(program)
    os.rename(tmp, path)
    return program
