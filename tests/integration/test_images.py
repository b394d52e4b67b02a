"""End-to-end image store tests through the real CLI, as root, on a fresh root each."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard
from helpers import CoveRunner

RELEASE = "3.20.3"


def blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "images" / "blobs" / "sha256").iterdir()}


def test_alpine_import_lists_and_unpacks(cove: CoveRunner, alpine: str) -> None:
    assert alpine.startswith("sha256:") and len(alpine) == 71
    out = cove("images").stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE", "PLATFORM"]
    assert out[1].split()[:3] == ["alpine", "3.20", alpine[7:19]]
    assert out[1].split()[-1] == "linux/amd64"
    [layer] = cove("image", "unpack", "alpine:3.20").stdout.split()
    assert (Path(layer) / "etc" / "alpine-release").read_text().strip() == RELEASE
    assert Path(layer, "bin", "busybox").stat().st_mode & 0o111
    assert Path(layer, "bin", "sh").is_symlink()
    info = json.loads(cove("image", "inspect", "alpine:3.20").stdout)[0]
    assert info["Id"] == alpine
    assert info["Config"]["Cmd"] == ["/bin/sh"]
    assert info["RepoTags"] == ["alpine:3.20"]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert len(info["RootFS"]["Layers"]) == 1
    assert cove("images", "-q").stdout.strip() == alpine[7:19]
    line = json.loads(cove("images", "--format", "json").stdout)
    assert line["Repository"] == "alpine" and line["Tag"] == "3.20"
    assert cove("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.strip() == "alpine:3.20"
    hist = cove("history", "alpine:3.20").stdout.splitlines()
    assert hist[0].split()[0] == "IMAGE" and hist[1].startswith(alpine[7:19])


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_rmi_load_round_trip(
    cove: CoveRunner, alpine: str, cove_root: Path, tmp_path: Path, fmt: str
) -> None:
    before = json.loads(cove("image", "inspect", "alpine:3.20").stdout)[0]
    archive = tmp_path / "a.tar"
    cove("save", "--format", fmt, "-o", str(archive), "alpine:3.20")
    out = cove("rmi", "alpine:3.20").stdout
    assert f"Deleted: {alpine}" in out
    assert blobs(cove_root) == set() and not list((cove_root / "layers").iterdir())
    assert "Loaded image: alpine:3.20" in cove("load", "-i", str(archive)).stdout
    after = json.loads(cove("image", "inspect", "alpine:3.20").stdout)[0]
    for key in ("Id", "RepoDigests", "RootFS", "Config", "Descriptor"):
        assert after[key] == before[key]
    [layer] = cove("image", "unpack", "alpine:3.20").stdout.split()
    assert (Path(layer) / "etc" / "alpine-release").read_text().strip() == RELEASE


def test_skopeo_and_umoci_read_cove_output(cove: CoveRunner, alpine: str, tmp_path: Path) -> None:
    oci_tar, docker_tar = tmp_path / "o.tar", tmp_path / "d.tar"
    cove("save", "--format", "oci-archive", "-o", str(oci_tar), "alpine:3.20")
    cove("save", "-o", str(docker_tar), "alpine:3.20")
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(oci_tar), "-C", str(layout)], check=True)
    ref = "docker.io/library/alpine:3.20"
    sources = (
        f"oci:{layout}:{ref}",
        f"oci-archive:{oci_tar}:{ref}",
        f"docker-archive:{docker_tar}",
    )
    for src in sources:
        info = json.loads(
            subprocess.run(
                ["skopeo", "inspect", src], check=True, capture_output=True, text=True
            ).stdout
        )
        assert info["Architecture"] == "amd64", src
        assert len(info["Layers"]) == 1, src
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert (bundle / "rootfs" / "etc" / "alpine-release").read_text().strip() == RELEASE
    subprocess.run(["umoci", "stat", "--image", f"{layout}:{ref}"], check=True, capture_output=True)


def test_cove_loads_what_skopeo_writes(cove: CoveRunner, alpine: str, tmp_path: Path) -> None:
    oci_tar = tmp_path / "o.tar"
    cove("save", "--format", "oci-archive", "-o", str(oci_tar), "alpine:3.20")
    src = f"oci-archive:{oci_tar}:docker.io/library/alpine:3.20"
    sk_layout, sk_docker = tmp_path / "sk", tmp_path / "sk.tar"
    subprocess.run(["skopeo", "copy", "-q", src, f"oci:{sk_layout}:skopeo/alp:oci"], check=True)
    subprocess.run(
        ["skopeo", "copy", "-q", src, f"docker-archive:{sk_docker}:skopeo/alp:docker"], check=True
    )
    assert "Loaded image: skopeo/alp:oci" in cove("load", "-i", str(sk_layout)).stdout
    assert "Loaded image: skopeo/alp:docker" in cove("load", "-i", str(sk_docker)).stdout
    ids = {
        json.loads(cove("image", "inspect", n).stdout)[0]["Id"]
        for n in ("alpine:3.20", "skopeo/alp:oci", "skopeo/alp:docker")
    }
    assert ids == {alpine}
    for name in ("skopeo/alp:oci", "skopeo/alp:docker"):
        [layer] = cove("image", "unpack", name).stdout.split()
        assert (Path(layer) / "etc" / "alpine-release").read_text().strip() == RELEASE


@pytest.mark.parametrize("kind", ["tar", "gz", "xz", "zst", "stdin"])
def test_import_compressions(cove: CoveRunner, alpine_tar: Path, tmp_path: Path, kind: str) -> None:
    raw = gzip.decompress(alpine_tar.read_bytes())
    data = {
        "tar": raw,
        "stdin": raw,
        "gz": alpine_tar.read_bytes(),
        "xz": lzma.compress(raw),
        "zst": zstandard.ZstdCompressor().compress(raw),
    }[kind]
    path = tmp_path / f"rootfs.{kind}"
    path.write_bytes(data)
    if kind == "stdin":
        proc = subprocess.run(
            ["python3", "-m", "cove", "--root", str(tmp_path / "root"), "import", "-", "img:stdin"],
            input=data,
            capture_output=True,
        )
        assert proc.returncode == 0, proc.stderr
    else:
        cove("import", str(path), f"img:{kind}")
    info = json.loads(cove("image", "inspect", f"img:{kind}").stdout)[0]
    assert info["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    [layer] = cove("image", "unpack", f"img:{kind}").stdout.split()
    assert (Path(layer) / "etc" / "alpine-release").read_text().strip() == RELEASE


def test_import_changes_and_platform(cove: CoveRunner, alpine_tar: Path) -> None:
    cove(
        "import",
        "-c",
        'ENTRYPOINT ["/bin/echo"]',
        "-c",
        "CMD hello world",
        "-c",
        "ENV A=1 B=2",
        "-c",
        "WORKDIR /srv",
        "-c",
        "EXPOSE 80 53/udp",
        "-c",
        "LABEL k=v",
        "-c",
        "USER nobody",
        "--platform",
        "linux/arm64",
        str(alpine_tar),
        "custom:1",
    )
    info = json.loads(cove("image", "inspect", "custom:1").stdout)[0]
    cfg = info["Config"]
    assert cfg["Entrypoint"] == ["/bin/echo"]
    assert cfg["Cmd"] == ["/bin/sh", "-c", "hello world"]
    assert cfg["Env"] == ["A=1", "B=2"]
    assert cfg["WorkingDir"] == "/srv" and cfg["User"] == "nobody"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Labels"] == {"k": "v"}
    assert info["Architecture"] == "arm64"
    bad = cove("import", "-c", "FROB x", str(alpine_tar), "custom:2", check=False)
    assert bad.returncode != 0 and "FROB" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_tag_rmi_and_prune(cove: CoveRunner, alpine: str, cove_root: Path) -> None:
    cove("tag", "alpine:3.20", "localhost:5000/team/alp:v1")
    cove("tag", alpine[7:19], "other")
    rows = [line.split() for line in cove("images").stdout.splitlines()[1:]]
    tags = {f"{r[0]}:{r[1]}" for r in rows}
    assert tags == {"alpine:3.20", "localhost:5000/team/alp:v1", "other:latest"}
    conflict = cove("rmi", alpine[7:19], check=False)
    assert conflict.returncode == 1 and "must be forced" in conflict.stderr
    assert cove("rmi", "other").stdout.strip() == "Untagged: other:latest"
    assert blobs(cove_root)  # still referenced by the other names
    out = cove("rmi", "-f", alpine[7:19]).stdout
    assert "Untagged: alpine:3.20" in out and f"Deleted: {alpine}" in out
    assert blobs(cove_root) == set()
    missing = cove("import", str(Path(cove_root).parent / "x"), "a:1", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_dangling_image_and_prune(
    cove: CoveRunner, alpine_tar: Path, tmp_path: Path, cove_root: Path
) -> None:
    first = cove("import", "-c", "CMD a", str(alpine_tar), "x:1").stdout.strip()
    cove("import", "-c", "CMD b", str(alpine_tar), "x:1")
    rows = [line.split() for line in cove("images").stdout.splitlines()[1:]]
    assert ["<none>", "<none>", first[7:19]] in [r[:3] for r in rows]
    out = cove("image", "prune", "-f").stdout
    assert "deleted: " in out and "Total reclaimed space" in out
    assert first[7:19] not in cove("images", "-q").stdout
    assert cove("images", "-q").stdout.strip()
    out = cove("image", "prune", "-a", "-f").stdout
    assert "untagged: x:1" in out
    assert cove("images", "-q").stdout.strip() == "" and blobs(cove_root) == set()


def test_errors_are_one_line(cove: CoveRunner, alpine: str) -> None:
    cases = [
        (("rmi", "nope:1"), 1, "no such image"),
        (("image", "inspect", "nope"), 1, "no such image"),
        (("tag", "alpine:3.20", "Bad/UPPER"), 125, "must be lowercase"),
        (("tag", "alpine:3.20", "a:b:c"), 125, "invalid reference format"),
        (("images", "--bogus"), 125, "unrecognized arguments"),
        (("load", "-i", "/nonexistent.tar"), 1, "no such file"),
        (("save", "-o", "/tmp/x.tar", "--format", "zip", "alpine:3.20"), 125, "invalid choice"),
    ]
    for args, code, msg in cases:
        proc = cove(*args, check=False)
        assert proc.returncode == code, (args, proc.stderr)
        assert msg in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("Error: "), (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_root_from_environment(alpine_tar: Path, tmp_path: Path) -> None:
    env_root = tmp_path / "envroot"
    proc = subprocess.run(
        ["python3", "-m", "cove", "import", str(alpine_tar), "e:1"],
        env={**os.environ, "COVE_ROOT": str(env_root)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (env_root / "images" / "index.json").exists()
    shutil.rmtree(env_root)
