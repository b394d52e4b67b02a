"""Debian packages of another architecture for guests: its cloud kernel and a static busybox.

An arm64 guest needs an arm64 kernel and, for ``run --vm``'s initramfs, an arm64 static
busybox. Both come from the host's own Debian mirrors as the x86_64 kernel does, through
apt with a private package list of that architecture (``APT::Architecture``, lists and
cache under the state root, no dpkg status): the host's dpkg configuration is not changed
(no ``dpkg --add-architecture``) and nothing is installed; the .deb is only unpacked.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from cove.errors import HostToolFailed, NotFound
from cove.vm import kernel as kmod
from cove.vm.arch import Arch, host


def arch_dir(root: str, arch: Arch) -> str:
    """Where a foreign architecture's kernels and busybox live (the host's stay where they
    always were, so their selection is unchanged)."""
    return os.path.join(kmod.kernels_dir(root), arch.deb_arch)


def kernels_dir(root: str, arch: Arch) -> str:
    return kmod.kernels_dir(root) if arch == host() else arch_dir(root, arch)


def apt_options(root: str, arch: Arch) -> list[str]:
    """apt-get/apt-cache options for ``arch``'s package lists (fetched on first use)."""
    if arch == host():
        return []
    base = os.path.join(root, "cache", f"apt-{arch.deb_arch}")
    lists = os.path.join(base, "lists")
    opts = [
        "-o", f"APT::Architecture={arch.deb_arch}",
        "-o", f"APT::Architectures::={arch.deb_arch}",
        "-o", f"Dir::State::Lists={lists}",
        "-o", f"Dir::Cache={os.path.join(base, 'cache')}",
        "-o", "Dir::State::status=/dev/null",
        "-o", "Debug::NoLocking=1",  # private lists and cache: the host's apt locks are not ours
    ]  # fmt: skip
    if not glob.glob(os.path.join(lists, "*Packages*")):
        os.makedirs(os.path.join(lists, "partial"), mode=0o755, exist_ok=True)
        os.makedirs(os.path.join(base, "cache", "archives", "partial"), mode=0o755, exist_ok=True)
        proc = subprocess.run(["apt-get", *opts, "update", "-qq"], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        if proc.returncode != 0 or not glob.glob(os.path.join(lists, "*Packages*")):
            last = (proc.stderr.strip().splitlines() or ["no package lists"])[-1]
            raise HostToolFailed(
                f"cannot read Debian's {arch.deb_arch} package lists: {last}", "apt-get"
            )
    return opts


def fetch_kernel(root: str, arch: Arch) -> kmod.Kernel:
    """``cove vm kernel fetch --arch``: Debian's cloud kernel of ``arch``."""
    return kmod.fetch(kernels_dir(root, arch), arch.kernel_package, apt_options(root, arch))


def guest_kernel(root: str, arch: Arch) -> kmod.Kernel:
    """The newest fetched kernel of ``arch``, fetched first if there is none."""
    have = kmod.installed(kernels_dir(root, arch))
    return have[-1] if have else fetch_kernel(root, arch)


def busybox(root: str, arch: Arch) -> str:
    """A static busybox of ``arch`` (Debian's busybox-static), for guest initramfs images."""
    if arch == host():
        return "/bin/busybox"
    dest = os.path.join(arch_dir(root, arch), "busybox")
    if os.path.isfile(dest):
        return dest
    os.makedirs(arch_dir(root, arch), mode=0o755, exist_ok=True)
    opts = apt_options(root, arch)
    work = tempfile.mkdtemp(dir=arch_dir(root, arch), prefix=".fetch-")
    try:
        for cmd in (["apt-get", *opts, "download", "-q", "busybox-static"],):
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                raise HostToolFailed(
                    f"download of busybox-static ({arch.deb_arch}): {last}", "apt-get"
                )
        debs = glob.glob(os.path.join(work, "*.deb"))
        if not debs:
            raise NotFound(f"download of busybox-static ({arch.deb_arch}) produced no package")
        x = os.path.join(work, "x")
        proc = subprocess.run(["dpkg-deb", "-x", debs[0], x], capture_output=True, text=True)
        src = os.path.join(x, "bin", "busybox")
        if proc.returncode != 0 or not os.path.isfile(src):
            raise HostToolFailed(
                f"unpacking {debs[0]}: {proc.stderr.strip() or 'no bin/busybox'}", "dpkg-deb"
            )
        os.chmod(src, 0o755)
        os.replace(src, dest)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
