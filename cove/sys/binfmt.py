"""User-mode emulation of other CPU architectures: QEMU registered through binfmt_misc.

A foreign ELF file (an arm64 busybox on an x86_64 host) is run by the kernel through the
binfmt_misc entry whose magic matches its ELF header: the kernel execs the entry's
interpreter (Debian's ``qemu-<arch>-static``) with the file's path, and QEMU translates the
program's instructions while passing its system calls to the host kernel. The container's
init stays native; only the foreign programs it execs go through QEMU.

Invariants this module keeps:
- Every entry cove writes has the ``F`` (fix binary) flag: the kernel opens the interpreter
  once, at registration, in cove's mount namespace, and every later match uses that open
  file. A container's root holds no QEMU, and nothing is copied or bind-mounted into it; a
  container cannot swap the interpreter either (it is a file the kernel holds, not a path
  the container's mount namespace resolves).
- ``P`` (preserve argv[0]) and ``O`` (pass an open fd of the binary) as Debian's own files
  in /usr/lib/binfmt.d have them (the ``-binfmt-P`` name tells QEMU that argv[0] is kept);
  never ``C``: with ``C`` the kernel would take a setuid foreign binary's credentials for
  QEMU itself, so a setuid-root file in an image would make the emulator root.
- cove registers only what is missing: an enabled entry of anyone (systemd-binfmt,
  binfmt-support, another cove state root) that already matches the architecture's ELF
  headers is used as it is, never changed or removed. Entries cove makes are named
  ``cove-qemu-<arch>`` and recorded in the state root (``binfmt.json``); ``system reset``
  removes exactly those (and unmounts binfmt_misc if cove mounted it and nothing else is
  registered).
- An existing entry without ``F`` is refused, not changed: its interpreter path would be
  resolved in the container's mount namespace, where it does not exist.

Per-user-namespace binfmt_misc (Linux 6.7): a user namespace may mount its own binfmt_misc
instance, and exec looks the entries up in the nearest user namespace that has one. cove's
containers run in the initial user namespace (no ``--userns`` remap by default), so the
instance they see is the host's: a private instance would only serve a container that has
its own user namespace, and is left for the userns/rootless work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from cove.errors import CorruptState, HostFailure, Unsupported
from cove.sys import syscalls

BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
# Where Debian's qemu-user-static puts the interpreters binfmt_misc runs
# (``<qemu arch>-binfmt-P``, links to /usr/bin/qemu-<arch>-static). The environment variable
# points cove elsewhere: the tests use it to simulate the package being absent.
EMULATOR_DIR = "/usr/libexec/qemu-binfmt"
EMULATOR_DIR_ENV = "COVE_QEMU_BINFMT_DIR"
PACKAGE = "qemu-user-static"
PREFIX = "cove-qemu-"
FLAGS = "OPF"
STATE_FILE = "binfmt.json"


@dataclass(frozen=True)
class Handler:
    """One architecture's QEMU and the ELF header binfmt_misc matches (QEMU's own table)."""

    goarch: str
    qemu: str  # QEMU's name for the architecture: qemu-<qemu>-static
    magic: bytes
    mask: bytes

    @property
    def name(self) -> str:
        return PREFIX + self.qemu

    def interpreter(self, directory: str | None = None) -> str:
        base = directory or os.environ.get(EMULATOR_DIR_ENV) or EMULATOR_DIR
        return os.path.join(base, f"{self.qemu}-binfmt-P")

    def samples(self) -> list[bytes]:
        """The header of an executable and of a PIE (ET_EXEC and ET_DYN) of this arch."""
        out = [self.magic]
        big_endian = self.magic[5] == 2
        at = 17 if big_endian else 16  # e_type's low byte
        out.append(self.magic[:at] + bytes([3]) + self.magic[at + 1 :])
        return out


def _h(goarch: str, qemu: str, magic: str, mask: str) -> Handler:
    return Handler(goarch, qemu, bytes.fromhex(magic), bytes.fromhex(mask))


_ELF_MASK = "ffffffffffffff00fffffffffffffffffeffffff"
HANDLERS: dict[str, Handler] = {
    h.goarch: h
    for h in (
        _h("arm64", "aarch64", "7f454c460201010000000000000000000200b700", _ELF_MASK),
        _h("arm", "arm", "7f454c4601010100000000000000000002002800", _ELF_MASK),
        _h("ppc64le", "ppc64le", "7f454c4602010100000000000000000002001500",
           "fffffffffffffffcfffffffffffffffffeffff00"),
        _h("s390x", "s390x", "7f454c4602020100000000000000000000020016",
           "fffffffffffffffcfffffffffffffffffffeffff"),
        _h("riscv64", "riscv64", "7f454c460201010000000000000000000200f300", _ELF_MASK),
        _h("amd64", "x86_64", "7f454c4602010100000000000000000002003e00",
           "fffffffffffefe00fffffffffffffffffeffffff"),
        _h("386", "i386", "7f454c4601010100000000000000000002000300",
           "fffffffffffefe00fffffffffffffffffeffffff"),
    )
}  # fmt: skip


def native(goarch: str, host: str) -> bool:
    """Whether the host CPU runs ``goarch`` code itself (x86_64 runs i386 too)."""
    return goarch == host or (host == "amd64" and goarch == "386")


@dataclass(frozen=True)
class Entry:
    """One registration as /proc/sys/fs/binfmt_misc/<name> shows it."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int
    magic: bytes
    mask: bytes

    def matches(self, header: bytes) -> bool:
        """The kernel's test: every header byte under the mask equals the magic."""
        if not self.magic:
            return False  # an extension entry (``E``): never an ELF match
        part = header[self.offset : self.offset + len(self.magic)]
        if len(part) < len(self.magic):
            return False
        mask = self.mask or b"\xff" * len(self.magic)
        return all((b & m) == (g & m) for b, m, g in zip(part, mask, self.magic, strict=False))


def parse_entry(name: str, text: str) -> Entry:
    enabled, interp, flags, offset, magic, mask = False, "", "", 0, b"", b""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if line == "enabled":
            enabled = True
        elif key == "interpreter":
            interp = value
        elif key == "flags:":
            flags = value
        elif key == "offset":
            offset = int(value)
        elif key == "magic":
            magic = bytes.fromhex(value)
        elif key == "mask":
            mask = bytes.fromhex(value)
    return Entry(name, enabled, interp, flags, offset, magic, mask)


def mounted(base: str = BINFMT_MISC) -> bool:
    return os.path.exists(os.path.join(base, "register"))


def entries(base: str = BINFMT_MISC) -> list[Entry]:
    """Every registration (empty when binfmt_misc is not mounted)."""
    out = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    for name in names:
        if name in ("register", "status"):
            continue
        try:
            with open(os.path.join(base, name)) as f:
                out.append(parse_entry(name, f.read()))
        except (OSError, ValueError):
            continue  # removed while we read, or a format this parser does not know
    return out


def handler_for(goarch: str, base: str = BINFMT_MISC) -> Entry | None:
    """The enabled entry that would run this architecture's executables and PIEs."""
    h = HANDLERS.get(goarch)
    if h is None:
        return None
    for e in entries(base):
        if e.enabled and all(e.matches(s) for s in h.samples()):
            return e
    return None


def _kernel_has_binfmt_misc() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["binfmt_misc"] for line in f)
    except OSError:
        return False


class _Record:
    """What this state root registered (and whether it mounted binfmt_misc)."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, STATE_FILE)
        self.lock = os.path.join(root, "locks", "binfmt.lock")

    def read(self) -> dict[str, object]:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {"entries": [], "mounted": False}
        except (OSError, ValueError) as e:
            raise CorruptState(f"unreadable {self.path}: {e}") from e
        return doc if isinstance(doc, dict) else {"entries": [], "mounted": False}

    def write(self, doc: dict[str, object]) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.lock), mode=0o700, exist_ok=True)
        with syscalls.flocked(self.lock):
            yield


def _platform(goarch: str) -> str:
    return f"linux/{goarch}"


def ensure(root: str, goarch: str, host: str, base: str = BINFMT_MISC) -> str | None:
    """Make sure the kernel runs ``goarch`` executables; the entry's name (None: native).

    Raises Unsupported, naming the missing package or kernel feature, when it cannot.
    """
    if native(goarch, host):
        return None
    h = HANDLERS.get(goarch)
    if h is None:
        raise Unsupported(f"cannot run {_platform(goarch)} binaries: no emulator is known for it")
    existing = handler_for(goarch, base) if mounted(base) else None
    if existing is not None:
        return _usable(existing, goarch)
    rec = _Record(root)
    with rec.locked():
        doc = rec.read()
        if not mounted(base):
            if not _kernel_has_binfmt_misc():
                raise Unsupported(
                    f"cannot run {_platform(goarch)} binaries: this kernel has no binfmt_misc "
                    "(CONFIG_BINFMT_MISC)"
                )
            try:  # systemd's proc-sys-fs-binfmt_misc mount, made on first need
                flags = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
                syscalls.mount("binfmt_misc", base, "binfmt_misc", flags)
            except OSError as e:
                raise Unsupported(
                    f"cannot run {_platform(goarch)} binaries: cannot mount binfmt_misc on "
                    f"{base}: {e.strerror}"
                ) from e
            doc["mounted"] = True
            rec.write(doc)
        existing = handler_for(goarch, base)  # registered meanwhile by another process
        if existing is not None:
            return _usable(existing, goarch)
        interp = h.interpreter()
        if not os.path.exists(interp):
            raise Unsupported(
                f"cannot run {_platform(goarch)} binaries: the emulator {interp} is missing "
                f"(install Debian's {PACKAGE})"
            )
        line = f":{h.name}:M:0:{_escape(h.magic)}:{_escape(h.mask)}:{interp}:{FLAGS}"
        try:
            with open(os.path.join(base, "register"), "w") as f:
                f.write(line)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise Unsupported(
                    f"cannot run {_platform(goarch)} binaries: binfmt_misc refused {h.name}: "
                    f"{e.strerror}"
                ) from e
            return h.name  # a concurrent cove of another state root made the same entry
        names = [str(n) for n in doc.get("entries", []) if isinstance(n, str)]  # type: ignore[attr-defined]
        doc["entries"] = sorted({*names, h.name})
        rec.write(doc)
        return h.name


def _usable(entry: Entry, goarch: str) -> str:
    if "F" not in entry.flags:
        raise Unsupported(
            f"cannot run {_platform(goarch)} binaries: binfmt_misc entry {entry.name} has no F "
            f"(fix binary) flag, so {entry.interpreter} would be looked up inside the "
            "container; cove does not change registrations it did not make"
        )
    return entry.name


def _escape(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def remove_own(root: str, base: str = BINFMT_MISC) -> list[str]:
    """Unregister what this state root registered (``system reset``); the names removed."""
    rec = _Record(root)
    if not os.path.exists(rec.path):
        return []
    removed = []
    with rec.locked():
        doc = rec.read()
        for name in doc.get("entries", []):  # type: ignore[attr-defined]
            if not (isinstance(name, str) and name.startswith(PREFIX)):
                continue  # only ever a name cove makes
            path = os.path.join(base, name)
            try:  # no O_CREAT: binfmt_misc refuses creating a file (EACCES), not ENOENT
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # already gone (another root's reset, a reboot)
            except OSError as e:
                raise HostFailure(
                    f"cannot unregister binfmt_misc entry {path}: {e.strerror}"
                ) from e
            try:
                os.write(fd, b"-1")
                removed.append(name)
            except FileNotFoundError:
                continue  # removed between the open and the write
            except OSError as e:
                raise HostFailure(
                    f"cannot unregister binfmt_misc entry {path}: {e.strerror}"
                ) from e
            finally:
                os.close(fd)
        if doc.get("mounted") and mounted(base) and not entries(base):
            with contextlib.suppress(OSError):  # busy or already gone: leave it
                syscalls.umount2(base)
        os.unlink(rec.path)
    return removed
