"""A 150-byte static x86-64 program that makes a restored VM fresh: it sets the clock and
seeds the kernel's random number generator from what the host sends.

A VM restored from a template (``cove.vm.template``) wakes with the template's clock and
the template's CRNG state: every copy would print the same ``/dev/urandom`` bytes until the
kernel reseeds on its own (up to a minute later). Writing to /dev/urandom only mixes bytes
into the input pool, credits nothing and reseeds nothing; the guest has no vmgenid driver
(Debian's 6.1 cloud kernel lacks CONFIG_VMGENID) and busybox has no tool for the ioctls. So
each run carries this program and the host's bytes in a file it reads on stdin:

    struct timespec now;            16 bytes: the host's CLOCK_REALTIME
    struct rand_pool_info seed;     entropy_count (bits), buf_size, buf[buf_size]

It calls clock_settime(CLOCK_REALTIME, &now), ioctl(3, RNDADDENTROPY, &seed) (credited),
ioctl(3, RNDRESEEDCRNG) (the CRNG rekeys from the pool now), with fd 3 open on /dev/urandom
(the agent's redirection), then exits 0; 1 on any failure. Both ioctls need CAP_SYS_ADMIN:
the agent is the guest's root.
"""

from __future__ import annotations

import struct

_BASE = 0x400000
_HEADERS = 64 + 56
BUF_SIZE = 4096
RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
SEED_BYTES = 64
# the guests this program runs in: x86-64 machine code, there is no other build of it
ARCHES = ("x86_64",)


def program() -> bytes:
    """The ELF image (the same bytes every time: all of a run's data comes on stdin)."""
    code = bytearray()
    fails: list[int] = []
    leas: list[tuple[int, int]] = []  # (offset of the rel32, what it points at past buf)

    def lea(reg: bytes, past: int) -> None:  # lea reg, [rip + buf + past]
        code.extend(b"\x48\x8d" + reg)
        leas.append((len(code), past))
        code.extend(b"\0\0\0\0")

    def check(jcc: bytes) -> None:  # test rax, rax; jcc fail
        code.extend(b"\x48\x85\xc0" + jcc + b"\x00")
        fails.append(len(code) - 1)

    def syscall(nr: int) -> None:
        code.extend(b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05")

    code += b"\x31\xff"  # xor edi, edi                stdin
    lea(b"\x35", 0)  # lea rsi, [buf]
    code += b"\xba" + struct.pack("<I", BUF_SIZE)  # mov edx, BUF_SIZE
    syscall(0)  # read
    check(b"\x7e")  # jle fail: nothing read
    code += b"\x31\xff"  # xor edi, edi                CLOCK_REALTIME
    lea(b"\x35", 0)  # lea rsi, [buf]              the timespec
    syscall(227)  # clock_settime
    check(b"\x78")  # js fail
    code += b"\xbf" + struct.pack("<I", 3)  # mov edi, 3
    code += b"\xbe" + struct.pack("<I", RNDADDENTROPY)  # mov esi, RNDADDENTROPY
    lea(b"\x15", 16)  # lea rdx, [buf + 16]         the rand_pool_info
    syscall(16)  # ioctl
    check(b"\x78")
    code += b"\xbf" + struct.pack("<I", 3)
    code += b"\xbe" + struct.pack("<I", RNDRESEEDCRNG)
    code += b"\x31\xd2"  # xor edx, edx
    syscall(16)
    check(b"\x78")
    code += b"\x31\xff"  # exit(0)
    syscall(60)
    fail = len(code)
    code += b"\xbf" + struct.pack("<I", 1)  # fail: exit(1)
    syscall(60)
    for at in fails:
        code[at] = fail - (at + 1)
    buf = len(code)
    for at, past in leas:
        struct.pack_into("<i", code, at, buf + past - (at + 4))
    size = _HEADERS + len(code)
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, _BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    )
    # one RWX segment: the code, then BUF_SIZE bytes of zeroed memory (bss) for the input
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, _BASE, _BASE, size, size + BUF_SIZE, 0x1000)
    return ehdr + phdr + bytes(code)


def payload(realtime_ns: int, seed: bytes) -> bytes:
    """The program's stdin: the host's time and ``seed`` credited at 8 bits a byte."""
    sec, nsec = divmod(realtime_ns, 1_000_000_000)
    return struct.pack("<qqii", sec, nsec, len(seed) * 8, len(seed)) + seed


__all__ = ["ARCHES", "SEED_BYTES", "payload", "program"]
