"""Initramfs images for guests: a static busybox, kernel modules with their dependencies,
and an /init, written as a gzip newc cpio in Python (no cpio tool, same bytes for the same
inputs).

Kernel packages ship no modules.dep (depmod runs at install time) and the host may have no
modinfo: dependencies come from each module's own ``.modinfo`` ELF section.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from cove.vm.kernel import Kernel

BUSYBOX = Path("/bin/busybox")
_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
_MTIME = 1_700_000_000  # fixed, so the same inputs give the same initramfs bytes


# --- modules ------------------------------------------------------------------------------


def _modname(name: str) -> str:
    """The kernel's spelling of a module name: dashes and underscores are the same."""
    base = os.path.basename(name)
    for ext in (".xz", ".zst", ".gz"):
        base = base.removesuffix(ext)
    return base.removesuffix(".ko").replace("-", "_")


def _read_ko(path: Path) -> bytes:
    """A module's ELF bytes; compressed ones are unpacked here because busybox insmod
    hands the kernel the file as it is."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard  # a cove dependency; only kernels with zstd modules need it

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of a module (depends=, softdep=, name= ...): the kernel
    package ships no modules.dep (depmod runs at install) and the host has no modinfo."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    sections = []  # (name offset, file offset, size): Elf64_Shdr's name, offset, size
    for i in range(shnum):
        name_off, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + i * shentsize
        )
        sections.append((name_off, off, size))
    strtab = sections[shstrndx][1]
    for name_off, off, size in sections:
        start = strtab + name_off
        if elf[start : elf.index(b"\0", start)] == b".modinfo":
            info: dict[str, list[str]] = {}
            for item in elf[off : off + size].split(b"\0"):
                key, eq, value = item.decode(errors="replace").partition("=")
                if eq:
                    info.setdefault(key, []).append(value)
            return info
    return {}


def _module_index(kernel: Kernel) -> tuple[dict[str, Path], set[str]]:
    """Module name to file, and the names built into the kernel."""
    root = Path(kernel.modules)
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*.ko*")):
        files.setdefault(_modname(path.name), path)
    builtin = set()
    with_builtin = root / "modules.builtin"
    if with_builtin.exists():
        builtin = {_modname(line) for line in with_builtin.read_text().split() if line}
    return files, builtin


def resolve_modules(kernel: Kernel, names: Sequence[str]) -> list[tuple[str, Path]]:
    """``names`` and their dependencies (depends= and softdep pre:), each after what it
    needs and otherwise in the order asked; built-in ones are left out."""
    files, builtin = _module_index(kernel)
    order: list[tuple[str, Path]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...], required: bool) -> None:
        mod = _modname(name)
        if mod in done or mod in builtin:
            return
        if mod in chain:
            raise ValueError(f"module dependency cycle: {' -> '.join((*chain, mod))}")
        path = files.get(mod)
        if path is None:
            if required:
                raise FileNotFoundError(f"module {name} is not in {kernel.modules}")
            return
        info = modinfo(_read_ko(path))
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(dep, (*chain, mod), True)
        for soft in info.get("softdep", []):
            words = soft.split()
            pre = words[1 : words.index("post:")] if "post:" in words else words[1:]
            if words and words[0] == "pre:":
                for dep in pre:
                    visit(dep, (*chain, mod), False)
        done.add(mod)
        order.append((mod, path))

    for name in names:
        visit(name, (), True)
    return order


# --- cpio ---------------------------------------------------------------------------------


class Cpio:
    """A newc ("070701") archive, every entry root-owned with one fixed mtime. Entries are
    keyed by path, so a later one replaces an earlier one; parents come first."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, bytes, int, int]] = {}

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.entries[parent] = (0o040755, b"", 0, 0)

    def add(self, path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries.pop(path, None)  # a replacement goes after its (new) parents
        self.entries[path] = (mode, data, *rdev)

    def dir(self, path: str) -> None:
        if path.strip("/") not in self.entries:
            self.add(path, 0o040755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(path, 0o100000 | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.add(path, 0o120777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(path, 0o020000 | mode, b"", (major, minor))

    def bytes(self) -> bytes:
        out = io.BytesIO()
        items = [*self.entries.items(), ("TRAILER!!!", (0, b"", 0, 0))]
        for ino, (name, (mode, data, rmaj, rmin)) in enumerate(items, start=1):
            raw = name.encode() + b"\0"
            nlink = 2 if mode & 0o170000 == 0o040000 else 1
            fields = (ino, mode, 0, 0, nlink, _MTIME if mode else 0, len(data), 0, 0,
                      rmaj, rmin, len(raw), 0)  # fmt: skip
            head = b"070701" + b"".join(b"%08x" % v for v in fields)
            out.write(head + raw + b"\0" * (-(len(head) + len(raw)) % 4))
            out.write(data + b"\0" * (-len(data) % 4))
        return out.getvalue()


def busybox_base(cpio: Cpio, busybox: Path = BUSYBOX, applets_from: Path | None = None) -> None:
    """/bin/busybox with a symlink per applet, the directories an init needs, and the two
    device nodes the kernel opens before devtmpfs is mounted. ``applets_from``: the busybox
    that lists the applets when ``busybox`` is another architecture's (the same Debian
    build for each architecture, so the same applets)."""
    if not busybox.exists():
        from cove.errors import NotFound

        raise NotFound(f"{busybox} is missing: install busybox-static")
    for d in ("dev", "proc", "sys", "tmp", "run", "root", "mnt", "etc", "lib/modules"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    listed = subprocess.run([str(applets_from or busybox), "--list"], capture_output=True,
                            text=True, check=True)  # fmt: skip
    for applet in sorted(set(listed.stdout.split()) - {"busybox"}):
        cpio.symlink(f"bin/{applet}", "busybox")
    for alias in ("sbin", "usr/bin", "usr/sbin"):
        cpio.symlink(alias, "/bin")


def add_modules(
    cpio: Cpio, kernel: Kernel, names: Sequence[str], params: Mapping[str, str] = _NO_PARAMS
) -> None:
    """``names`` and their dependencies under /lib/modules, with /lib/modules/load-order
    (lines of ``FILE [PARAMS]``) in an order insmod can follow."""
    load_order = []
    for name, path in resolve_modules(kernel, names):
        cpio.file(f"lib/modules/{name}.ko", _read_ko(path))
        load_order.append(f"{name}.ko {params.get(name, '')}".rstrip())
    cpio.file("lib/modules/load-order", "".join(f"{line}\n" for line in load_order).encode())


def write(cpio: Cpio, dest: Path | str, level: int = 6) -> None:
    Path(dest).write_bytes(gzip.compress(cpio.bytes(), compresslevel=level, mtime=0))
