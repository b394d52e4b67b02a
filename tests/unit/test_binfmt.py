"""binfmt_misc entries: parsing what the kernel shows, matching ELF headers as the kernel
does, and the per-architecture table (pure, no root, no registration)."""

from __future__ import annotations

import tarfile

import pytest
from helpers import ALPINE_DIR

from cove.sys import binfmt

# what /proc/sys/fs/binfmt_misc/qemu-aarch64 shows after Debian's systemd-binfmt
DEBIAN_AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


def elf_header(arch: str) -> bytes:
    """The first 20 bytes of the shared Alpine's busybox for ``arch`` (a PIE)."""
    with tarfile.open(ALPINE_DIR / f"alpine-minirootfs-3.20.3-{arch}.tar.gz", "r:gz") as tar:
        f = tar.extractfile("./bin/busybox")
        assert f is not None
        head = f.read(20)
    assert head[:4] == b"\x7fELF"
    return head


def test_parse_debian_entry() -> None:
    e = binfmt.parse_entry("qemu-aarch64", DEBIAN_AARCH64)
    assert e.enabled and e.flags == "POF" and e.offset == 0
    assert e.interpreter.endswith("aarch64-binfmt-P")
    assert e.magic == binfmt.HANDLERS["arm64"].magic


def test_entry_matches_real_binaries() -> None:
    e = binfmt.parse_entry("qemu-aarch64", DEBIAN_AARCH64)
    assert e.matches(elf_header("aarch64"))
    assert not e.matches(elf_header("x86_64"))  # the negative beside it


@pytest.mark.parametrize("goarch", sorted(binfmt.HANDLERS))
def test_each_handler_matches_its_own_samples_only(goarch: str) -> None:
    h = binfmt.HANDLERS[goarch]
    me = binfmt.Entry(h.name, True, "/x", "OPF", 0, h.magic, h.mask)
    assert all(me.matches(s) for s in h.samples())  # ET_EXEC and ET_DYN
    for other in binfmt.HANDLERS.values():
        if other.goarch in (goarch, {"amd64": "386", "386": "amd64"}.get(goarch)):
            continue
        assert not any(me.matches(s) for s in other.samples()), other.goarch


def test_handler_samples_flip_e_type() -> None:
    le, be = binfmt.HANDLERS["arm64"].samples(), binfmt.HANDLERS["s390x"].samples()
    assert (le[0][16], le[1][16]) == (2, 3)
    assert (be[0][17], be[1][17]) == (2, 3)


def test_extension_entry_never_matches_elf() -> None:
    text = "enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n"
    assert not binfmt.parse_entry("jar", text).matches(elf_header("aarch64"))


def test_native() -> None:
    assert binfmt.native("amd64", "amd64") and binfmt.native("386", "amd64")
    assert not binfmt.native("arm64", "amd64") and not binfmt.native("amd64", "arm64")


def test_interpreter_path_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    h = binfmt.HANDLERS["riscv64"]
    assert h.interpreter() == "/usr/libexec/qemu-binfmt/riscv64-binfmt-P"
    monkeypatch.setenv(binfmt.EMULATOR_DIR_ENV, "/nonexistent")
    assert h.interpreter() == "/nonexistent/riscv64-binfmt-P"
