"""Other CPU architectures (issue 19): foreign images run through QEMU user-mode emulation
registered in binfmt_misc, with the shared aarch64 Alpine minirootfs.

binfmt_misc is host-wide: every test snapshots the registrations first and checks that
``system reset`` (the ``cove`` fixture's clean-up, run here explicitly) leaves them as found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    ALPINE_DIR,
    TINY_EXIT,
    CoveRunner,
    TarBuilder,
    _verified,
    cove_argv,
    tiny_elf,
)
from registries import Registry

from cove.sys import binfmt
from cove.vm import arch, debarch
from cove.vm.initramfs import BUSYBOX, Cpio, busybox_base, write

ALPINE_ARM64_TAR = ALPINE_DIR / "alpine-minirootfs-3.20.3-aarch64.tar.gz"
ARM64 = "alpine-arm64:3.20"


def registrations() -> dict[str, str]:
    """Every binfmt_misc entry and what it says (empty when binfmt_misc is not mounted)."""
    base = Path(binfmt.BINFMT_MISC)
    if not (base / "register").exists():
        return {}
    return {
        p.name: p.read_text()
        for p in sorted(base.iterdir())
        if p.name not in ("register", "status")
    }


@pytest.fixture
def arm64(cove: CoveRunner) -> Iterator[str]:
    """The aarch64 Alpine imported as linux/arm64; the registrations as they were before."""
    tar = _verified(ALPINE_ARM64_TAR, ALPINE_DIR / "SHA512SUMS")
    cove("import", "--platform", "linux/arm64", "--change", 'CMD ["/bin/sh"]', str(tar), ARM64)
    yield ARM64


def test_run_arm64_uname_and_apk_arch(cove: CoveRunner, arm64: str, alpine: str) -> None:
    before = registrations()
    had_handler = binfmt.handler_for("arm64") is not None if before else False
    proc = cove("run", "--rm", "--platform", "linux/arm64", arm64, "uname", "-m")
    assert proc.stdout == "aarch64\n"
    assert "WARNING" not in proc.stderr  # asked for by --platform: no warning
    assert cove("run", "--rm", "--platform", "linux/arm64", arm64, "cat", "/etc/apk/arch").stdout \
        == "aarch64\n"  # fmt: skip
    # the positive control beside it: the host's own image runs natively
    assert cove("run", "--rm", "alpine:3.20", "uname", "-m").stdout == "x86_64\n"
    # cove registered exactly what was missing, with the F flag
    made = set(registrations()) - set(before)
    assert made == (set() if had_handler else {"cove-qemu-aarch64"})
    entry = binfmt.handler_for("arm64")
    assert entry is not None and "F" in entry.flags
    cove("system", "reset", "-f")
    assert registrations() == before


def test_foreign_image_without_platform_warns_and_runs(cove: CoveRunner, arm64: str) -> None:
    proc = cove("run", "--rm", arm64, "uname", "-m")
    assert proc.stdout == "aarch64\n"
    assert proc.stderr.strip() == (
        "WARNING: The requested image's platform (linux/arm64) does not match the detected "
        "host platform (linux/amd64) and no specific platform was requested"
    )
    # a --platform the image is not is refused, as before
    bad = cove("run", "--rm", "--platform", "linux/s390x", arm64, "true", check=False)
    assert bad.returncode == 125 and "is linux/arm64, not the requested linux/s390x" in bad.stderr


def test_exit_codes_and_signals_pass_through(cove: CoveRunner, arm64: str) -> None:
    run = ("run", "--rm", "--platform", "linux/arm64", arm64)
    assert cove(*run, "sh", "-c", "exit 7", check=False).returncode == 7
    assert cove(*run, "true").returncode == 0
    # a process killed by a signal: 128 + N (an emulated pid 1 would hang here instead)
    assert cove(*run, "sh", "-c", "kill -KILL $$", check=False, timeout=60).returncode == 137
    assert cove(*run, "sh", "-c", "kill -TERM $$", check=False, timeout=60).returncode == 143
    # a signal sent to the container reaches the emulated program's handler
    cid = cove(
        "run", "-d", "--platform", "linux/arm64", arm64, "sh", "-c",
        "trap 'echo caught; exit 3' USR1; echo ready; while :; do sleep 0.1; done",
    ).stdout.strip()  # fmt: skip
    for _ in range(600):
        if "ready" in cove("logs", cid).stdout:
            break
    else:
        raise AssertionError("the emulated shell never became ready")
    cove("kill", "-s", "USR1", cid)
    assert cove("wait", cid, timeout=60).stdout.strip() == "3"
    assert cove("logs", cid).stdout.splitlines() == ["ready", "caught"]


def test_images_and_inspect_show_the_platform(cove: CoveRunner, arm64: str, alpine: str) -> None:
    out = cove("images", "--format", "{{.Repository}} {{.Platform}}").stdout.splitlines()
    assert sorted(out) == ["alpine linux/amd64", "alpine-arm64 linux/arm64"]
    fmt = "{{.Os}}/{{.Architecture}}"
    assert cove("image", "inspect", "-f", fmt, arm64).stdout == "linux/arm64\n"
    assert cove("image", "inspect", "-f", fmt, "alpine:3.20").stdout == "linux/amd64\n"


def test_registration_of_others_is_used_and_left_alone(cove: CoveRunner, arm64: str) -> None:
    """An entry someone else made (as Debian's systemd-binfmt does) is used, never changed."""
    before = registrations()
    if binfmt.handler_for("arm64") is not None:
        pytest.fail(f"an aarch64 handler is registered already: {sorted(before)}")
    name = "test-crossarch-aarch64"
    h = binfmt.HANDLERS["arm64"]
    line = (
        f":{name}:M:0:{binfmt._escape(h.magic)}:{binfmt._escape(h.mask)}:"
        f"{h.interpreter(binfmt.EMULATOR_DIR)}:OPF"
    )
    mounted = bool(before)
    if not mounted:
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", binfmt.BINFMT_MISC], check=True
        )
    Path(binfmt.BINFMT_MISC, "register").write_text(line)
    try:
        ours = registrations()[name]
        assert cove("run", "--rm", "--platform", "linux/arm64", arm64, "uname", "-m").stdout \
            == "aarch64\n"  # fmt: skip
        assert set(registrations()) == set(before) | {name}  # nothing of cove's added
        cove("system", "reset", "-f")
        assert registrations()[name] == ours  # unchanged
    finally:
        Path(binfmt.BINFMT_MISC, name).write_text("-1")
        if not mounted:
            subprocess.run(["umount", binfmt.BINFMT_MISC], check=True)
    assert registrations() == before


def test_missing_emulator_is_a_clear_error(cove: CoveRunner, cove_root: Path) -> None:
    """The package's emulator absent (a missing path): one line naming the package."""
    if binfmt.handler_for("s390x") is not None:
        pytest.fail("an s390x handler is registered already: cannot simulate its absence")
    before = registrations()
    tar = _verified(ALPINE_ARM64_TAR, ALPINE_DIR / "SHA512SUMS")
    # an image that says s390x (its files are aarch64: only the registration matters here)
    cove("import", "--platform", "linux/s390x", str(tar), "s390x:lie")
    env = {**os.environ, binfmt.EMULATOR_DIR_ENV: "/nonexistent/qemu-binfmt"}
    proc = subprocess.run(cove_argv(cove_root, "run", "--rm", "s390x:lie", "true"),
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 125
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: cannot run linux/s390x binaries: the emulator "
        "/nonexistent/qemu-binfmt/s390x-binfmt-P is missing (install Debian's qemu-user-static)"
    )
    assert "cove-qemu-s390x" not in registrations()
    # the positive control: with the package's path the entry is made (the aarch64 files
    # then fail to exec as s390x, which is the kernel's answer, not cove's refusal)
    ok = cove("run", "--rm", "s390x:lie", "true", check=False)
    assert "cannot run linux/s390x" not in ok.stderr
    assert "cove-qemu-s390x" in registrations()
    cove("system", "reset", "-f")
    assert registrations() == before


@pytest.mark.parametrize(
    ("platform", "goarch"),
    [("linux/arm64", "arm64"), ("linux/arm/v7", "arm"), ("linux/ppc64le", "ppc64le"),
     ("linux/s390x", "s390x"), ("linux/riscv64", "riscv64")],
)  # fmt: skip
def test_each_architecture_runs(
    cove: CoveRunner, tmp_path: Path, platform: str, goarch: str
) -> None:
    """A static program of each architecture Debian's qemu-user-static emulates exits with
    its own code through the emulator (the image holds nothing else)."""
    before = registrations()
    tar = TarBuilder().file("exit", tiny_elf(goarch), mode=0o755).write(tmp_path / "x.tar")
    cove("import", "--platform", platform, "--change", 'CMD ["/exit"]', str(tar), "tiny:1")
    assert cove("image", "inspect", "-f", "{{.Architecture}}", "tiny:1").stdout == f"{goarch}\n"
    proc = cove("run", "--rm", "--platform", platform, "tiny:1", check=False, timeout=60)
    assert (proc.returncode, proc.stderr) == (TINY_EXIT, "")
    cove("system", "reset", "-f")
    assert registrations() == before


def test_build_for_arm64_runs_emulated_steps(
    cove: CoveRunner, arm64: str, alpine: str, tmp_path: Path
) -> None:
    """RUN steps of a linux/arm64 build run through QEMU; a stage FROM $BUILDPLATFORM runs
    natively, and BuildKit's platform args say which is which."""
    (tmp_path / "Dockerfile").write_text(
        "FROM --platform=$BUILDPLATFORM alpine:3.20 AS tool\n"
        "ARG BUILDPLATFORM TARGETPLATFORM TARGETARCH\n"
        'RUN echo "$BUILDPLATFORM $TARGETPLATFORM $TARGETARCH $(uname -m)" > /info\n'
        f"FROM {arm64}\n"
        "COPY --from=tool /info /info\n"
        "RUN uname -m > /arch\n"
    )
    cove("build", "-q", "--platform", "linux/arm64", "-t", "built:arm64", str(tmp_path))
    assert cove("image", "inspect", "-f", "{{.Architecture}}", "built:arm64").stdout == "arm64\n"
    out = cove("run", "--rm", "--platform", "linux/arm64", "built:arm64", "cat", "/arch", "/info")
    assert out.stdout == "aarch64\nlinux/amd64 linux/arm64 arm64 x86_64\n"


def test_two_platform_build_is_one_index(
    cove: CoveRunner, arm64: str, alpine: str, tmp_path: Path, plain_registry: Registry
) -> None:
    """--platform linux/amd64,linux/arm64: one index under the tag; run picks the host's
    manifest by default and the asked one with --platform; push sends the index."""
    # one base name for both platforms, as a registry's multi-platform alpine would be
    base = _ctx(tmp_path / "base", "ARG TARGETARCH\nFROM alpine:3.20 AS amd64\n"
                "FROM alpine-arm64:3.20 AS arm64\nFROM ${TARGETARCH}\n")  # fmt: skip
    cove("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", "base:1", str(base))
    ctx = _ctx(tmp_path / "app", "FROM base:1\nARG TARGETPLATFORM\n"
                                 'RUN echo "$TARGETPLATFORM $(uname -m)" > /built\n')  # fmt: skip
    cove("build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", "multi:1", str(ctx))
    assert cove("run", "--rm", "multi:1", "cat", "/built").stdout == "linux/amd64 x86_64\n"
    arm = cove("run", "--rm", "--platform", "linux/arm64", "multi:1", "cat", "/built")
    assert arm.stdout == "linux/arm64 aarch64\n"
    assert cove("images", "--format", "{{.Repository}} {{.Platform}}", "multi").stdout == (
        "multi linux/amd64\n"
    )
    ref = f"{plain_registry.host}/lib/multi:1"
    cove("tag", "multi:1", ref)  # the new name stands for the index too
    digest = cove("push", "-q", "--tls-verify=false", ref).stdout.strip()
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    index = json.loads(raw)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert sorted(f"{m['platform']['os']}/{m['platform']['architecture']}"
                  for m in index["manifests"]) == ["linux/amd64", "linux/arm64"]  # fmt: skip
    assert digest.startswith("sha256:")
    for plat, want in (("arm64", "arm64"), ("amd64", "amd64")):
        one = subprocess.run(
            ["skopeo", "--override-arch", plat, "inspect", "--tls-verify=false",
             f"docker://{ref}"], check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert json.loads(one)["Architecture"] == want
    # pulled back into a fresh name: the platform asked for comes down
    cove("rmi", "multi:1", ref)
    cove("pull", "-q", "--tls-verify=false", "--platform", "linux/arm64", ref)
    assert cove("run", "--rm", "--platform", "linux/arm64", ref, "cat", "/built").stdout == (
        "linux/arm64 aarch64\n"
    )


def _ctx(path: Path, dockerfile: str) -> Path:
    path.mkdir()
    (path / "Dockerfile").write_text(dockerfile)
    return path


@pytest.fixture(scope="module")
def arm64_kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's arm64 cloud kernel, fetched once by ``vm kernel fetch --arch arm64``."""
    root = tmp_path_factory.mktemp("kernels-root")
    proc = subprocess.run(cove_argv(root, "vm", "kernel", "fetch", "--arch", "arm64"),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    vmlinuz = Path(proc.stdout.strip())
    assert vmlinuz.parent.name.endswith("-cloud-arm64") and vmlinuz.is_file()
    assert vmlinuz.read_bytes()[0x38:0x3C] == b"ARM\x64"  # an arm64 Image's magic
    debarch.busybox(str(root), arch.AARCH64)  # the static busybox guests' initramfs takes
    return root / "kernels" / "arm64"


def test_run_vm_arm64(cove: CoveRunner, cove_root: Path, arm64: str, arm64_kernels: Path) -> None:
    """An arm64 image booted as an emulated arm64 VM (qemu-system-aarch64, virt, TCG)."""
    shutil.copytree(arm64_kernels, cove_root / "kernels" / "arm64")
    run = ("run", "--rm", "--vm", "--platform", "linux/arm64", arm64)
    assert cove(*run, "uname", "-m", timeout=300).stdout == "aarch64\n"
    assert cove(*run, "uname", "-r", timeout=300).stdout.strip().endswith("-cloud-arm64")
    # exit codes and the user switch as in the container path
    proc = cove(*run[:-1], "-u", "1000:1000", arm64, "sh", "-c", "id -u; exit 5", check=False,
                timeout=300)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (5, "1000\n")
    # the positive control beside the refusal: a --platform the image is not
    bad = cove(*run[:-2], "linux/s390x", arm64, "true", check=False)
    assert bad.returncode == 125 and "not the requested linux/s390x" in bad.stderr


def test_vm_create_aarch64_boots_to_a_marker(
    cove: CoveRunner, tmp_path: Path, arm64_kernels: Path
) -> None:
    """cove vm create --arch aarch64: Debian's arm64 kernel and an arm64 busybox initramfs
    whose /init prints a marker, on qemu-system-aarch64's virt machine under TCG."""
    marker = "COVE-ARM64-GUEST-UP"
    [kdir] = [d for d in arm64_kernels.iterdir() if (d / "vmlinuz").is_file()]
    cpio = Cpio()
    busybox_base(cpio, arm64_kernels / "busybox", BUSYBOX)
    cpio.file("init", f"#!/bin/busybox sh\necho {marker} $(uname -m)\nexec sleep 3600\n".encode(),
              0o755)  # fmt: skip
    initrd = tmp_path / "initrd.img"
    write(cpio, str(initrd))
    kernel = str(kdir / "vmlinuz")
    cove("vm", "create", "a1", "--arch", "arm64", "--memory", "512M", "--cpus", "1",
         "--kernel", kernel, "--initrd", str(initrd), "--append", "quiet")  # fmt: skip
    info = json.loads(cove("vm", "inspect", "a1").stdout)[0]
    assert (info["Architecture"], info["Machine"]) == ("aarch64", "virt")
    cove("vm", "start", "a1")
    deadline = time.monotonic() + 240
    log = ""
    while time.monotonic() < deadline and f"{marker} aarch64" not in log:
        time.sleep(0.5)
        log = cove("vm", "logs", "a1").stdout
    assert f"{marker} aarch64" in log, log[-3000:]
    cove("vm", "rm", "-f", "a1")
    # the negative beside it: KVM cannot run another architecture's guest
    cove("vm", "create", "a2", "--arch", "aarch64", "--accel", "kvm", "--kernel",
         str(kdir / "vmlinuz"))  # fmt: skip
    bad = cove("vm", "start", "a2", check=False)
    assert bad.returncode != 0 and "--accel kvm cannot run an aarch64 guest" in bad.stderr


def test_compare_arm64_container_and_vm(
    cove: CoveRunner, cove_root: Path, arm64: str, arm64_kernels: Path
) -> None:
    """compare --platform linux/arm64: the emulated container shares the host's kernel, the
    emulated VM boots the arm64 one under TCG."""
    shutil.copytree(arm64_kernels, cove_root / "kernels" / "arm64")
    out = cove("compare", "--platform", "linux/arm64", arm64, "-n", "1", "--", "uname", "-m",
               timeout=600).stdout  # fmt: skip
    rows = {line[:34].strip(): line[34:].split() for line in out.splitlines()}
    assert rows["uname -r inside"] == [os.uname().release, arm64_kernel_release(arm64_kernels)]
    assert rows["accelerator"] == ["-", "tcg"]
    assert rows["exit codes"] == ["0", "0"]


def arm64_kernel_release(kernels: Path) -> str:
    [kdir] = [d for d in kernels.iterdir() if (d / "vmlinuz").is_file()]
    return kdir.name


def test_start_registers_a_lost_emulator_again(cove: CoveRunner, arm64: str) -> None:
    """A reboot empties binfmt_misc: starting an existing arm64 container registers the
    emulator again (simulated by removing this root's own entry)."""
    before = registrations()
    if binfmt.handler_for("arm64") is not None:
        pytest.fail(f"an aarch64 handler is registered already: {sorted(before)}")
    cid = cove("create", "--platform", "linux/arm64", arm64, "uname", "-m").stdout.strip()
    assert "cove-qemu-aarch64" in registrations()  # create made it
    assert cove("start", "-a", cid).stdout == "aarch64\n"
    Path(binfmt.BINFMT_MISC, "cove-qemu-aarch64").write_text("-1")  # as after a reboot
    assert binfmt.handler_for("arm64") is None
    assert cove("start", "-a", cid, timeout=60).stdout == "aarch64\n"
    assert "cove-qemu-aarch64" in registrations()
    # gone again before the reset (a reboot): the reset still succeeds and cleans up
    Path(binfmt.BINFMT_MISC, "cove-qemu-aarch64").write_text("-1")
    cove("system", "reset", "-f")
    assert registrations() == before
