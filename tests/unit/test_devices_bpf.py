"""The cgroup device program builder: encoding, and the decisions the program takes, run by a
small interpreter of the instructions it uses (and, as root, by the kernel's verifier)."""

from __future__ import annotations

import os
import struct

import pytest

from cove.errors import InvalidSpec
from cove.runtime import devices_bpf as d
from cove.spec.runtime import DeviceRule
from cove.sys import syscalls as sc

M, R, W = d.BPF_DEVCG_ACC_MKNOD, d.BPF_DEVCG_ACC_READ, d.BPF_DEVCG_ACC_WRITE
BLK, CHR = d.BPF_DEVCG_DEV_BLOCK, d.BPF_DEVCG_DEV_CHAR


def run(prog: bytes, kind: int, access: int, major: int, minor: int) -> int:
    """Execute ``prog`` on one struct bpf_cgroup_dev_ctx; only the opcodes the builder emits."""
    ctx = struct.pack("<III", (access << 16) | kind, major, minor)
    insns = [struct.unpack("<BBhi", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    reg = [0] * 11
    pc = 0
    for _ in range(10_000):
        op, regs, off, imm = insns[pc]
        dst, src = regs & 0xF, regs >> 4
        pc += 1
        if op == d.BPF_LDX_MEM_W:
            assert src == 1, "loads only from the context"
            reg[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif op == d.BPF_ALU_AND_K:
            reg[dst] = (reg[dst] & imm) & 0xFFFFFFFF
        elif op == d.BPF_ALU_RSH_K:
            reg[dst] = (reg[dst] & 0xFFFFFFFF) >> imm
        elif op == d.BPF_ALU64_MOV_K:
            reg[dst] = imm
        elif op == d.BPF_JMP_JA:
            pc += off
        elif op == d.BPF_JMP_JNE_K:
            pc += off if reg[dst] != imm else 0
        elif op == d.BPF_JMP_JSET_K:
            pc += off if reg[dst] & imm else 0
        elif op == d.BPF_JMP_EXIT:
            return reg[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")
        assert off >= 0, "only forward jumps"
    raise AssertionError("no exit")


def test_encoding_of_the_header_and_the_exit() -> None:
    prog = d.build_program([])
    assert len(prog) % 8 == 0
    # ldxw r2, [r1+0]: code 0x61, dst 2 in the low nibble, src 1 in the high one
    assert prog[:8] == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])
    assert prog[8:16] == struct.pack("<BBhi", 0x54, 0x02, 0, 0xFFFF)  # and32 r2, 0xffff
    assert prog[24:32] == struct.pack("<BBhi", 0x74, 0x03, 0, 16)  # rsh32 r3, 16
    assert prog[40:48] == struct.pack("<BBhi", 0x61, 0x15, 8, 0)  # ldxw r5, [r1+8]
    assert prog[-16:] == struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def test_rule_encoding() -> None:
    # one allow rule: in the read chain, "jne r2, CHR; jne r4, 1; jne r5, 3; ja done"
    prog = d.build_program([DeviceRule(True, "c", 1, 3, "r")])
    want = b"".join(
        struct.pack("<BBhi", *i)
        for i in [(0x55, 0x02, 3, CHR), (0x55, 0x04, 2, 1), (0x55, 0x05, 1, 3), (0x05, 0, 2, 0)]
    )
    assert want in prog


@pytest.mark.parametrize("kind", [BLK, CHR])
@pytest.mark.parametrize("access", [M, R, W, R | W, R | W | M])
def test_deny_by_default(kind: int, access: int) -> None:
    for rules in ([], [DeviceRule(False, "a")]):
        prog = d.build_program(rules)
        assert run(prog, kind, access, 8, 0) == 0
        assert run(prog, kind, access, 1, 3) == 0


def test_docker_defaults() -> None:
    prog = d.build_program(d.effective_rules([]))
    assert run(prog, CHR, R | W, 1, 3) == 1  # /dev/null
    assert run(prog, CHR, R, 1, 9) == 1  # /dev/urandom
    assert run(prog, CHR, R | W, 136, 7) == 1  # /dev/pts/7
    assert run(prog, CHR, R | W, 10, 200) == 1  # /dev/net/tun
    assert run(prog, BLK, M, 8, 0) == 1  # mknod of anything (Docker)
    assert run(prog, CHR, M, 1, 11) == 1
    assert run(prog, BLK, R, 8, 0) == 0  # the host's disk
    assert run(prog, CHR, R, 1, 11) == 0  # /dev/kmsg
    assert run(prog, CHR, W, 1, 1) == 0  # /dev/mem
    assert run(prog, CHR, R, 10, 229) == 0  # /dev/fuse
    assert run(prog, CHR, R, 3, 3) == 0  # type matters: block 1:3 is not /dev/null
    assert run(prog, BLK, R, 1, 3) == 0


def test_later_rules_override_per_access_bit() -> None:
    rules = d.effective_rules([
        DeviceRule(True, "c", 10, 229, "rw"),  # --device /dev/fuse
        DeviceRule(False, "c", 10, 229, "w"),  # then write taken away
        DeviceRule(False, "c", 1, None, "rwm"),  # and every 1:* node
    ])  # fmt: skip
    prog = d.build_program(rules)
    assert run(prog, CHR, R, 10, 229) == 1
    assert run(prog, CHR, W, 10, 229) == 0
    assert run(prog, CHR, R | W, 10, 229) == 0  # a whole-request match would allow this
    assert run(prog, CHR, R | W, 1, 3) == 0  # the later wildcard deny wins over /dev/null
    assert run(prog, CHR, M, 1, 3) == 0
    assert run(prog, CHR, M, 2, 0) == 1
    assert run(prog, CHR, R | W, 5, 0) == 1


def test_wildcards_and_oci_minus_one() -> None:
    prog = d.build_program([DeviceRule(True, "b", 7, -1, "r"), DeviceRule(True, "a", -1, 4, "w")])
    assert run(prog, BLK, R, 7, 0) == 1 and run(prog, BLK, R, 7, 99) == 1
    assert run(prog, BLK, W, 7, 0) == 0
    assert run(prog, BLK, W, 9, 4) == 1 and run(prog, CHR, W, 9, 4) == 1
    assert run(prog, CHR, R, 7, 0) == 0


def test_allow_all_and_a_later_deny() -> None:
    assert d.allows_all([DeviceRule(True, "a")])
    assert d.allows_all([DeviceRule(False, "a"), DeviceRule(True, "a", None, None, "")])
    assert not d.allows_all(d.effective_rules([]))
    prog = d.build_program([DeviceRule(True, "a"), DeviceRule(False, "b", 8, None, "w")])
    assert run(prog, BLK, R, 8, 0) == 1 and run(prog, CHR, R | W, 8, 0) == 1
    assert run(prog, BLK, R | W, 8, 0) == 0
    # "a *:* m" alone matches every mknod: the rules before it are not emitted for m
    prog = d.build_program(
        [DeviceRule(False, "c", 1, 1, "m"), DeviceRule(True, "a", None, None, "m")]
    )
    assert run(prog, CHR, M, 1, 1) == 1 and run(prog, CHR, R, 1, 1) == 0


@pytest.mark.parametrize(
    "rule",
    [DeviceRule(True, "x"), DeviceRule(True, "c", 1, 3, "rx"), DeviceRule(True, "c", 1 << 31, 0)],
)
def test_invalid_rules(rule: DeviceRule) -> None:
    with pytest.raises(InvalidSpec):
        d.build_program([rule])


def test_v1_lines() -> None:
    assert d.v1_line(DeviceRule(True, "c", None, None, "m")) == "c *:* m"
    assert d.v1_line(DeviceRule(True, "c", 136, None)) == "c 136:* rwm"
    assert d.v1_line(DeviceRule(False, "a")) == "a *:* rwm"


@pytest.mark.skipif(os.geteuid() != 0, reason="loading a cgroup device program needs root")
@pytest.mark.parametrize(
    "rules",
    [
        [],
        d.effective_rules([]),
        [DeviceRule(True, "a", None, None, "m"), DeviceRule(False, "c", 1, 1, "rw")],
        [DeviceRule(True, "a"), DeviceRule(False, "b", 8, None, "w")],
    ],
)
def test_the_kernel_verifier_accepts(rules: list[DeviceRule]) -> None:
    fd = sc.bpf_prog_load(sc.BPF_PROG_TYPE_CGROUP_DEVICE, d.build_program(rules), "Apache-2.0")
    os.close(fd)


def test_device_flag_parsing() -> None:
    from cove.bundle import _device

    node, perms = _device("/dev/null")
    assert (node.path, node.type, node.major, node.minor, perms) == ("/dev/null", "c", 1, 3, "rwm")
    node, perms = _device("/dev/null:/dev/mynull:rw")
    assert (node.path, perms) == ("/dev/mynull", "rw")
    node, perms = _device("/dev/null:r")
    assert (node.path, perms) == ("/dev/null", "r")
    for bad in ("/dev/nonexistent-cove", "/etc/hostname", "dev/null", "/dev/null:rel", "/a:/b:/c"):
        with pytest.raises(InvalidSpec):
            _device(bad)
