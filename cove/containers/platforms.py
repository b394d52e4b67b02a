"""An image's platform against the host's: native, emulated (QEMU via binfmt_misc) or refused.

One check for every way a container starts (create, a build's RUN, ``run --vm`` checks its
own guest architecture): the image's os must be linux; an image of another CPU architecture
runs through user-mode QEMU once ``cove.sys.binfmt`` has made sure the kernel has an entry
for it, and without an explicit ``--platform`` the user is warned as Docker warns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from cove.errors import CoveError, InvalidSpec
from cove.spec import image as spec
from cove.sys import binfmt


def same_arch(a: spec.Platform, b: spec.Platform) -> bool:
    return (a.os, a.architecture) == (b.os, b.architecture)


def mismatch_warning(have: spec.Platform, host: spec.Platform) -> str:
    """Docker's text when a run resolves an image of another platform than the host's."""
    return (
        f"WARNING: The requested image's platform ({have}) does not match the detected host "
        f"platform ({host}) and no specific platform was requested"
    )


def check(
    root: str, name: str, have: spec.Platform, requested: str | None, *, warn: bool = True
) -> bool:
    """Refuse a mismatch with ``--platform``; make a foreign arch runnable. True if emulated."""
    host = spec.Platform.host()
    want = spec.Platform.parse(requested) if requested else None
    if want and not same_arch(want, have):
        raise InvalidSpec(f"image {name} is {have}, not the requested {want}")
    if have.os != host.os:
        raise InvalidSpec(f"image {name} is {have}; this host runs {host}")
    if binfmt.native(have.architecture, host.architecture):
        return False
    binfmt.ensure(root, have.architecture, host.architecture)
    if want is None and warn:
        sys.stderr.write(mismatch_warning(have, host) + "\n")
    return True


def ensure_registered(root: str, config_blob: Callable[[], bytes]) -> None:
    """At every start of a container: the emulator its image needs is registered again if
    it went (a reboot empties binfmt_misc; another state root's reset removes its entries).
    ``config_blob`` reads the image config; an unreadable one is left to the start itself."""
    try:
        have = spec.ImageConfig.parse(config_blob()).platform
    except (CoveError, OSError):
        return
    host = spec.Platform.host()
    if have.os == host.os and not binfmt.native(have.architecture, host.architecture):
        binfmt.ensure(root, have.architecture, host.architecture)
