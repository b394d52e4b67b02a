"""Images whose /proc, /sys or /dev/* are symlinks cannot steer the runtime's own mounts.

The attack (measured before the fix): an image whose /proc is a symlink into a directory that
a later mount of cove's hides gets the real procfs mounted where no mask is applied, and the
runtime then reads ``cap_last_cap`` from a file the image supplies, keeping every capability
in the bounding set. runc refuses such images; so does cove now.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import CoveRunner, TarBuilder, alpine_variant

# Docker's default capabilities: the bounding set every default container must have
DOCKER_DEFAULT_BOUNDING = "00000000a80425fb"

# Looks for any procfs it can reach and proves it writable by writing core_pattern's own
# value back (harmless even if it succeeds); prints the bounding set the container got.
PAYLOAD = r"""
for d in /proc /dev/shm/p /tmp/p /tmp/realp /a/tmp/realp /run/p /x/p /sys/p /p; do
  if [ -e "$d/sys/kernel/core_pattern" ]; then
    v=$(cat "$d/sys/kernel/core_pattern")
    if (printf '%s\n' "$v" > "$d/sys/kernel/core_pattern") 2>/dev/null; then
      echo "ESCAPED core_pattern writable at $d"
    fi
  fi
  if [ -e "$d/kcore" ] && [ -s "$d/kcore" ]; then echo "ESCAPED unmasked kcore at $d"; fi
done
grep CapBnd /proc/self/status 2>/dev/null || echo "CapBnd: unreadable"
echo payload-done
"""


def _fake_proc(b: TarBuilder, at: str, real_self: str = "") -> None:
    """A directory that looks like procfs to a runtime reading files by path."""
    for d in (at, f"{at}/sys", f"{at}/sys/kernel"):
        b.dir(d)
    b.file(f"{at}/sys/kernel/cap_last_cap", b"1\n")
    if real_self:  # /proc/self/fd/N keeps working for the runtime: it goes on unaware
        b.symlink(f"{at}/self", real_self)
    else:
        b.dir(f"{at}/self")
        b.file(f"{at}/self/status", b"CapBnd:\t000001ffffffffff\n")


# name -> (top-level entries of Alpine to drop, directories to add, symlinks to add)
VARIANTS: dict[str, tuple[set[str], list[str], dict[str, str]]] = {
    # /proc into /dev: cove's /dev tmpfs then hides the procfs mounted there
    "proc-abs-into-dev": ({"proc", "dev"}, ["dev", "dev/shm", "dev/shm/p"], {"proc": "/dev/shm/p"}),
    "proc-rel-into-dev": ({"proc", "dev"}, ["dev", "dev/shm", "dev/shm/p"], {"proc": "dev/shm/p"}),
    # /proc -> /dev/p -> /tmp/realp: the procfs lands on /tmp/realp, and once cove's /dev
    # hides /dev/p nothing leads the masks there (this one wrote the host's core_pattern)
    "proc-via-dev-link": (
        {"proc", "dev"},
        ["dev", "tmp/realp"],
        {"dev/p": "/tmp/realp", "proc": "/dev/p"},
    ),
    # /proc -> /dev/shm/../../tmp/realp with the image's /dev/shm -> /a/b/c: at mount time
    # that is /a/tmp/realp (the procfs goes there), once cove's /dev is in place it is
    # /tmp/realp, a fake procfs whose cap_last_cap says 1 and whose self leads to the real
    # one. Measured before the fix: host core_pattern writable, bounding set 1fffeffffff.
    "proc-dotdot": (
        {"proc", "dev"},
        ["dev", "a", "a/b", "a/b/c", "a/tmp", "a/tmp/realp"],
        {"dev/shm": "/a/b/c", "proc": "/dev/shm/../../tmp/realp"},
    ),
    # /proc to an ordinary directory carrying a fake cap_last_cap and status
    "proc-to-fake": ({"proc"}, ["x"], {"proc": "x/p"}),
    # a target that moves between mounts: /proc -> /run/p, /run -> /dev/shm (hidden later)
    "proc-moving": (
        {"proc", "run", "dev"},
        ["dev", "dev/shm", "dev/shm/p"],
        {"run": "/dev/shm", "proc": "/run/p"},
    ),
    "sys-abs": ({"sys"}, ["tmp/s"], {"sys": "/tmp/s"}),
    "sys-rel-into-dev": ({"sys", "dev"}, ["dev", "dev/shm", "dev/shm/s"], {"sys": "../dev/shm/s"}),
    "dev-shm": ({"dev"}, ["dev", "tmp/shm"], {"dev/shm": "/tmp/shm"}),
    "dev": ({"dev"}, ["tmp/d"], {"dev": "/tmp/d"}),
    "dev-mqueue": ({"dev"}, ["dev", "tmp/mq"], {"dev/mqueue": "../tmp/mq"}),
}

HIDDEN = {"dev-shm", "dev-mqueue"}  # below /dev, which is always cove's own tmpfs


def _build(variant: str) -> Callable[[TarBuilder], None]:
    _, dirs, links = VARIANTS[variant]

    def add(b: TarBuilder) -> None:
        for d in dirs:
            b.dir(d)
        if variant == "proc-to-fake":
            _fake_proc(b, "x/p")
        if variant == "proc-dotdot":
            b.dir("tmp")
            _fake_proc(b, "tmp/realp", real_self="/a/tmp/realp/self")
        for name, target in links.items():
            b.symlink(name, target)

    return add


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_symlinked_kernel_mount_targets_refused(
    cove: CoveRunner, alpine: str, alpine_tar: Path, tmp_path: Path, variant: str
) -> None:
    drop = VARIANTS[variant][0]
    add = _build(variant)
    alpine_variant(cove, alpine_tar, f"hostile:{variant}", tmp_path, drop=drop, add=add)
    argv = ["run", "--rm", "--network", "none", f"hostile:{variant}", "sh", "-c", PAYLOAD]
    proc = cove(*argv, check=False)
    assert "ESCAPED" not in proc.stdout, proc.stdout
    if variant in HIDDEN:
        # the image's own /dev entries lie under cove's fresh /dev tmpfs: they never count
        shm = cove("run", "--rm", "--network", "none", f"hostile:{variant}", "sh", "-c",
                   "test -L /dev/shm || test -L /dev/mqueue && echo link; "
                   "grep -c -E ' /dev/(shm|mqueue) ' /proc/self/mountinfo").stdout  # fmt: skip
        assert shm.split() == ["2"], shm
        return
    assert proc.returncode == 125, (proc.returncode, proc.stdout, proc.stderr)
    assert "symlinks" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one clear line
    assert cove("ps", "-aq").stdout.strip() == ""  # nothing left behind

    # positive control, same root: a normal Alpine container gets Docker's bounding set,
    # a masked kcore and a read-only /proc/sys
    out = cove("run", "--rm", "--network", "none", "alpine:3.20", "sh", "-c", PAYLOAD).stdout
    assert "ESCAPED" not in out and "payload-done" in out, out
    assert f"CapBnd:\t{DOCKER_DEFAULT_BOUNDING}" in out, out


def test_masks_hold_and_cap_last_cap_is_the_hosts(cove: CoveRunner, alpine: str) -> None:
    """Masks and read-only paths land on the container's own procfs and sysfs."""
    script = (
        "wc -c < /proc/kcore 2>/dev/null || echo nokcore; "
        "ls /proc/acpi 2>/dev/null | wc -l; ls /sys/firmware | wc -l; "
        "(echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sysrw || echo sysro; "
        "grep CapBnd /proc/self/status"
    )
    argv = ["run", "--rm", "--network", "none", "alpine:3.20", "sh", "-c", script]
    out = cove(*argv).stdout.split("\n")
    assert out[0] in ("0", "nokcore") and (out[0] == "0") == os.path.exists("/proc/kcore")
    assert out[1:5] == ["0", "0", "sysro", f"CapBnd:\t{DOCKER_DEFAULT_BOUNDING}"], out
    # positive control: --privileged gets the host's procfs view unmasked and writable
    priv = cove("run", "--rm", "--network", "none", "--privileged", "alpine:3.20",
                "sh", "-c", "ls /sys/firmware | wc -l").stdout.strip()  # fmt: skip
    assert priv == str(len(os.listdir("/sys/firmware"))), priv
