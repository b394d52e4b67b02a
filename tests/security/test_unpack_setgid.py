"""A tar entry's owner is the header's, even below a setgid directory.

Attack: a layer (or an ADD archive) holds a 0:0 set-id binary; it lands in a directory
already there that is setgid to another group (a build's ADD auto-extracting into an
existing rootfs). A new inode there takes the directory's group, so an unpacker that skips
the chown when the header's ids are its own leaves a binary setgid to that group where
Docker makes it 0:0."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from helpers import ALPINE_DIR, CoveRunner, TarBuilder

from cove.image.layers import unpack_stream

GROUP = 1234


def setgid_dir(tb: TarBuilder) -> TarBuilder:
    return tb.dir("d", mode=0o2775, uid=0, gid=GROUP)


def entries(tb: TarBuilder, prefix: str = "d/") -> TarBuilder:
    return (
        tb.file(f"{prefix}suid", b"#!/bin/sh\n", mode=0o2755, uid=0, gid=0)
        .file(f"{prefix}plain", b"data\n", mode=0o644, uid=0, gid=0)
        .symlink(f"{prefix}link", "suid")
        .file(f"{prefix}theirs", b"x\n", mode=0o2755, uid=0, gid=GROUP)  # positive control
    )


def unpack(data: bytes, dest: Path, *, workers: int, fresh: bool) -> None:
    unpack_stream(io.BytesIO(data), str(dest), "test", workers=workers, fresh=fresh)


def assert_owners(where: Path) -> None:
    got = {n: os.lstat(where / n) for n in ("suid", "plain", "link", "theirs")}
    assert (got["suid"].st_uid, got["suid"].st_gid) == (0, 0)
    assert stat.S_IMODE(got["suid"].st_mode) == 0o2755
    assert (got["plain"].st_uid, got["plain"].st_gid) == (0, 0)
    assert (got["link"].st_uid, got["link"].st_gid) == (0, 0)
    # the control: the header's group is set when it is not the unpacker's own
    assert (got["theirs"].st_uid, got["theirs"].st_gid) == (0, GROUP)
    assert stat.S_IMODE(got["theirs"].st_mode) == 0o2755


@pytest.mark.parametrize("workers", [0, 3])
def test_entries_below_an_existing_setgid_dir_keep_their_owner(
    tmp_path: Path, workers: int
) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    unpack(setgid_dir(TarBuilder()).bytes(), dest, workers=workers, fresh=True)
    st = os.stat(dest / "d")
    assert st.st_gid == GROUP and st.st_mode & stat.S_ISGID  # the trap is set
    # into the rootfs that is already there, as ADD and COPY write
    unpack(entries(TarBuilder()).bytes(), dest, workers=workers, fresh=False)
    assert_owners(dest / "d")


@pytest.mark.parametrize("workers", [0, 3])
@pytest.mark.parametrize("fresh", [True, False])
def test_entries_below_a_setgid_root_keep_their_owner(
    tmp_path: Path, workers: int, fresh: bool
) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    os.chown(dest, 0, GROUP)
    os.chmod(dest, 0o2775)
    unpack(entries(TarBuilder(), "").bytes(), dest, workers=workers, fresh=fresh)
    assert_owners(dest)


@pytest.mark.parametrize("workers", [0, 3])
@pytest.mark.parametrize("fresh", [True, False])
def test_setgid_dir_and_entries_in_one_tar(tmp_path: Path, workers: int, fresh: bool) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    unpack(entries(setgid_dir(TarBuilder())).bytes(), dest, workers=workers, fresh=fresh)
    st = os.stat(dest / "d")
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (GROUP, 0o2775)
    assert_owners(dest / "d")


def test_build_add_below_a_setgid_dir_keeps_the_headers_owner(
    cove: CoveRunner, alpine_tar: Path, tmp_path: Path
) -> None:
    """End to end: ADD extracts into the image's rootfs where a RUN made /d setgid."""
    cove("build", "--progress", "plain", "-t", "alpine:3.20", "-q", str(ALPINE_DIR))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    entries(TarBuilder()).write(ctx / "payload.tar")  # d/... with no entry for d itself
    (ctx / "Dockerfile").write_text(
        "FROM alpine:3.20\n"
        f"RUN mkdir /d && chown 0:{GROUP} /d && chmod 2775 /d\n"
        "ADD payload.tar /\n"
    )
    cove("build", "--progress", "plain", "-t", "setgid:1", str(ctx))
    out = cove("run", "--rm", "setgid:1", "stat", "-c", "%n %u:%g %a",
               "/d", "/d/suid", "/d/plain", "/d/theirs").stdout  # fmt: skip
    assert out.splitlines() == [
        f"/d 0:{GROUP} 2775",
        "/d/suid 0:0 2755",
        "/d/plain 0:0 644",
        f"/d/theirs 0:{GROUP} 2755",  # the control: the header's own group
    ]
