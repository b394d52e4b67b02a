"""``--user NAME`` is looked up in the image's /etc/passwd and /etc/group on the host side.

Attack: an image whose /etc/passwd, /etc/group or /etc itself is a symlink meant to reach
a host file (absolute, or ``../`` enough to climb out of the layer directory), or a FIFO
that would hang the reader. The host file here is a marker the test writes, naming a user
``leak`` (uid 4242) and a group ``leakgrp`` (gid 4343): resolving either means cove read
the host's file. Inside the container those paths do not exist, so Docker reports that
the user cannot be found.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import CoveRunner, TarBuilder, alpine_variant

PASSWD = "leak:x:4242:4242:leak:/leak:/bin/sh\n"
GROUP = "leakgrp:x:4343:leak\n"
CLIMB = "../" * 24  # more than enough to leave <root>/layers/<hex>/ on the host


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    info.mode = 0o644
    return info


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """What a hostile image wants cove to read: passwd and group files, and a FIFO."""
    d = tmp_path / "hostetc"
    d.mkdir()
    (d / "passwd").write_text(PASSWD)
    (d / "group").write_text(GROUP)
    os.mkfifo(d / "fifo")
    return d


def _variants(host: Path) -> dict[str, tuple[list[str], Callable[[TarBuilder], object]]]:
    """name -> (entries dropped from Alpine, what is added in their place)."""
    rel = CLIMB + str(host).lstrip("/")
    return {
        "etc-abs": (["etc"], lambda t: t.symlink("etc", str(host))),
        "etc-rel": (["etc"], lambda t: t.symlink("etc", rel)),
        "passwd-abs": (["etc/passwd", "etc/group"],
                       lambda t: (t.symlink("etc/passwd", f"{host}/passwd"),
                                  t.symlink("etc/group", f"{host}/group"))),
        "passwd-rel": (["etc/passwd", "etc/group"],
                       lambda t: (t.symlink("etc/passwd", f"{rel}/passwd"),
                                  t.symlink("etc/group", f"../../{rel}/group"))),
        "passwd-host-fifo": (["etc/passwd"], lambda t: t.symlink("etc/passwd", f"{host}/fifo")),
        "passwd-fifo": (["etc/passwd"], lambda t: t.tar.addfile(_fifo("etc/passwd"))),
    }  # fmt: skip


@pytest.mark.parametrize(
    "variant", ["etc-abs", "etc-rel", "passwd-abs", "passwd-rel", "passwd-host-fifo", "passwd-fifo"]
)
def test_user_lookup_stays_in_image(
    cove: CoveRunner, alpine_tar: Path, tmp_path: Path, host_dir: Path, variant: str
) -> None:
    drop, add = _variants(host_dir)[variant]
    alpine_variant(cove, alpine_tar, f"hostile:{variant}", tmp_path, drop=drop, add=add)
    # a hang on the FIFO fails here (timeout) instead of blocking the suite
    p = cove("run", "--rm", "--user", "leak", f"hostile:{variant}", "id", "-u",
             check=False, timeout=60)  # fmt: skip
    assert "4242" not in p.stdout + p.stderr, f"cove read the host's file: {p.stdout!r}"
    assert p.returncode == 125, (p.stdout, p.stderr)
    assert "unable to find user leak: no matching entries in passwd file" in p.stderr
    if variant.endswith("fifo"):
        return
    p = cove("run", "--rm", "--user", "0:leakgrp", f"hostile:{variant}", "id", "-g",
             check=False, timeout=60)  # fmt: skip
    assert "4343" not in p.stdout + p.stderr, f"cove read the host's file: {p.stdout!r}"
    assert p.returncode == 125, (p.stdout, p.stderr)
    assert "unable to find group leakgrp: no matching entries in group file" in p.stderr


def test_user_lookup_in_image_symlink_still_works(
    cove: CoveRunner, alpine: str, alpine_tar: Path, tmp_path: Path
) -> None:
    # positive controls: a plain name, and a passwd that is a symlink inside the image (Docker
    # follows it as the container would: through /etc, and through a relative ``..`` detour)
    assert cove("run", "--rm", "--user", "nobody", "alpine:3.20", "id", "-u").stdout == "65534\n"
    with tarfile.open(alpine_tar) as src:
        member = src.extractfile("./etc/passwd")
        assert member is not None
        passwd = member.read() + b"inimg:x:4244:4245::/:/bin/sh\n"

    def add(t: TarBuilder) -> None:
        t.file("etc/passwd.real", passwd)
        t.dir("etc/sub")
        t.symlink("etc/sub/pw", "../../../etc/passwd.real")
        t.symlink("etc/passwd", "/etc/sub/pw")

    alpine_variant(cove, alpine_tar, "inimg:1", tmp_path, drop=["etc/passwd"], add=add)
    p = cove("run", "--rm", "--user", "inimg", "inimg:1", "sh", "-c", "id -u; id -g")
    assert p.stdout == "4244\n4245\n"


def test_exec_user_lookup_ignores_container_planted_symlink(
    cove: CoveRunner, alpine: str, host_dir: Path
) -> None:
    """A running container replaces its /etc/passwd with a symlink to a host path: ``exec -u``
    reads the container's upper directory on the host side too. (/etc itself cannot be
    replaced: cove's /etc/hosts binds keep it busy.)"""
    cove("run", "-d", "--name", "victim", "alpine:3.20", "sleep", "600")
    cove("exec", "victim", "sh", "-c", f"rm /etc/passwd && ln -s {host_dir}/passwd /etc/passwd")
    p = cove("exec", "--user", "leak", "victim", "id", "-u", check=False, timeout=60)
    assert "4242" not in p.stdout + p.stderr, f"cove read the host's file: {p.stdout!r}"
    assert p.returncode != 0
    assert "unable to find user leak" in p.stderr
    # positive control: a numeric user needs no lookup and still works
    assert cove("exec", "--user", "1234", "victim", "id", "-u").stdout == "1234\n"
