"""cloud-init NoCloud seed ISOs: built with pycdlib, read back with pycdlib and xorriso.

The YAML cove writes by hand is parsed with PyYAML, as cloud-init itself parses it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from cove.errors import CorruptContent, CoveError, InvalidSpec, NotFound
from cove.vm import cloudinit
from cove.vm.cloudinit import build_seed, read_seed

KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxyz alice@example"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC bob@example"
NAMES = ["meta-data", "network-config", "user-data"]


def yaml_load(data: bytes) -> Any:
    """Parse YAML as cloud-init does, with PyYAML (a test dependency)."""
    import yaml

    return yaml.safe_load(data)


def iso_names(path: Path, **where: str) -> list[str]:
    """Root file names in one namespace (rr_path, joliet_path or iso_path), via pycdlib."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        names = []
        for rec in iso.list_children(**where):
            if rec.is_dir():
                continue
            if "rr_path" in where:
                names.append(rec.rock_ridge.name().decode())
            elif "joliet_path" in where:
                names.append(rec.file_identifier().decode("utf-16-be"))
            else:
                names.append(rec.file_identifier().decode())
        return sorted(names)
    finally:
        iso.close()


def pycdlib_read(path: Path, **where: str) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, **where)
        return buf.getvalue()
    finally:
        iso.close()


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    dest = tmp_path / "seed.iso"
    build_seed(
        str(dest),
        instance_id="iid-vm1",
        hostname="vm1",
        user="alice",
        ssh_keys=[KEY1, KEY2 + "\n"],
        network_config=b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
    )
    return dest


def test_label_and_names(seed: Path) -> None:
    got = read_seed(str(seed))
    assert got.label == "cidata"
    assert sorted(got.files) == NAMES
    iso = pycdlib.PyCdlib()
    iso.open(str(seed))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()
    finally:
        iso.close()
    # The exact lowercase names in both namespaces a guest may read.
    assert iso_names(seed, rr_path="/") == NAMES
    assert iso_names(seed, joliet_path="/") == NAMES
    assert iso_names(seed, iso_path="/") == [
        "META_DATA.;1",
        "NETWORK_CONFIG.;1",
        "USER_DATA.;1",
    ]


def test_network_config_is_byte_exact(seed: Path) -> None:
    want = b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
    assert read_seed(str(seed)).files["network-config"] == want
    assert pycdlib_read(seed, joliet_path="/network-config") == want


def test_meta_data(seed: Path) -> None:
    text = read_seed(str(seed)).files["meta-data"]
    assert text == (
        b'instance-id: "iid-vm1"\n'
        b'local-hostname: "vm1"\n'
        b"public-keys:\n"
        b'  - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxyz alice@example"\n'
        b'  - "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC bob@example"\n'
    )
    assert yaml_load(text) == {
        "instance-id": "iid-vm1",
        "local-hostname": "vm1",
        "public-keys": [KEY1, KEY2],
    }


def test_generated_cloud_config(seed: Path) -> None:
    text = read_seed(str(seed)).files["user-data"]
    assert text.startswith(b"#cloud-config\n")
    assert yaml_load(text) == {
        "hostname": "vm1",
        "users": [
            {
                "name": "alice",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/sh",
                "ssh_authorized_keys": [KEY1, KEY2],
            }
        ],
    }


def test_minimal_seed(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    build_seed(str(dest), instance_id="i-1", hostname="h")
    got = read_seed(str(dest))
    assert sorted(got.files) == ["meta-data", "user-data"]  # no network-config unless given
    assert got.files["meta-data"] == b'instance-id: "i-1"\nlocal-hostname: "h"\n'
    assert got.files["user-data"] == b'#cloud-config\nhostname: "h"\n'


def test_user_without_keys(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    build_seed(str(dest), instance_id="i-1", hostname="h", user="bob")
    got = yaml_load(read_seed(str(dest)).files["user-data"])
    assert got["users"] == [
        {
            "name": "bob",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/sh",
            "ssh_authorized_keys": [],
        }
    ]


def test_user_data_passthrough(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    mine = b"#!/bin/sh\r\necho hi \xff\xfe\x00 not yaml: [\n"
    build_seed(
        str(dest), instance_id="i-1", hostname="h", user="ignored", ssh_keys=[KEY1], user_data=mine
    )
    got = read_seed(str(dest))
    assert got.files["user-data"] == mine
    assert pycdlib_read(dest, rr_path="/user-data") == mine
    assert pycdlib_read(dest, joliet_path="/user-data") == mine
    assert b"public-keys" in got.files["meta-data"]  # keys still reach the default user


def test_empty_user_data_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    build_seed(str(dest), instance_id="i-1", hostname="h", user_data=b"", network_config=b"")
    got = read_seed(str(dest))
    assert got.files["user-data"] == b""
    assert got.files["network-config"] == b""


@pytest.mark.parametrize(
    "value",
    [
        'quote " and \\ backslash',
        "colon: and # hash, [flow] {map} & *alias !tag | > ' %",
        "yes",  # a YAML 1.1 boolean unless quoted
        "null",
        "0x1F",
        "- dash",
        "  padded  ",
        "line\nbreak\ttab\rcr",
        "ctl \x00\x07\x1b\x7f\x85\x9f nel",
        "seps \u2028\u2029 bom \ufeff",
        "ünïcödé 名前 😀",
    ],
)
def test_yaml_quoting_round_trips(tmp_path: Path, value: str) -> None:
    dest = tmp_path / "seed.iso"
    key = "ssh-ed25519 AAAA " + value.replace("\n", " ").replace("\r", " ").strip()
    build_seed(str(dest), instance_id=value, hostname=value, user=value, ssh_keys=[key])
    files = read_seed(str(dest)).files
    assert files["meta-data"].isascii() and files["user-data"].isascii()
    meta = yaml_load(files["meta-data"])
    assert meta["instance-id"] == value and meta["local-hostname"] == value
    assert meta["public-keys"] == [key]
    user = yaml_load(files["user-data"])
    assert user["hostname"] == value and user["users"][0]["name"] == value
    assert user["users"][0]["ssh_authorized_keys"] == [key]


def test_yaml_str_escapes() -> None:
    assert cloudinit._yaml_str('a"b\\c') == '"a\\"b\\\\c"'
    assert cloudinit._yaml_str("\n\x00\x85é😀") == '"\\n\\u0000\\u0085\\u00e9\\U0001f600"'


def test_invalid_input(tmp_path: Path) -> None:
    dest = tmp_path / "seed.iso"
    with pytest.raises(InvalidSpec, match="instance id"):
        build_seed(str(dest), instance_id="", hostname="h")
    with pytest.raises(InvalidSpec, match="hostname"):
        build_seed(str(dest), instance_id="i", hostname="")
    with pytest.raises(InvalidSpec, match="user"):
        build_seed(str(dest), instance_id="i", hostname="h", user="")
    with pytest.raises(InvalidSpec, match="ssh key"):
        build_seed(str(dest), instance_id="i", hostname="h", ssh_keys=[KEY1 + "\n" + KEY2])
    with pytest.raises(InvalidSpec, match="ssh key"):
        build_seed(str(dest), instance_id="i", hostname="h", ssh_keys=["  "])
    with pytest.raises(InvalidSpec, match="not a string"):
        build_seed(str(dest), instance_id="i", hostname="h", ssh_keys=KEY1)
    with pytest.raises(InvalidSpec, match="surrogate"):
        build_seed(str(dest), instance_id="i", hostname="h\ud800")
    assert os.listdir(tmp_path) == []


def test_atomic_replace(tmp_path: Path, seed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = seed.read_bytes()
    assert seed.stat().st_mode & 0o777 == 0o600

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", boom)
    with pytest.raises(CoveError, match=f"seed {seed}: No space left"):
        build_seed(str(seed), instance_id="new", hostname="new")
    assert seed.read_bytes() == before  # the old seed is intact
    assert os.listdir(tmp_path) == ["seed.iso"]  # and no temp file is left behind
    monkeypatch.undo()

    build_seed(str(seed), instance_id="new", hostname="new")
    assert b'"new"' in read_seed(str(seed)).files["meta-data"]
    assert os.listdir(tmp_path) == ["seed.iso"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nodir"):
        build_seed(str(tmp_path / "nodir" / "seed.iso"), instance_id="i", hostname="h")
    with pytest.raises(NotFound, match=r"nope\.iso"):
        read_seed(str(tmp_path / "nope.iso"))
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\x00" * 70000)
    with pytest.raises(CorruptContent, match=str(junk)):
        read_seed(str(junk))
    good = tmp_path / "good.iso"
    build_seed(str(good), instance_id="i", hostname="h")
    truncated = tmp_path / "truncated.iso"
    truncated.write_bytes(good.read_bytes()[:40000])
    with pytest.raises(CorruptContent):
        read_seed(str(truncated))


def test_plain_iso9660_names_fall_back(tmp_path: Path) -> None:
    """A seed without Rock Ridge or Joliet reads as Linux would show it: lowercased."""
    path = tmp_path / "plain.iso"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="CIDATA")
    data = b"instance-id: x\n"
    iso.add_fp(io.BytesIO(data), len(data), "/META_DATA.;1")
    iso.write(str(path))
    iso.close()
    got = read_seed(str(path))
    assert got.label == "CIDATA"
    assert got.files == {"meta_data": data}


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")
def test_xorriso_sees_the_names(seed: Path) -> None:
    out = subprocess.run(
        ["xorriso", "-indev", str(seed), "-pvd_info", "-ls", "/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert re.search(r"^Volume Id *: cidata$", out, re.MULTILINE)
    listed = sorted(line.strip().strip("'") for line in out.splitlines() if line.startswith("'"))
    assert listed == NAMES
