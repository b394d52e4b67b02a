"""VM disk images through the real ``qemu-img`` (and ``qemu-io`` to put data in them).

Everything lives in tmp_path; no VM is started. A guest's writes are simulated
with ``qemu-io``, which goes through the same block layer a VM would, and an
interactive ``qemu-io`` doubles as "a running VM holding the image".
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.errors import Conflict, CoveError, InvalidSpec, NotFound, Unsupported
from cove.vm import disks

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
needs_qemu_io = pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-io")


def qemu_io(path: Path, command: str, fmt: str = "qcow2") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, pattern: int, offset: int = 0, length: str = "64k") -> None:
    proc = qemu_io(path, f"write -P {pattern:#x} {offset} {length}")
    assert proc.returncode == 0, proc.stderr + proc.stdout


def holds(path: Path, pattern: int, offset: int = 0, length: str = "64k") -> bool:
    """Whether the guest would read ``pattern`` there (qemu-io exits 1 on a mismatch)."""
    return qemu_io(path, f"read -P {pattern:#x} {offset} {length}").returncode == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    disks.create(str(path), 4 * MiB)
    return path


# parse_size


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1024", 1024),
        ("1", 1),
        ("10G", 10 * 1024**3),
        ("512M", 512 * MiB),
        ("1g", 1024**3),
        ("1.5G", 1536 * MiB),
        ("0.5k", 512),
        ("64K", 65536),
        ("2T", 2 * 1024**4),
        ("1P", 1024**5),
        (" 8M ", 8 * MiB),
        ("10GB", 10 * 1024**3),
        ("10GiB", 10 * 1024**3),
        ("100b", 100),
        (".5M", 512 * 1024),
        ("1.0000001K", 1024),  # fractional bytes truncate, as in QEMU
    ],
)
def test_parse_size(text: str, want: int) -> None:
    assert disks.parse_size(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "G",
        "0",
        "0G",
        "0.0001K",  # truncates to 0 bytes
        "-1G",
        "+1G",
        "1.5",  # a fraction needs a unit
        "10X",
        "10 G",
        "1e9",
        "0x100",
        "1,5G",
        "1..5G",
        "1.G",
        "10iB",
        "inf",
        "nan",
        "١٢",  # non-ASCII digits
        "16E",  # past int64
    ],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidSpec, match="invalid size"):
        disks.parse_size(text)


# create / info


def test_create_qcow2(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    disks.create(str(path), 10 * MiB)
    meta = disks.info(str(path))
    assert meta["format"] == "qcow2"
    assert meta["virtual-size"] == 10 * MiB
    assert "backing-filename" not in meta
    assert disks.fmt(str(path)) == "qcow2"
    assert disks.virtual_size(str(path)) == 10 * MiB
    assert path.stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == []


def test_create_raw_is_sparse_and_rounded(tmp_path: Path) -> None:
    path = tmp_path / "a.raw"
    disks.create(str(path), 1000, fmt="raw")
    assert disks.fmt(str(path)) == "raw"
    assert disks.virtual_size(str(path)) == 1024  # up to whole 512-byte sectors
    assert path.stat().st_size == 1024


def test_create_refuses_to_overwrite(tmp_path: Path, disk: Path) -> None:
    before = sha256(disk)
    with pytest.raises(Conflict, match=f"{disk}: already exists"):
        disks.create(str(disk), MiB)
    with pytest.raises(Conflict):
        disks.create(str(disk), MiB, fmt="raw")
    assert sha256(disk) == before
    assert leftovers(tmp_path) == []


def test_create_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.qcow2"
    link.symlink_to(tmp_path / "elsewhere.qcow2")
    with pytest.raises(Conflict):
        disks.create(str(link), MiB)
    assert not (tmp_path / "elsewhere.qcow2").exists()


def test_create_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nodir" / "a.qcow2"
    with pytest.raises(NotFound, match=str(missing)):
        disks.create(str(missing), MiB)
    for size in (0, -1):
        with pytest.raises(InvalidSpec):
            disks.create(str(tmp_path / "b.qcow2"), size)
    with pytest.raises(InvalidSpec, match=r"b\.img.*Unknown file format"):
        disks.create(str(tmp_path / "b.img"), MiB, fmt="nosuchformat")
    assert not (tmp_path / "b.img").exists()
    assert leftovers(tmp_path) == []


def test_info_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=str(tmp_path / "nope")):
        disks.info(str(tmp_path / "nope"))
    with pytest.raises(CoveError, match=str(tmp_path)):
        disks.info(str(tmp_path))  # a directory


def test_qemu_img_missing(monkeypatch: pytest.MonkeyPatch, disk: Path) -> None:
    monkeypatch.setattr(disks, "QEMU_IMG", "/nonexistent/qemu-img")
    with pytest.raises(Unsupported, match="not installed"):
        disks.info(str(disk))


# overlay


@needs_qemu_io
def test_overlay_never_writes_the_base(tmp_path: Path, disk: Path) -> None:
    write(disk, 0x11)
    base_hash = sha256(disk)
    top = tmp_path / "top.qcow2"
    disks.overlay(str(top), str(disk), "qcow2")

    meta = disks.info(str(top))
    assert meta["format"] == "qcow2"
    assert meta["backing-filename"] == str(disk)
    assert meta["backing-filename-format"] == "qcow2"
    assert meta["virtual-size"] == 4 * MiB

    assert holds(top, 0x11)  # reads fall through to the base
    write(top, 0xAB)
    write(top, 0xCD, offset=MiB)
    assert holds(top, 0xAB) and holds(top, 0xCD, offset=MiB)
    assert sha256(disk) == base_hash
    assert holds(disk, 0x11) and holds(disk, 0x00, offset=MiB)


def test_overlay_records_an_absolute_backing_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base.raw"
    disks.create(str(base), 2 * MiB, fmt="raw")
    monkeypatch.chdir(tmp_path)
    disks.overlay("top.qcow2", "base.raw", "raw")
    meta = disks.info(str(tmp_path / "top.qcow2"))
    assert meta["backing-filename"] == str(base)
    assert meta["backing-filename-format"] == "raw"  # pinned, not probed at boot


def test_overlay_errors(tmp_path: Path, disk: Path) -> None:
    with pytest.raises(NotFound, match=str(tmp_path / "nope")):
        disks.overlay(str(tmp_path / "top.qcow2"), str(tmp_path / "nope"), "raw")
    assert not (tmp_path / "top.qcow2").exists()
    other = tmp_path / "other.qcow2"
    disks.create(str(other), MiB)
    before = sha256(other)
    with pytest.raises(Conflict):
        disks.overlay(str(other), str(disk), "qcow2")
    assert sha256(other) == before
    assert leftovers(tmp_path) == []


# resize


def test_resize_grows(disk: Path) -> None:
    disks.resize(str(disk), 8 * MiB)
    assert disks.virtual_size(str(disk)) == 8 * MiB
    disks.resize(str(disk), 8 * MiB)  # same size: nothing to do
    disks.resize(str(disk), 8 * MiB + 1)  # rounded up to a whole sector
    assert disks.virtual_size(str(disk)) == 8 * MiB + 512


def test_resize_refuses_to_shrink_unless_asked(disk: Path) -> None:
    with pytest.raises(Conflict, match=f"resize disk {disk}: .*smaller"):
        disks.resize(str(disk), 2 * MiB)
    assert disks.virtual_size(str(disk)) == 4 * MiB
    disks.resize(str(disk), 2 * MiB, shrink=True)
    assert disks.virtual_size(str(disk)) == 2 * MiB


def test_resize_raw(tmp_path: Path) -> None:
    path = tmp_path / "a.raw"
    disks.create(str(path), MiB, fmt="raw")
    disks.resize(str(path), 3 * MiB)
    assert path.stat().st_size == 3 * MiB
    with pytest.raises(Conflict):
        disks.resize(str(path), MiB)
    disks.resize(str(path), MiB, shrink=True)
    assert path.stat().st_size == MiB


def test_resize_never_shrinks_with_snapshots(disk: Path) -> None:
    disks.snapshot_create(str(disk), "s1")
    with pytest.raises(Conflict, match="internal snapshots"):
        disks.resize(str(disk), 2 * MiB, shrink=True)
    assert disks.virtual_size(str(disk)) == 4 * MiB
    disks.resize(str(disk), 6 * MiB)  # growing is fine
    assert disks.virtual_size(str(disk)) == 6 * MiB


def test_resize_errors(tmp_path: Path, disk: Path) -> None:
    with pytest.raises(NotFound):
        disks.resize(str(tmp_path / "nope"), MiB)
    with pytest.raises(InvalidSpec):
        disks.resize(str(disk), 0, shrink=True)


# snapshots


@needs_qemu_io
def test_snapshot_round_trip(disk: Path) -> None:
    write(disk, 0x11)
    disks.snapshot_create(str(disk), "clean")
    write(disk, 0x22)
    write(disk, 0x33, offset=MiB)
    disks.snapshot_create(str(disk), "dirty")

    snaps = disks.snapshot_list(str(disk))
    assert [s["name"] for s in snaps] == ["clean", "dirty"]
    assert [s["id"] for s in snaps] == ["1", "2"]
    for s in snaps:
        assert s["vm_state_size"] == 0  # offline: disk only
        assert s["clock_ns"] == 0
        assert isinstance(s["date"], int) and s["date"] > 0

    disks.snapshot_apply(str(disk), "clean")
    assert holds(disk, 0x11) and holds(disk, 0x00, offset=MiB)
    disks.snapshot_apply(str(disk), "dirty")
    assert holds(disk, 0x22) and holds(disk, 0x33, offset=MiB)

    disks.snapshot_delete(str(disk), "clean")
    assert [s["name"] for s in disks.snapshot_list(str(disk))] == ["dirty"]
    assert holds(disk, 0x22)  # deleting a snapshot leaves the live data alone
    disks.snapshot_delete(str(disk), "dirty")
    assert disks.snapshot_list(str(disk)) == []


def test_snapshot_name_errors(disk: Path) -> None:
    disks.snapshot_create(str(disk), "s1")
    with pytest.raises(Conflict, match=r"'s1'.*already exists"):
        disks.snapshot_create(str(disk), "s1")
    for op in (disks.snapshot_apply, disks.snapshot_delete):
        with pytest.raises(NotFound, match=f"'nope' of {disk}"):
            op(str(disk), "nope")
    for bad in ("", "12", "-x", "a b", "a/b", "x" * 129, "é"):
        with pytest.raises(InvalidSpec):
            disks.snapshot_create(str(disk), bad)
    assert [s["name"] for s in disks.snapshot_list(str(disk))] == ["s1"]


@needs_qemu_io
def test_snapshot_named_like_an_id(disk: Path) -> None:
    """A snapshot named "1" made by another tool must not be confused with id 1."""
    write(disk, 0x11)
    disks.snapshot_create(str(disk), "first")  # id 1
    write(disk, 0x22)
    subprocess.run(["qemu-img", "snapshot", "-q", "-c", "1", str(disk)], check=True)  # id 2
    write(disk, 0x33)
    disks.snapshot_apply(str(disk), "1")
    assert holds(disk, 0x22)
    disks.snapshot_delete(str(disk), "1")
    assert [s["name"] for s in disks.snapshot_list(str(disk))] == ["first"]


def test_duplicate_names_are_ambiguous(disk: Path) -> None:
    for _ in range(2):
        subprocess.run(["qemu-img", "snapshot", "-q", "-c", "twin", str(disk)], check=True)
    with pytest.raises(Conflict, match="ambiguous"):
        disks.snapshot_apply(str(disk), "twin")
    with pytest.raises(Conflict, match="ambiguous"):
        disks.snapshot_delete(str(disk), "twin")
    assert len(disks.snapshot_list(str(disk))) == 2


def test_raw_refuses_snapshots(tmp_path: Path) -> None:
    path = tmp_path / "a.raw"
    disks.create(str(path), MiB, fmt="raw")
    with pytest.raises(Unsupported, match="internal snapshots need qcow2"):
        disks.snapshot_create(str(path), "s1")
    with pytest.raises(Unsupported, match="internal snapshots need qcow2"):
        disks.snapshot_list(str(path))
    with pytest.raises(Unsupported):
        disks.snapshot_apply(str(path), "s1")
    with pytest.raises(Unsupported):
        disks.snapshot_delete(str(path), "s1")


def test_snapshot_of_missing_image(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        disks.snapshot_create(str(tmp_path / "nope.qcow2"), "s1")


@pytest.fixture
def in_use(disk: Path) -> Iterator[Path]:
    """``disk`` held open read-write by an interactive qemu-io, as a running VM would."""
    if shutil.which("qemu-io") is None:
        pytest.skip("needs qemu-io")
    proc = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(disk)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.read(len(b"qemu-io> "))  # the prompt: the image is open and locked
    try:
        yield disk
    finally:
        proc.communicate(b"quit\n", timeout=30)


def test_image_in_use(in_use: Path) -> None:
    assert disks.virtual_size(str(in_use)) == 4 * MiB  # -U: reads still work
    assert disks.snapshot_list(str(in_use)) == []
    with pytest.raises(Conflict, match=f"{in_use}: image is in use"):
        disks.snapshot_create(str(in_use), "s1")
    with pytest.raises(Conflict, match="in use"):
        disks.resize(str(in_use), 8 * MiB)


def test_refused_create_names_the_tool_and_the_callers_path(tmp_path: Path) -> None:
    """qemu-img's failure on the temp file comes back as HostToolFailed naming qemu-img, its
    status and the caller's path (rebuilding the error by its type alone lost both arguments
    and raised TypeError instead)."""
    from cove.errors import HostToolFailed

    path = tmp_path / "huge.qcow2"
    with pytest.raises(HostToolFailed) as info:
        disks.create(str(path), 2**63 - 4096, "qcow2")  # beyond qcow2's maximum size
    assert info.value.tool == "qemu-img" and info.value.returncode not in (None, 0)
    assert str(path) in str(info.value) and ".huge.qcow2." not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # the temp file is gone too
    disks.create(str(path), 1 << 20, "qcow2")  # positive control: a sane size is made
    assert path.is_file()
