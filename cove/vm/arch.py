"""Per-architecture choices of a VM: which QEMU, machine, CPU, console, firmware and kernel.

Pure data and one pure rewrite of the x86_64 command lines ``cove.vm.qemu`` builds, so the
command builders stay one per boot mode rather than one per architecture. An x86_64 guest is
what cove always booted (q35, ttyS0, SeaBIOS, KVM when the host has it). An aarch64 guest is
QEMU's ``virt`` machine under TCG (translated, never KVM on an x86 host), its PL011 UART
``ttyAMA0`` as the console, UEFI firmware (Debian's qemu-efi-aarch64) for ISO and disk
boots; direct kernel boots (``run --vm``, ``--kernel``) need no firmware: QEMU loads the
arm64 ``Image`` (gzip-compressed, as Debian ships it) itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cove.errors import InvalidSpec, Unsupported


@dataclass(frozen=True)
class Arch:
    name: str  # QEMU's and uname -m's: x86_64, aarch64
    goarch: str  # OCI's: amd64, arm64
    qemu: str  # the system emulator
    machine: str
    console: str  # the kernel's name of the serial console
    deb_arch: str  # Debian's: the kernel package's architecture
    firmware: str | None  # for ISO/disk boots; None: QEMU's built-in BIOS
    package: str  # the Debian package that has ``qemu``

    @property
    def kernel_package(self) -> str:
        return f"linux-image-cloud-{self.deb_arch}"


X86_64 = Arch("x86_64", "amd64", "qemu-system-x86_64", "q35", "ttyS0", "amd64", None,
              "qemu-system-x86")  # fmt: skip
AARCH64 = Arch("aarch64", "arm64", "qemu-system-aarch64", "virt", "ttyAMA0", "arm64",
               "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", "qemu-system-arm")  # fmt: skip
ARCHES = {a.name: a for a in (X86_64, AARCH64)}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x86_64": "x86_64", "aarch64": "aarch64"}


def parse(text: str) -> Arch:
    """``--arch`` (uname -m or GOARCH names) to its Arch."""
    name = _ALIASES.get(text.strip().lower())
    if name is None:
        have = ", ".join(sorted(ARCHES))
        raise InvalidSpec(f"unsupported vm architecture {text!r}: want one of {have}")
    return ARCHES[name]


def for_goarch(goarch: str) -> Arch:
    """The VM architecture of an image's platform (``run --vm --platform``)."""
    for a in ARCHES.values():
        if a.goarch == goarch:
            return a
    raise Unsupported(f"run --vm cannot boot linux/{goarch} images: no such vm architecture")


def host() -> Arch:
    return ARCHES.get(os.uname().machine, X86_64)


def foreign(arch: Arch) -> bool:
    """Whether ``arch`` is not the host's: QEMU translates (TCG), KVM cannot run it."""
    return arch.name != os.uname().machine


def adapt(argv: list[str], arch: Arch, *, firmware: bool = False) -> list[str]:
    """Rewrite an x86_64 command line of ``cove.vm.qemu`` for ``arch``.

    The binary, the machine (its options kept: accel, memory-backend), the console the
    kernel is told of, TCG with the richest CPU model when the guest is foreign; with
    ``firmware`` (ISO and disk boots) the UEFI image as ``-bios``.
    """
    if arch == X86_64:
        return list(argv)
    out = [arch.qemu, *argv[1:]]
    for i, arg in enumerate(out[:-1]):
        nxt = out[i + 1]
        if arg == "-machine":
            _, _, opts = nxt.partition(",")
            if foreign(arch):
                opts = ",".join("accel=tcg" if o.startswith("accel=") else o
                                for o in opts.split(","))  # fmt: skip
            out[i + 1] = f"{arch.machine},{opts}" if opts else arch.machine
        elif arg == "-cpu" and foreign(arch):
            out[i + 1] = "max"
        elif arg == "-append":
            out[i + 1] = nxt.replace("console=ttyS0", f"console={arch.console}")
        elif arg == "-device" and nxt == "VGA":
            out[i + 1] = "virtio-gpu-pci"  # virt has no legacy VGA
    if firmware and arch.firmware:
        if not os.path.exists(arch.firmware):
            raise Unsupported(f"{arch.name} guests need {arch.firmware} (install qemu-efi-aarch64)")
        out += ["-bios", arch.firmware]
    return out


def check_installed(arch: Arch) -> None:
    """A clear error when the system emulator of ``arch`` is missing."""
    import shutil

    if shutil.which(arch.qemu) is None:
        raise Unsupported(f"{arch.name} guests need {arch.qemu} (install Debian's {arch.package})")
