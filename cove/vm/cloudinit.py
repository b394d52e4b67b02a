"""cloud-init NoCloud seed ISOs: ``user-data``, ``meta-data`` and ``network-config``.

cloud-init finds the seed by its volume label ``cidata`` and reads the files by
their exact lowercase names. Plain ISO9660 can only hold uppercase 8.3-ish names,
so the ISO carries Rock Ridge (what Linux reads first) and Joliet (what everything
else reads) names alongside; the ISO9660 names are only a fallback.

The YAML is written by hand to avoid a PyYAML dependency. Every value is a
double-quoted scalar with everything outside printable ASCII escaped, which YAML
1.1 and 1.2 parsers read back as exactly the original string.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from cove.errors import CorruptContent, HostFailure, InvalidSpec, NotFound

LABEL = "cidata"
USER_DATA = "user-data"
META_DATA = "meta-data"
NETWORK_CONFIG = "network-config"
SUDO_ALL = "ALL=(ALL) NOPASSWD:ALL"
DEFAULT_SHELL = "/bin/sh"

# The ISO9660 (level 3) names under the Rock Ridge / Joliet ones: d-characters only.
_ISO_NAMES = {
    USER_DATA: "/USER_DATA.;1",
    META_DATA: "/META_DATA.;1",
    NETWORK_CONFIG: "/NETWORK_CONFIG.;1",
}
_FILE_MODE = 0o100444  # a regular file, read-only: the guest has no business editing it


@dataclass(frozen=True)
class Seed:
    """What a seed ISO holds: its volume label and its root files by guest-visible name."""

    label: str
    files: dict[str, bytes] = field(default_factory=dict)


def _yaml_str(value: str) -> str:
    """``value`` as a YAML double-quoted scalar that parses back to exactly ``value``."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif 0xD800 <= code <= 0xDFFF:
            raise InvalidSpec(f"invalid cloud-init value {value!r}: lone surrogate")
        elif code <= 0xFFFF:
            # Escaped rather than raw: YAML forbids C0/C1 controls in a stream and
            # folds U+0085/U+2028/U+2029 as line breaks inside quotes.
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _keys(ssh_keys: Sequence[str]) -> list[str]:
    if isinstance(ssh_keys, str):
        # A lone string is a sequence of characters; it would become one key per char.
        raise InvalidSpec("invalid ssh keys: want a list of keys, not a string")
    keys = []
    for key in ssh_keys:
        key = key.strip()
        if not key or "\n" in key or "\r" in key:
            raise InvalidSpec(f"invalid ssh key {key!r}: want one key per entry")
        keys.append(key)
    return keys


def meta_data(*, instance_id: str, hostname: str, ssh_keys: Sequence[str] = ()) -> bytes:
    """The NoCloud ``meta-data`` document."""
    lines = [
        f"instance-id: {_yaml_str(instance_id)}",
        f"local-hostname: {_yaml_str(hostname)}",
    ]
    keys = _keys(ssh_keys)
    if keys:
        lines.append("public-keys:")
        lines.extend(f"  - {_yaml_str(k)}" for k in keys)
    return ("\n".join(lines) + "\n").encode()


def cloud_config(*, hostname: str, user: str | None = None, ssh_keys: Sequence[str] = ()) -> bytes:
    """The ``#cloud-config`` user-data cove generates when the user brings none.

    With ``user``, the ``users:`` list holds only that account (passwordless sudo,
    ``/bin/sh``, the keys), which replaces the image's default user.
    """
    lines = ["#cloud-config", f"hostname: {_yaml_str(hostname)}"]
    keys = _keys(ssh_keys)
    if user is not None:
        if not user:
            raise InvalidSpec("invalid cloud-init user '': must not be empty")
        lines += [
            "users:",
            f"  - name: {_yaml_str(user)}",
            f"    sudo: {_yaml_str(SUDO_ALL)}",
            f"    shell: {_yaml_str(DEFAULT_SHELL)}",
        ]
        if keys:
            lines.append("    ssh_authorized_keys:")
            lines.extend(f"      - {_yaml_str(k)}" for k in keys)
        else:
            lines.append("    ssh_authorized_keys: []")
    return ("\n".join(lines) + "\n").encode()


def build_seed(
    dest: str,
    *,
    instance_id: str,
    hostname: str,
    user: str | None = None,
    ssh_keys: Sequence[str] = (),
    user_data: bytes | None = None,
    network_config: bytes | None = None,
) -> None:
    """Write a NoCloud seed ISO to ``dest`` atomically (temp file + rename, mode 0600).

    ``user_data`` and ``network_config`` are written byte for byte; without
    ``user_data`` a ``#cloud-config`` is generated from ``hostname``, ``user`` and
    ``ssh_keys`` (``user`` is then ignored when ``user_data`` is given). The keys
    always go into meta-data's ``public-keys``. An existing ``dest`` is replaced.
    """
    if not instance_id:
        raise InvalidSpec(f"seed {dest}: instance id must not be empty")
    if not hostname:
        raise InvalidSpec(f"seed {dest}: hostname must not be empty")
    files = {
        USER_DATA: user_data
        if user_data is not None
        else cloud_config(hostname=hostname, user=user, ssh_keys=ssh_keys),
        META_DATA: meta_data(instance_id=instance_id, hostname=hostname, ssh_keys=ssh_keys),
    }
    if network_config is not None:
        files[NETWORK_CONFIG] = network_config

    directory = os.path.dirname(os.path.abspath(dest))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", dir=directory)
    except FileNotFoundError as e:
        raise NotFound(f"seed {dest}: no such directory {directory}") from e
    except OSError as e:
        raise HostFailure(f"seed {dest}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as out:
            iso = pycdlib.PyCdlib()
            iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
            for name, data in files.items():
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    _ISO_NAMES[name],
                    rr_name=name,
                    joliet_path=f"/{name}",
                    file_mode=_FILE_MODE,
                )
            iso.write_fp(out)
            iso.close()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except PyCdlibException as e:
        raise HostFailure(f"seed {dest}: cannot build the iso: {e}") from e
    except OSError as e:
        raise HostFailure(f"seed {dest}: {e.strerror}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _strip_version(iso_name: str) -> str:
    """``USER_DATA.;1`` -> ``user_data``: how Linux shows a name with no Rock Ridge."""
    name = iso_name.split(";", 1)[0].removesuffix(".")
    return name.lower()


def read_seed(path: str) -> Seed:
    """The label and root files of a seed ISO, named as a Linux guest would see them.

    Names come from Rock Ridge when present, else Joliet, else the bare ISO9660
    names lowercased with their ``;1`` dropped. Only regular files in the root are
    read; that is where NoCloud looks.
    """
    iso = pycdlib.PyCdlib()
    try:
        iso.open(path)
    except FileNotFoundError as e:
        raise NotFound(f"seed {path}: no such file") from e
    except OSError as e:
        raise HostFailure(f"seed {path}: {e.strerror}") from e
    except PyCdlibException as e:
        raise CorruptContent(f"seed {path}: not a readable iso: {e}") from e
    try:
        label = iso.pvd.volume_identifier.decode("ascii", "replace").rstrip(" \x00")
        files: dict[str, bytes] = {}
        if iso.has_rock_ridge():
            for rec in iso.list_children(rr_path="/"):
                if rec.is_dir() or rec.rock_ridge is None:
                    continue
                name = rec.rock_ridge.name().decode("utf-8", "replace")
                files[name] = _extract(iso, rr_path=f"/{name}")
        elif iso.has_joliet():
            for rec in iso.list_children(joliet_path="/"):
                if rec.is_dir():
                    continue
                name = rec.file_identifier().decode("utf-16-be", "replace")
                files[name] = _extract(iso, joliet_path=f"/{name}")
        else:
            for rec in iso.list_children(iso_path="/"):
                if rec.is_dir():
                    continue
                raw = rec.file_identifier().decode("ascii", "replace")
                files[_strip_version(raw)] = _extract(iso, iso_path=f"/{raw}")
    except PyCdlibException as e:
        raise CorruptContent(f"seed {path}: unreadable iso: {e}") from e
    finally:
        iso.close()
    return Seed(label=label, files=files)


def _extract(iso: pycdlib.PyCdlib, **where: str) -> bytes:
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, **where)
    return buf.getvalue()
