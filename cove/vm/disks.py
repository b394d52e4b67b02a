"""VM disk images: thin wrappers over ``qemu-img``.

Everything goes through the ``qemu-img`` binary (JSON output where it has one), so
cove never parses qcow2 itself. Sizes are bytes, rounded up to a whole 512-byte
sector because QEMU refuses (resize) or silently rounds (create) anything else.

Images are never overwritten: ``create`` and ``overlay`` format a private temp file
next to the destination and hard-link it into place, so a crash leaves no
half-formatted image under the real name and a concurrent creator gets Conflict.

Internal snapshots are offline only: ``qemu-img snapshot`` needs the image's write
lock, so while a VM runs on it they fail with Conflict ("in use"). Reads (``info``,
``snapshot_list``) pass ``-U`` and work on a running VM's image.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from typing import Any, TypedDict

from cove.errors import (
    Conflict,
    CorruptContent,
    CoveError,
    HostFailure,
    HostToolFailed,
    InvalidSpec,
    NotFound,
    Unsupported,
)

QEMU_IMG = "qemu-img"
SECTOR = 512
# QEMU keeps sizes in an int64; anything larger is refused before it gets there.
MAX_SIZE = 2**63 - SECTOR
TIMEOUT = 600

_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)([kmgtpe]?)(i?b)?", re.ASCII | re.IGNORECASE)
# 'Failed to get "write" lock' / 'Failed to get shared "write" lock': a VM holds the image.
_LOCK_RE = re.compile(r'failed to get (?:shared )?"[a-z ]+" lock')
# Conservative on purpose: names end up on command lines and in HMP's loadvm.
_SNAPSHOT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)


class Snapshot(TypedDict):
    """One internal snapshot as ``snapshot_list`` reports it."""

    name: str
    id: str
    vm_state_size: int  # bytes of saved VM (RAM/device) state; 0 for a disk-only snapshot
    date: int  # creation time, seconds since the epoch (UTC)
    clock_ns: int  # the guest's clock when it was taken, nanoseconds since the VM started


def parse_size(text: str) -> int:
    """A size in bytes from "10G", "512M", "1g", "1024" or "1.5G".

    Units are binary and case-insensitive like QEMU's (K=1024 ... E=1024**6); a
    trailing "B" or "iB" ("10GB", "10GiB") is accepted and means the same binary
    unit. A fraction needs a unit and is truncated to whole bytes, as QEMU does.
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise InvalidSpec(f"invalid size {text!r}: want a number with an optional K, M, G or T")
    number, unit, suffix = m.groups()
    if suffix is not None and suffix.lower() == "ib" and not unit:
        raise InvalidSpec(f"invalid size {text!r}: 'iB' needs a unit such as KiB")
    if "." in number and not unit:
        raise InvalidSpec(f"invalid size {text!r}: a fractional size needs a unit")
    size = int(Fraction(number) * 1024 ** _UNITS[unit.lower()])
    if size <= 0:
        raise InvalidSpec(f"invalid size {text!r}: must be positive")
    if size > MAX_SIZE:
        raise InvalidSpec(f"invalid size {text!r}: too large")
    return size


def _sectors(size: int, path: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidSpec(f"invalid size {size!r} for {path}: must be a positive byte count")
    if size > MAX_SIZE:
        raise InvalidSpec(f"invalid size {size} for {path}: too large")
    return -(-size // SECTOR) * SECTOR


def _last_line(stderr: str) -> str:
    """qemu-img's last error line: the last ``qemu-img:`` one, else simply the last.

    Trailing hints ("Is another process using the image?", "Could not open backing
    image.") say less than the error line before them.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "failed"
    tagged = [ln for ln in lines if ln.startswith("qemu-img:")]
    return (tagged or lines)[-1].removeprefix("qemu-img:").strip()


def _run(args: list[str], path: str, what: str) -> str:
    """Run qemu-img; a failure becomes the CoveError its last stderr line suggests."""
    try:
        proc = subprocess.run(
            [QEMU_IMG, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise Unsupported(f"{what} {path}: {QEMU_IMG} is not installed") from e
    except subprocess.TimeoutExpired as e:
        msg = f"{what} {path}: {QEMU_IMG} timed out after {TIMEOUT}s"
        raise HostToolFailed(msg, QEMU_IMG) from e
    if proc.returncode == 0:
        return proc.stdout
    last = _last_line(proc.stderr)
    msg = f"{what} {path}: {last}"
    low = last.lower()
    if _LOCK_RE.search(proc.stderr.lower()):
        # Another process (a running VM) holds the image.
        raise Conflict(f"{what} {path}: image is in use ({last})")
    if "no such file or directory" in low:
        raise NotFound(msg)
    if "unknown file format" in low:
        raise InvalidSpec(msg)
    if "corrupt" in low or "not in qcow2 format" in low:
        raise CorruptContent(msg)
    raise HostToolFailed(msg, QEMU_IMG, proc.returncode)


def _must_exist(path: str, what: str) -> None:
    try:
        os.stat(path)
    except FileNotFoundError as e:
        raise NotFound(f"{what} {path}: no such file") from e
    except OSError as e:
        raise HostFailure(f"{what} {path}: {e.strerror}") from e


def _create_new(path: str, what: str, opts: list[str], size: int | None) -> None:
    """Format a temp file beside ``path`` with ``qemu-img create``, then link it in."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path):
        raise Conflict(f"{what} {path}: already exists")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    except FileNotFoundError as e:
        raise NotFound(f"{what} {path}: no such directory {directory}") from e
    except OSError as e:
        raise HostFailure(f"{what} {path}: {e.strerror}") from e
    os.close(fd)
    try:
        try:
            sizearg = [] if size is None else [str(size)]
            _run(["create", "-q", *opts, tmp, *sizearg], path, what)
        except HostToolFailed as e:
            # qemu-img named the temp file; report against the caller's path (the error
            # keeps the tool and its status: type(e)(message) would drop them)
            raise HostToolFailed(str(e).replace(tmp, path), e.tool, e.returncode) from e
        except CoveError as e:
            raise type(e)(str(e).replace(tmp, path)) from e
        try:
            os.link(tmp, path)
        except FileExistsError as e:
            raise Conflict(f"{what} {path}: already exists") from e
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise HostFailure(f"{what} {path}: {e.strerror}") from e
            # No hard links on this filesystem: fall back to check-then-rename.
            if os.path.lexists(path):
                raise Conflict(f"{what} {path}: already exists") from e
            try:
                os.rename(tmp, path)
            except OSError as e2:
                raise HostFailure(f"{what} {path}: {e2.strerror}") from e2
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def create(path: str, size: int, fmt: str = "qcow2") -> None:
    """A new empty image of ``size`` bytes (rounded up to 512) in format ``fmt``.

    Refuses to overwrite (Conflict). The file is created mode 0600: it holds a
    guest's whole disk.
    """
    nbytes = _sectors(size, path)
    _create_new(path, "create disk", ["-f", fmt], nbytes)


def overlay(path: str, base: str, base_fmt: str, size: int | None = None) -> None:
    """A new qcow2 at ``path`` backed by ``base``, so guest writes never reach ``base``.

    The backing file is recorded as ``base``'s absolute path (symlinks are kept, not
    resolved) with its format pinned to ``base_fmt`` (declared by the user or verified by
    ``check_chain``), so QEMU never probes it. The overlay has the base's virtual size, or
    ``size`` (past the base's end it reads zeros: a VM template's disk has one size for
    every image).
    Refuses to overwrite (Conflict); the base must exist (NotFound).
    """
    _must_exist(base, "overlay base")
    if base_fmt not in FORMATS:
        raise InvalidSpec(f"overlay base {base}: unsupported format {base_fmt!r}")
    backing = os.path.abspath(base)
    _create_new(path, "create overlay", ["-f", "qcow2", "-b", backing, "-F", base_fmt], size)


FORMATS = ("qcow2", "raw")  # the formats a user's disk or a backing file may have
MAX_CHAIN = 16


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def check_chain(path: str, fmt: str, *, allowed: Iterable[str], own: str) -> list[str]:
    """Refuse a disk whose backing chain (or qcow2 external data file) reaches a file
    nobody named: the list of files the chain opens, ``path`` first.

    A qcow2 names its backing file (and a data file) in its own header, so an image from
    anywhere could make QEMU, running as root, hand the guest /etc/shadow or a host disk.
    Every file below ``path`` must be under ``own`` (cove's VM directory) or, by real
    path, in ``allowed``; it must be a plain path (no ``json:`` or protocol filenames,
    which can name any file or a network server) with its format recorded (raw or qcow2):
    a probed format lets a raw file with a qcow2 header turn into a qcow2 with a backing
    file of its own. The chain is walked one level at a time with ``-f`` and without
    ``--backing-chain``, so qemu-img itself never opens a file before it was checked.
    """
    names = {os.path.realpath(a) for a in allowed}
    own = os.path.realpath(own)
    chain = [path]
    current, current_fmt = path, fmt
    while True:
        if current_fmt not in FORMATS:
            raise InvalidSpec(f"disk {path}: {current} has unsupported format {current_fmt!r}")
        meta = _run(["info", "-U", "--output=json", "-f", current_fmt, current], path,
                    "inspect disk")  # fmt: skip
        try:
            doc = json.loads(meta)
        except json.JSONDecodeError as e:
            raise HostToolFailed(
                f"inspect disk {current}: unreadable qemu-img output", "qemu-img"
            ) from e
        refs: list[tuple[str, str | None, str]] = []
        data = ((doc.get("format-specific") or {}).get("data") or {}).get("data-file")
        if data:
            refs.append((str(data), "raw", "data file"))
        backing = doc.get("full-backing-filename") or doc.get("backing-filename")
        if backing:
            refs.append((str(backing), doc.get("backing-filename-format"), "backing file"))
        where = f"disk {path}" + (f" (via {current})" if current != path else "")
        for name, ref_fmt, kind in refs:
            if name.startswith("json:") or not name.startswith("/"):
                raise InvalidSpec(f"{where}: {kind} {name[:80]!r} is not a plain path: refused")
            real = os.path.realpath(name)
            if not (_inside(real, own) or real in names):
                raise InvalidSpec(
                    f"{where}: {kind} {name} is outside cove's vm directory: refused "
                    f"(--allow-backing {name} if it is meant)"
                )
            if not ref_fmt:
                raise InvalidSpec(
                    f"{where}: the format of {kind} {name} is not recorded: refused "
                    f"(qemu-img rebase -u -b {name} -F FORMAT)"
                )
        if not backing:
            return chain
        if len(chain) > MAX_CHAIN:
            raise InvalidSpec(f"disk {path}: backing chain longer than {MAX_CHAIN}")
        current, current_fmt = str(backing), str(doc.get("backing-filename-format"))
        chain.append(current)


def info(path: str) -> dict[str, Any]:
    """``qemu-img info --output=json -U``: works while a running VM holds the image.

    The format is probed, as qemu-img does without ``-f`` (and so do ``fmt``,
    ``resize``, ``overlay`` and the snapshot calls): a raw disk whose guest wrote
    another format's header into its first sector would be misread, so callers that
    know a disk is raw should not let this guess override what they recorded.
    """
    _must_exist(path, "disk")
    out = _run(["info", "-U", "--output=json", path], path, "inspect disk")
    try:
        data = json.loads(out)
    except json.JSONDecodeError as e:
        raise HostToolFailed(f"inspect disk {path}: unreadable qemu-img output", "qemu-img") from e
    if not isinstance(data, dict):
        raise HostToolFailed(f"inspect disk {path}: unexpected qemu-img output", "qemu-img")
    return data


def virtual_size(path: str) -> int:
    """The size the guest sees, in bytes."""
    return int(info(path)["virtual-size"])


def fmt(path: str) -> str:
    """The image format qemu-img detects ("qcow2", "raw", ...)."""
    return str(info(path)["format"])


def resize(path: str, size: int, *, shrink: bool = False) -> None:
    """Set the virtual size to ``size`` bytes (rounded up to 512).

    Growing is always allowed. Shrinking discards the data past the new end, so it
    needs ``shrink=True`` (Conflict otherwise), and a qcow2 with internal snapshots
    is never shrunk (Conflict): those snapshots describe the larger disk. The guest's
    partitions and filesystems are not touched either way.
    """
    nbytes = _sectors(size, path)
    meta = info(path)
    current = int(meta["virtual-size"])
    if nbytes == current:
        return
    args = ["resize", "-q", "-f", str(meta["format"])]
    if nbytes < current:
        if not shrink:
            raise Conflict(
                f"resize disk {path}: {nbytes} bytes is smaller than the current {current};"
                " shrinking discards data, ask for a shrink explicitly"
            )
        if meta.get("snapshots"):
            raise Conflict(f"resize disk {path}: cannot shrink an image with internal snapshots")
        args.append("--shrink")
    _run([*args, path, str(nbytes)], path, "resize disk")


def _qcow2(path: str) -> dict[str, Any]:
    meta = info(path)
    if meta.get("format") != "qcow2":
        raise Unsupported(
            f"snapshot {path}: internal snapshots need qcow2, not {meta.get('format')}"
        )
    return meta


def _snapshots(meta: dict[str, Any]) -> list[Snapshot]:
    out: list[Snapshot] = []
    for sn in meta.get("snapshots", []):
        out.append(
            Snapshot(
                name=str(sn["name"]),
                id=str(sn["id"]),
                vm_state_size=int(sn.get("vm-state-size", 0)),
                date=int(sn.get("date-sec", 0)),
                clock_ns=int(sn.get("vm-clock-sec", 0)) * 1_000_000_000
                + int(sn.get("vm-clock-nsec", 0)),
            )
        )
    return out


def _find(path: str, name: str) -> str:
    """The id of the one snapshot called ``name``.

    ``qemu-img snapshot -a`` resolves its argument as an id before a name, so a
    snapshot named "2" could hit another one's id; applying by id is exact. (``-d``
    looks up names only, so it gets the name, which this makes sure is unique.)
    """
    matches = [sn for sn in _snapshots(_qcow2(path)) if sn["name"] == name]
    if not matches:
        raise NotFound(f"snapshot {name!r} of {path}: no such snapshot")
    if len(matches) > 1:
        raise Conflict(f"snapshot {name!r} of {path}: the name is ambiguous, several share it")
    return matches[0]["id"]


def check_snapshot_name(name: str) -> None:
    """HMP and qemu-img read an all-digit name as a snapshot id, and a blank ends the
    name: only plain names are safe on both paths."""
    if not _SNAPSHOT_RE.fullmatch(name) or name.isdigit():
        raise InvalidSpec(
            f"invalid snapshot name {name!r}: want letters, digits, '_', '.' or '-', not all digits"
        )


def snapshot_create(path: str, name: str) -> None:
    """Take an internal snapshot of a qcow2 that no VM is running on.

    Names are 1-128 of ``[A-Za-z0-9_.-]``, starting alphanumeric, and not all digits
    (QEMU would read those as snapshot ids). A name in use is a Conflict.
    """
    check_snapshot_name(name)
    if any(sn["name"] == name for sn in _snapshots(_qcow2(path))):
        raise Conflict(f"snapshot {name!r} of {path}: already exists")
    _run(["snapshot", "-q", "-c", name, path], path, f"create snapshot {name!r} of")


def snapshot_list(path: str) -> list[Snapshot]:
    """The internal snapshots of a qcow2, oldest id first; works on a running VM's image."""
    return _snapshots(_qcow2(path))


def snapshot_apply(path: str, name: str) -> None:
    """Revert the disk to snapshot ``name``; everything written since is lost."""
    sid = _find(path, name)
    _run(["snapshot", "-q", "-a", sid, path], path, f"apply snapshot {name!r} to")


def snapshot_delete(path: str, name: str) -> None:
    """Delete snapshot ``name``; the disk's current contents are untouched."""
    _find(path, name)
    _run(["snapshot", "-q", "-d", name, path], path, f"delete snapshot {name!r} of")
