"""Seccomp profiles: cove's default (equivalent in effect to Docker's), Docker's JSON format, and
compilation to classic BPF through libseccomp, cached by content so the start path only loads bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from typing import Any

from cove.errors import InvalidSpec
from cove.spec.runtime import Seccomp, SeccompArg, SeccompSyscall

_NS_FLAGS = {  # clone(2) flags that make namespaces
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
AF_VSOCK = 40

# Syscalls Docker's default profile keeps from containers, grouped by the capability that
# lifts the ban (as Docker's profile does with "includes": {"caps": [...]}); None: always denied.
DENIED: dict[str | None, list[str]] = {
    None: [
        "add_key",
        "keyctl",
        "request_key",
        "create_module",
        "get_kernel_syms",
        "query_module",
        "lookup_dcookie",
        "nfsservctl",
        "uselib",
        "userfaultfd",
        "ustat",
        "sysfs",
        "_sysctl",
        "vm86",
        "vm86old",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "kexec_file_load",
        "kexec_load",
    ],
    "CAP_SYS_ADMIN": [
        "mount",
        "umount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "quotactl",
        "quotactl_fd",
        "name_to_handle_at",
        "open_by_handle_at",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        "lookup_dcookie",
        "swapon",
        "swapoff",
    ],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_MODULE": ["init_module", "finit_module", "delete_module"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"],
    "CAP_SYS_PTRACE": ["process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def default_profile(caps: list[str]) -> Seccomp:
    """Deny what Docker's default denies, given the container's capabilities."""
    held = set(caps)
    rules: list[SeccompSyscall] = []
    denied: list[str] = []
    for cap, names in DENIED.items():
        if cap is None or (cap not in held and not (cap == "CAP_BPF" and "CAP_SYS_ADMIN" in held)):
            denied += [n for n in names if n not in denied]
    if denied:
        rules.append(SeccompSyscall(sorted(denied), "SCMP_ACT_ERRNO", errno_ret=errno.EPERM))
    if "CAP_SYS_ADMIN" not in held:
        for flag in _NS_FLAGS.values():  # clone with any namespace flag
            rules.append(
                SeccompSyscall(
                    ["clone"],
                    "SCMP_ACT_ERRNO",
                    [SeccompArg(0, flag, "SCMP_CMP_MASKED_EQ", flag)],
                    errno_ret=errno.EPERM,
                )
            )
    # glibc falls back to clone(2), whose flags we can inspect, when clone3 says ENOSYS
    rules.append(SeccompSyscall(["clone3"], "SCMP_ACT_ERRNO", errno_ret=errno.ENOSYS))
    rules.append(
        SeccompSyscall(
            ["socket"],
            "SCMP_ACT_ERRNO",
            [SeccompArg(0, AF_VSOCK, "SCMP_CMP_EQ")],
            errno_ret=errno.EPERM,
        )
    )
    return Seccomp("SCMP_ACT_ALLOW", _ARCHES.get(os.uname().machine, []), rules)


def _matches(cond: dict[str, Any], caps: set[str], arch: str) -> bool:
    """Docker's includes semantics: every listed criterion must hold."""
    if cond.get("caps") and not set(cond["caps"]) <= caps:
        return False
    return not cond.get("arches") or arch in cond["arches"]


def from_docker_json(data: bytes, caps: list[str], where: str) -> Seccomp:
    """Read a profile in Docker's format (defaultAction, archMap, syscalls with includes)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidSpec(f"seccomp profile {where}: not valid json: {e}") from e
    if not isinstance(doc, dict) or "defaultAction" not in doc:
        raise InvalidSpec(f"seccomp profile {where}: no defaultAction")
    machine = os.uname().machine
    goarch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    held = set(caps)
    arches: list[str] = list(doc.get("architectures") or [])
    for entry in doc.get("archMap") or []:
        native = _ARCHES.get(machine, [""])[0]
        if entry.get("architecture") == native:
            arches = [native, *entry.get("subArchitectures", [])]
    rules = []
    for i, s in enumerate(doc.get("syscalls") or []):
        names = s.get("names") or ([s["name"]] if s.get("name") else [])
        if not names or "action" not in s:
            raise InvalidSpec(f"seccomp profile {where}: syscalls[{i}] needs names and action")
        if not _matches(s.get("includes") or {}, held, goarch):
            continue
        excludes = s.get("excludes") or {}
        if excludes and (
            set(excludes.get("caps") or []) & held or goarch in (excludes.get("arches") or [])
        ):
            continue
        args = [
            SeccompArg(a["index"], a["value"], a["op"], a.get("valueTwo", 0))
            for a in s.get("args") or []
        ]
        rules.append(SeccompSyscall(names, s["action"], args, s.get("errnoRet")))
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
    import pyseccomp as sc

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
            try:
                f.add_rule(action, name, *args)
            except (ValueError, RuntimeError, OSError):
                continue  # a syscall this architecture does not have
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

    key = hashlib.sha256(
        json.dumps([to_json(profile), os.uname().machine], sort_keys=True).encode()
    ).hexdigest()
    path = os.path.join(cache_dir, key + ".bpf")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    program = compile_bpf(profile)
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(program)
    os.rename(tmp, path)
    return program
