"""A 200-byte static x86-64 program that sets the groups, gid and uid baked into it and
execs its arguments: the guest's user switch for ``run --vm``.

The guest has only busybox, whose ``nsenter -S/-G`` clears the supplementary groups and
whose ``su`` needs names in /etc/passwd; a container's process gets the image user's groups
(``docker run -u nobody``: groups=65534). So each run carries this program with its own
ids as immediates. Failure to switch exits 126 before anything runs.
"""

from __future__ import annotations

import struct

_BASE = 0x400000
_HEADERS = 64 + 56


def program(uid: int, gid: int, groups: list[int]) -> bytes:
    """The ELF image: setgroups(groups), setgid(gid), setuid(uid), execve(argv[1], argv+1,
    envp), exit(126) on any failure."""
    for v in (uid, gid, *groups):
        if not 0 <= v < 1 << 32:
            raise ValueError(f"id {v} out of range")
    code = bytearray()

    def fail_jump() -> None:
        code.extend(b"\x48\x85\xc0")  # test rax, rax
        code.extend(b"\x78\x00")  # js fail (patched below)
        jumps.append(len(code) - 1)

    jumps: list[int] = []
    code += b"\x48\xc7\xc7" + struct.pack("<i", len(groups))  # mov rdi, len
    lea_at = len(code)
    code += b"\x48\x8d\x35\x00\x00\x00\x00"  # lea rsi, [rip+groups] (patched)
    code += b"\xb8" + struct.pack("<I", 116)  # mov eax, SYS_setgroups
    code += b"\x0f\x05"
    fail_jump()
    code += b"\xbf" + struct.pack("<I", gid)  # mov edi, gid
    code += b"\xb8" + struct.pack("<I", 106)  # mov eax, SYS_setgid
    code += b"\x0f\x05"
    fail_jump()
    code += b"\xbf" + struct.pack("<I", uid)  # mov edi, uid
    code += b"\xb8" + struct.pack("<I", 105)  # mov eax, SYS_setuid
    code += b"\x0f\x05"
    fail_jump()
    code += b"\x48\x8b\x0c\x24"  # mov rcx, [rsp]        argc
    code += b"\x48\x8d\x74\x24\x10"  # lea rsi, [rsp+16]  argv + 1
    code += b"\x48\x8b\x3e"  # mov rdi, [rsi]              argv[1]
    code += b"\x48\x8d\x54\xcc\x10"  # lea rdx, [rsp+rcx*8+16]  envp
    code += b"\xb8" + struct.pack("<I", 59)  # mov eax, SYS_execve
    code += b"\x0f\x05"
    fail = len(code)
    code += b"\xbf" + struct.pack("<I", 126)  # fail: mov edi, 126
    code += b"\xb8" + struct.pack("<I", 60)  # mov eax, SYS_exit
    code += b"\x0f\x05"
    for at in jumps:
        code[at] = fail - (at + 1)
    groups_at = len(code)
    struct.pack_into("<i", code, lea_at + 3, groups_at - (lea_at + 7))
    code += b"".join(struct.pack("<I", g) for g in groups)
    size = _HEADERS + len(code)
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, _BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return ehdr + phdr + bytes(code)
