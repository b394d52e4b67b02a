"""Guest kernels for direct boots: Debian's cloud kernel, fetched as a package and unpacked.

``apt-get download`` fetches the package through the host's configured mirrors (a
package registry, the only network CI has), ``dpkg-deb -x`` unpacks it; nothing is
installed on the host. A kernel directory holds ``vmlinuz``, ``config`` and
``modules/<release>/`` (the package's ``lib/modules/<release>``), so an initramfs can
take the virtio modules that kernel builds as modules.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from cove.errors import HostToolFailed, NotFound, Unsupported

DEFAULT_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class Kernel:
    release: str
    dir: str

    @property
    def vmlinuz(self) -> str:
        return os.path.join(self.dir, "vmlinuz")

    @property
    def modules(self) -> str:
        return os.path.join(self.dir, "modules", self.release)


def kernels_dir(root: str) -> str:
    return os.path.join(root, "kernels")


def installed(directory: str) -> list[Kernel]:
    """The kernels unpacked under ``directory``, newest release last."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [
        Kernel(n, os.path.join(directory, n))
        for n in names
        if os.path.isfile(os.path.join(directory, n, "vmlinuz"))
    ]


def _run(cmd: list[str], cwd: str, what: str) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise Unsupported(f"{what}: {cmd[0]} is not installed") from e
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise HostToolFailed(f"{what}: {last}", cmd[0])
    return proc.stdout


def resolve_package(package: str, apt: Sequence[str] = ()) -> str:
    """A metapackage (linux-image-cloud-amd64) to the versioned image package it pulls in.
    ``apt``: options for apt-cache/apt-get (another architecture's lists, ``cove.vm.debarch``)."""
    out = _run(["apt-cache", *apt, "depends", package], "/", f"kernel package {package}")
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    return package


def fetch(directory: str, package: str = DEFAULT_PACKAGE, apt: Sequence[str] = ()) -> Kernel:
    """Download and unpack ``package`` into ``directory/<release>``; an existing one is kept."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    real = resolve_package(package, apt)
    release = real.removeprefix("linux-image-")
    have = {k.release: k for k in installed(directory)}
    if release in have:
        return have[release]
    work = tempfile.mkdtemp(dir=directory, prefix=".fetch-")
    try:
        # apt's sandbox user cannot write our private directory: a warning, not an error
        _run(["apt-get", *apt, "download", "-q", real], work, f"download of {real}")
        debs = glob.glob(os.path.join(work, "*.deb"))
        if not debs:
            raise NotFound(f"download of {real} produced no package")
        return unpack_deb(debs[0], directory, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack_deb(deb: str, directory: str, work: str | None = None) -> Kernel:
    """Unpack a kernel image .deb into ``directory/<release>``."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=work or directory, prefix=".x-")
    try:
        _run(["dpkg-deb", "-x", deb, scratch], scratch, f"unpacking {deb}")
        images = glob.glob(os.path.join(scratch, "boot", "vmlinuz-*"))
        if not images:
            raise NotFound(f"{deb} holds no boot/vmlinuz-*")
        release = os.path.basename(images[0]).removeprefix("vmlinuz-")
        stage = os.path.join(scratch, "kernel")
        os.makedirs(os.path.join(stage, "modules"))
        shutil.move(images[0], os.path.join(stage, "vmlinuz"))
        config = os.path.join(scratch, "boot", f"config-{release}")
        if os.path.exists(config):
            shutil.move(config, os.path.join(stage, "config"))
        mods = os.path.join(scratch, "lib", "modules", release)
        if os.path.isdir(mods):
            shutil.move(mods, os.path.join(stage, "modules", release))
        final = os.path.join(directory, release)
        try:
            os.rename(stage, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "vmlinuz")):
                raise  # a concurrent fetch that won the rename is fine; anything else is not
        return Kernel(release, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
