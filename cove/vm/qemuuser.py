"""The unprivileged user QEMU switches to (``-runas``) once it has opened what it needs.

QEMU opens its disks, tap, sockets, logs and kernel as root while it starts, then becomes
``cove-qemu``: a guest that takes over QEMU through a device emulation bug holds a process
without capabilities that can open no root-owned file, on top of the seccomp sandbox. The
user is a system account (no home, no shell) created the first time a VM starts, as
libvirt's ``libvirt-qemu``; every VM shares it, and each QEMU is non-dumpable after the
switch (the kernel clears the flag on a uid change), so one cannot ptrace another.
"""

from __future__ import annotations

import pwd
import subprocess
from typing import NamedTuple

from cove.errors import HostFailure, HostToolFailed

QEMU_USER = "cove-qemu"


class QemuUser(NamedTuple):
    name: str
    uid: int
    gid: int


def ensure() -> QemuUser:
    """The QEMU user, created (``useradd --system``) if it does not exist yet."""
    try:
        pw = pwd.getpwnam(QEMU_USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", "cove QEMU",
             QEMU_USER],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:  # a parallel start may have created it first: its useradd failed, fine
            pw = pwd.getpwnam(QEMU_USER)
        except KeyError as e:
            detail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise HostToolFailed(
                f"cannot create the user {QEMU_USER} for qemu: {detail}", "useradd"
            ) from e
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise HostFailure(f"user {QEMU_USER} has uid or gid 0: refusing to run qemu as root")
    return QemuUser(pw.pw_name, pw.pw_uid, pw.pw_gid)
