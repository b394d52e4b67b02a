"""Images of Docker's maximum depth, 127 layers, on every path that stacks layers: run,
``--userns=auto``, ``cp`` on a stopped container, build steps, ``run --vm``; 128 refused.

The image is an OCI layout written here: layer 1 is Alpine plus /f1, layer N adds /fN,
and layer 64 whites out /f10.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import CoveRunner, TarBuilder, cove_argv, oci_layout

from cove.errors import CoveError
from cove.sys import overlay

WHITEOUT_AT, HIDDEN = 64, 10


def _layers(alpine_tar: Path, count: int) -> list[bytes]:
    base = TarBuilder()
    with tarfile.open(alpine_tar, "r:gz") as src:
        for info in src:
            data = src.extractfile(info) if info.isfile() else None
            base.tar.addfile(info, io.BytesIO(data.read()) if data else None)
    base.file("f1", b"1\n")
    out = [base.bytes()]
    for n in range(2, count + 1):
        tb = TarBuilder().file(f"f{n}", f"{n}\n".encode())
        if n == WHITEOUT_AT:
            tb.file(f".wh.f{HIDDEN}")
        out.append(tb.bytes())
    return out


def load_deep(cove: CoveRunner, alpine_tar: Path, tmp_path: Path, count: int) -> str:
    name = f"example.com/deep{count}:1"
    layout = tmp_path / f"layout{count}"
    layout.mkdir()
    oci_layout(layout, _layers(alpine_tar, count), name, {"Cmd": ["/bin/sh"]})
    cove("load", "-i", str(layout))
    return name


CHECK = f"cat /f1 /f127 /f{HIDDEN + 1}; test ! -e /f{HIDDEN} && echo hidden"
SEEN = f"1\n127\n{HIDDEN + 1}\nhidden\n"


@pytest.fixture
def deep(cove: CoveRunner, alpine_tar: Path, tmp_path: Path) -> str:
    return load_deep(cove, alpine_tar, tmp_path, 127)


def test_127_layers_run_and_cp(cove: CoveRunner, deep: str, tmp_path: Path) -> None:
    assert cove("run", "--rm", deep, "sh", "-c", CHECK).stdout == SEEN
    # cp on a stopped container mounts the same 127 layers (and its upper) in a child
    cove("run", "--name", "deepc", deep, "sh", "-c", "echo made > /made")
    assert json.loads(cove("inspect", "deepc").stdout)[0]["State"]["Status"] == "exited"
    cove("cp", "deepc:/f127", str(tmp_path / "f127"))
    cove("cp", "deepc:/made", str(tmp_path / "made"))
    assert (tmp_path / "f127").read_text() == "127\n"
    assert (tmp_path / "made").read_text() == "made\n"
    (tmp_path / "in").write_text("in\n")
    cove("cp", str(tmp_path / "in"), "deepc:/in")
    cove("cp", "deepc:/in", str(tmp_path / "back"))
    assert (tmp_path / "back").read_text() == "in\n"
    assert cove("cp", f"deepc:/f{HIDDEN}", str(tmp_path / "gone"), check=False).returncode != 0


@pytest.fixture
def userns_cove(alpine_tar: Path, tmp_path: Path) -> Iterator[CoveRunner]:
    """``cove`` on a state root a mapped root can reach (pytest's directories are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="cove-deep-", dir="/var/tmp"))
    root.chmod(0o711)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cove_argv(root, *args), capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert not check or proc.returncode == 0, f"cove {args}: {proc.stderr}"
        return proc

    try:
        yield run
    finally:
        subprocess.run(cove_argv(root, "system", "reset", "-f"), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_127_layers_userns(userns_cove: CoveRunner, alpine_tar: Path, tmp_path: Path) -> None:
    deep = load_deep(userns_cove, alpine_tar, tmp_path, 127)
    # idmapped lower layers, attached one by one, under an overlay with userxattr
    out = userns_cove("run", "--name", "deepu", "--userns=auto", deep, "sh", "-c",
                      f"{CHECK}; stat -c %u /f127; echo made > /made")  # fmt: skip
    assert out.stdout == SEEN + "0\n"
    userns_cove("cp", "deepu:/made", str(tmp_path / "made"))  # stopped: mounted with userxattr
    assert (tmp_path / "made").read_text() == "made\n"


def test_build_steps_on_127_layers(cove: CoveRunner, deep: str, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "x").write_text("x\n")
    # RUN: a container of the runtime over the 127 layers
    (ctx / "Dockerfile").write_text(f"FROM {deep}\nRUN ({CHECK}) && touch /ran\n")
    out = cove("build", "--progress=plain", "-t", "withrun", str(ctx))
    assert SEEN in out.stdout + out.stderr
    # COPY and WORKDIR: the builder's own private mount over the 127 layers
    (ctx / "Dockerfile").write_text(f"FROM {deep}\nCOPY x /x\n")
    cove("build", "-q", "-t", "withcopy", str(ctx))
    for img in ("withrun", "withcopy"):
        doc = json.loads(cove("image", "inspect", img).stdout)[0]
        assert len(doc["RootFS"]["Layers"]) == 128
        # 128 layers: Docker's "max depth exceeded", one line, nothing left behind
        proc = cove("run", "--rm", img, "true", check=False)
        assert proc.returncode == 125  # as docker run when the daemon refuses
        assert "max depth exceeded" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert cove("ps", "-aq").stdout == ""


def test_128_layers_refused(cove: CoveRunner, alpine_tar: Path, tmp_path: Path) -> None:
    deeper = load_deep(cove, alpine_tar, tmp_path, 128)
    proc = cove("run", "--rm", deeper, "true", check=False)
    assert proc.returncode == 125
    err = proc.stderr.strip()
    assert "max depth exceeded" in err and "128 layers" in err and "\n" not in err
    assert cove("ps", "-aq").stdout == ""
    # the positive control: one layer fewer runs
    assert cove("run", "--rm", load_deep(cove, alpine_tar, tmp_path, 127), "cat", "/f127"
                ).stdout == "127\n"  # fmt: skip


@pytest.fixture
def vmrun(cove: CoveRunner, cove_root: Path) -> Iterator[CoveRunner]:
    vmguest.install_kernel(cove_root)
    yield cove
    ids = cove("ps", "-aq", "--no-trunc").stdout.split()
    subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True)
    assert vmguest.leftovers(ids, str(cove_root)) == []


def test_127_layers_run_vm(vmrun: CoveRunner, alpine_tar: Path, tmp_path: Path) -> None:
    deep = load_deep(vmrun, alpine_tar, tmp_path, 127)
    assert vmrun("run", "--vm", "--rm", deep, "sh", "-c", CHECK).stdout == SEEN


# -- the helper itself, both ways of mounting ---------------------------------------------


def _mountinfo_overlays() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - overlay " in line]


@pytest.mark.parametrize("api", ["new", "legacy"])
def test_overlay_helper_127_layers(tmp_path: Path, api: overlay.Api) -> None:
    # long layer paths (as a deep state root gives): more than a page in one option string
    base = tmp_path / ("d" * 150)
    lowers = []
    for n in range(1, 128):
        d = base / f"{n:064x}"
        d.mkdir(parents=True)
        (d / f"f{n}").write_text(f"{n}\n")
        lowers.append(str(d))
    os.mknod(Path(lowers[WHITEOUT_AT - 1]) / f"f{HIDDEN}", stat.S_IFCHR, os.makedev(0, 0))
    upper, work, mnt, ro = (tmp_path / n for n in ("upper", "work", "mnt", "ro"))
    for d in (upper, work, mnt, ro):
        d.mkdir()
    top_first = list(reversed(lowers))
    before = _mountinfo_overlays()

    def check() -> None:
        overlay.mount(overlay.Layers(top_first, str(upper), str(work)), str(mnt), api=api)
        overlay.mount(overlay.Layers(top_first), str(ro), api=api)
        for root in (mnt, ro):
            seen = [(root / f"f{n}").read_text() for n in (1, 127, HIDDEN + 1)]
            if seen != ["1\n", "127\n", f"{HIDDEN + 1}\n"] or (root / f"f{HIDDEN}").exists():
                raise CoveError(f"wrong merged view at {root}: {seen}")
        (mnt / "new").write_text("w")
        try:
            (ro / "new").write_text("w")
        except OSError:
            pass
        else:
            raise CoveError("the read-only overlay took a write")
        overlay.mount(overlay.Layers([*top_first, top_first[0]]), str(ro), api=api)

    with pytest.raises(CoveError, match=r"max depth exceeded: .* 128 layers, at most 127"):
        overlay.in_private_mount_ns(check)
    assert (upper / "new").read_text() == "w"  # the writes went to the upper directory
    assert _mountinfo_overlays() == before  # the mounts died with the child
