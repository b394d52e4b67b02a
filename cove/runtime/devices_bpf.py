"""Device access control on cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program built from the
device rules (pure), and its attachment to a container's cgroup2 directory.

cgroup v2 has no devices.allow/devices.deny files: the kernel runs the eBPF programs attached
to a cgroup (type BPF_CGROUP_DEVICE) on every mknod(2) and every open(2) of a device node by a
task in it, and refuses with EPERM unless every program returns 1.

Semantics, carried over from runc/crun/youki's generated programs: the rules are read in spec
order and a later rule overrides an earlier one (the program checks them in *reverse* order and
the first match decides); anything no rule matches is denied. Unlike a whole-request match,
the decision is taken per access bit (mknod, read, write): an open for read and write needs
both bits allowed, and a later ``deny c 1:3 w`` takes write away from an earlier
``allow c 1:3 rwm`` for an O_RDWR open too (a whole-request check would let it through).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence

from cove.errors import InvalidSpec
from cove.spec.runtime import DeviceRule
from cove.sys import syscalls as sc

# include/uapi/linux/bpf.h: struct bpf_cgroup_dev_ctx { __u32 access_type; __u32 major;
# __u32 minor; } with access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2

ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
DEV_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}

# eBPF opcodes (include/uapi/linux/bpf_common.h, bpf.h)
BPF_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
BPF_ALU_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K (32-bit)
BPF_ALU_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K (32-bit)
BPF_ALU64_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
BPF_JMP_JA = 0x05
BPF_JMP_JNE_K = 0x55
BPF_JMP_JSET_K = 0x45
BPF_JMP_EXIT = 0x95

R0, R1, R2, R3, R4, R5 = range(6)

# Docker's default device allowlist (moby oci/defaults.go): mknod of any node, use of the
# standard ones only. The v1 devices.allow lines are rendered from this same list.
DOCKER_DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(True, "c", None, None, "m"),
    DeviceRule(True, "b", None, None, "m"),
    DeviceRule(True, "c", 1, 3, "rwm"),  # /dev/null
    DeviceRule(True, "c", 1, 5, "rwm"),  # /dev/zero
    DeviceRule(True, "c", 1, 7, "rwm"),  # /dev/full
    DeviceRule(True, "c", 1, 8, "rwm"),  # /dev/random
    DeviceRule(True, "c", 1, 9, "rwm"),  # /dev/urandom
    DeviceRule(True, "c", 5, 0, "rwm"),  # /dev/tty
    DeviceRule(True, "c", 5, 1, "rwm"),  # /dev/console
    DeviceRule(True, "c", 5, 2, "rwm"),  # /dev/ptmx
    DeviceRule(True, "c", 136, None, "rwm"),  # /dev/pts/*
    DeviceRule(True, "c", 10, 200, "rwm"),  # /dev/net/tun
)


def v1_line(rule: DeviceRule) -> str:
    """The devices.allow / devices.deny line of ``rule`` ("c 1:3 rwm", "a *:* rwm")."""
    _check(rule)

    def num(n: int | None) -> str:
        return "*" if n is None else str(n)

    return f"{rule.type} {num(rule.major)}:{num(rule.minor)} {rule.access or 'rwm'}"


def _check(rule: DeviceRule) -> None:
    if rule.type not in ("a", "b", "c"):
        raise InvalidSpec(f"invalid device rule type {rule.type!r}: want a, b or c")
    if set(rule.access) - set("rwm"):
        raise InvalidSpec(f"invalid device rule access {rule.access!r}: want r, w, m")
    for n in (rule.major, rule.minor):
        # -1 is the OCI spelling of a wildcard; the kernel's device numbers fit in 32 bits,
        # and the immediate the program compares with is a signed 32-bit value
        if n is not None and not -1 <= n < 1 << 31:
            raise InvalidSpec(f"invalid device number {n} in a device rule")


def _norm(rule: DeviceRule) -> DeviceRule:
    _check(rule)
    major = None if rule.major is None or rule.major < 0 else rule.major
    minor = None if rule.minor is None or rule.minor < 0 else rule.minor
    return DeviceRule(rule.allow, rule.type, major, minor, rule.access or "rwm")


def effective_rules(spec_rules: Iterable[DeviceRule]) -> list[DeviceRule]:
    """Deny everything, then Docker's defaults, then the spec's rules (later ones override)."""
    return [DeviceRule(False, "a"), *DOCKER_DEFAULT_RULES, *spec_rules]


def allows_all(rules: Sequence[DeviceRule]) -> bool:
    """True when the rules end up allowing every access (``--privileged``: "a *:* rwm")."""
    prog = build_program(rules)
    return prog == build_program([DeviceRule(True, "a")])


def _ins(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    # struct bpf_insn { __u8 code; __u8 dst_reg:4, src_reg:4; __s16 off; __s32 imm; }
    # (bitfields little-endian on the architectures cove runs on: dst in the low nibble)
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


def build_program(rules: Sequence[DeviceRule]) -> bytes:
    """The eBPF instructions (8 bytes each) deciding device access by ``rules``.

    Layout: load type, access, major, minor from the context into R2..R5; then, for each access
    bit (m, r, w) the request carries, a chain of the rules that mention that bit, last rule
    first: the first whose type/major/minor match decides (deny: return 0; allow: on to the
    next bit); no match denies. Every bit allowed: return 1. Only forward jumps, so the
    verifier accepts it; no helper calls, so no GPL license is needed.
    """
    norm = [_norm(r) for r in rules]
    # a rule matching every device for every access shadows all the rules before it
    for i in range(len(norm) - 1, -1, -1):
        r = norm[i]
        if r.type == "a" and r.major is None and r.minor is None and set(r.access) == set("rwm"):
            norm = norm[i:]
            break

    code: list[tuple[int, int, int, int | str, int]] = []  # off may be a label, resolved below
    labels: dict[str, int] = {}

    def emit(op: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> None:
        code.append((op, dst, src, off, imm))

    def deny() -> None:
        emit(BPF_ALU64_MOV_K, R0, imm=0)
        emit(BPF_JMP_EXIT)

    emit(BPF_LDX_MEM_W, R2, R1, 0)  # access_type
    emit(BPF_ALU_AND_K, R2, imm=0xFFFF)  # R2 = device type
    emit(BPF_LDX_MEM_W, R3, R1, 0)
    emit(BPF_ALU_RSH_K, R3, imm=16)  # R3 = access bits
    emit(BPF_LDX_MEM_W, R4, R1, 4)  # R4 = major
    emit(BPF_LDX_MEM_W, R5, R1, 8)  # R5 = minor
    for letter in "mrw":
        bit = ACCESS_BITS[letter]
        done = f"bit-{letter}"
        # JSET jumps when R3 & bit != 0: fall through to the next bit when it is not asked
        emit(BPF_JMP_JSET_K, R3, off=1, imm=bit)
        emit(BPF_JMP_JA, off=done)
        terminal = False
        for n, r in enumerate(reversed(norm)):
            if letter not in r.access:
                continue
            skip = f"{letter}-{n}"
            conds = []
            if r.type != "a":
                conds.append((R2, DEV_TYPES[r.type]))
            if r.major is not None:
                conds.append((R4, r.major))
            if r.minor is not None:
                conds.append((R5, r.minor))
            for reg, value in conds:
                emit(BPF_JMP_JNE_K, reg, off=skip, imm=value)
            if r.allow:
                emit(BPF_JMP_JA, off=done)
            else:
                deny()
            if not conds:  # matches everything: the rules after it are unreachable
                terminal = True
                break
            labels[skip] = len(code)
        if not terminal:
            deny()
        labels[done] = len(code)
    emit(BPF_ALU64_MOV_K, R0, imm=1)
    emit(BPF_JMP_EXIT)

    out = bytearray()
    for pc, (op, dst, src, off, imm) in enumerate(code):
        rel = labels[off] - pc - 1 if isinstance(off, str) else off
        out += _ins(op, dst, src, rel, imm)
    return bytes(out)


def attach(cgroup_dir: str, rules: Sequence[DeviceRule]) -> bool:
    """Attach the program for ``rules`` to ``cgroup_dir`` (a cgroup2 directory).

    Returns False, attaching nothing, when ``cgroup_dir`` is not on cgroup2 (the fake trees
    of the unit tests). The program fd is closed here: the attachment holds its own
    reference, and removing the cgroup directory detaches and frees the program.
    """
    program = build_program(rules)
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if sc.fstatfs_type(fd) != sc.CGROUP2_SUPER_MAGIC:
            return False
        prog = sc.bpf_prog_load(sc.BPF_PROG_TYPE_CGROUP_DEVICE, program, "Apache-2.0")
        try:
            # BPF_F_ALLOW_MULTI (runc's choice): a program attached below (a nested runtime in
            # the container) runs in addition to ours, and the kernel needs all of them to
            # return 1, so it can only narrow what this one allows, never widen it
            sc.bpf_prog_attach(fd, prog, sc.BPF_CGROUP_DEVICE, sc.BPF_F_ALLOW_MULTI)
        finally:
            os.close(prog)
    except OSError as e:
        raise OSError(e.errno, f"cannot attach the device filter: {e.strerror}", cgroup_dir) from e
    finally:
        os.close(fd)
    return True


def attached(cgroup_dir: str) -> list[int]:
    """Ids of the BPF_CGROUP_DEVICE programs attached to ``cgroup_dir`` itself."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sc.bpf_prog_query(fd, sc.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)
