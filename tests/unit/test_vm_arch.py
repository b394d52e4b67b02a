"""The per-architecture VM choices (cove/vm/arch.py): parsing --arch and rewriting the
x86_64 QEMU command lines for an aarch64 guest, pure (no QEMU is started)."""

from __future__ import annotations

import pytest

from cove.errors import InvalidSpec, Unsupported
from cove.vm import arch, qemu
from cove.vm.qemu import RunFiles


def run_argv(accel: str = "kvm") -> list[str]:
    files = RunFiles("/d", "/r")
    return qemu.run_command(
        accel=accel, cpus=1, memory_mib=256, kernel="/k/vmlinuz",
        append="console=ttyS0 quiet", files=files, volumes=1,
    )  # fmt: skip


def opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("text", ["aarch64", "arm64", "ARM64"])
def test_parse_aliases(text: str) -> None:
    assert arch.parse(text) is arch.AARCH64


def test_parse_refuses_unknown() -> None:
    assert arch.parse("amd64") is arch.X86_64  # the positive beside it
    with pytest.raises(InvalidSpec, match="unsupported vm architecture 'mips'"):
        arch.parse("mips")


def test_x86_64_is_unchanged() -> None:
    argv = run_argv()
    assert arch.adapt(argv, arch.X86_64) == argv


def test_aarch64_run_command() -> None:
    out = arch.adapt(run_argv("kvm"), arch.AARCH64)
    assert out[0] == "qemu-system-aarch64"
    # the machine's other options survive; KVM cannot run a foreign guest: TCG
    assert opt(out, "-machine") == "virt,accel=tcg,memory-backend=mem"
    assert opt(out, "-cpu") == "max"
    assert opt(out, "-append") == "console=ttyAMA0 quiet"
    assert "-bios" not in out  # direct kernel boot: no firmware


def test_aarch64_firmware_for_disk_boots() -> None:
    out = arch.adapt(run_argv(), arch.AARCH64, firmware=True)
    assert opt(out, "-bios") == arch.AARCH64.firmware


def test_for_goarch() -> None:
    assert arch.for_goarch("arm64") is arch.AARCH64
    with pytest.raises(Unsupported, match="linux/s390x"):
        arch.for_goarch("s390x")


def test_kernel_packages() -> None:
    assert arch.AARCH64.kernel_package == "linux-image-cloud-arm64"
    assert arch.X86_64.kernel_package == "linux-image-cloud-amd64"
