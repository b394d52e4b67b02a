"""``cove.vm.setids``'s program for aarch64 guests: the same contract (setgroups, setgid,
setuid as immediates, then execve(argv[1], argv + 1, envp); exit 126 on any failure),
hand-assembled A64 instructions in a static ELF."""

from __future__ import annotations

import struct

_BASE = 0x400000
_HEADERS = 64 + 56
_SP = 31


def _movz(rd: int, value: int, *, wide: bool = True) -> list[int]:
    """movz/movk pair loading a 32-bit ``value`` into x``rd`` (w``rd`` when not wide)."""
    top = 0x80000000 if wide else 0
    out = [top | 0x52800000 | (value & 0xFFFF) << 5 | rd]
    if value >> 16:
        out.append(top | 0x72800000 | 1 << 21 | (value >> 16) << 5 | rd)
    return out


def program(uid: int, gid: int, groups: list[int]) -> bytes:
    for v in (uid, gid, *groups):
        if not 0 <= v < 1 << 32:
            raise ValueError(f"id {v} out of range")
    code: list[int] = []
    fails: list[int] = []  # indexes of tbnz x0, #63, fail (patched below)
    adr_at = 0

    def syscall(nr: int) -> None:
        code.extend(_movz(8, nr))
        code.append(0xD4000001)  # svc #0
        fails.append(len(code))
        code.append(0)  # tbnz x0, #63, fail: a negative return is -errno

    code.extend(_movz(0, len(groups)))
    adr_at = len(code)
    code.append(0)  # adr x1, groups (patched)
    syscall(159)  # setgroups
    code.extend(_movz(0, gid))
    syscall(144)  # setgid
    code.extend(_movz(0, uid))
    syscall(146)  # setuid
    code.append(0xF9400000 | _SP << 5 | 3)  # ldr x3, [sp]            argc
    code.append(0x91000000 | 16 << 10 | _SP << 5 | 1)  # add x1, sp, #16   argv + 1
    code.append(0xF9400000 | 1 << 5 | 0)  # ldr x0, [x1]             argv[1]
    code.append(0x8B200000 | 3 << 16 | 3 << 13 | 3 << 10 | _SP << 5 | 2)  # add x2, sp, x3, uxtx #3
    code.append(0x91000000 | 16 << 10 | 2 << 5 | 2)  # add x2, x2, #16  envp
    code.extend(_movz(8, 221))
    code.append(0xD4000001)  # execve; returning at all is failure
    fail = len(code)
    code.extend(_movz(0, 126))
    code.extend(_movz(8, 93))
    code.append(0xD4000001)  # exit(126)
    for at in fails:
        code[at] = 0xB7000000 | 31 << 19 | ((fail - at) & 0x3FFF) << 5 | 0
    groups_off = len(code) * 4 - adr_at * 4
    code[adr_at] = 0x10000000 | (groups_off & 3) << 29 | (groups_off >> 2 & 0x7FFFF) << 5 | 1
    body = b"".join(struct.pack("<I", w) for w in code)
    body += b"".join(struct.pack("<I", g) for g in groups)
    size = _HEADERS + len(body)
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 2, 183, 1, _BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return ehdr + phdr + body
