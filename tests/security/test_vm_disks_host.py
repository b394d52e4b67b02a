"""A VM disk image that reaches host files: QEMU runs as root, so a qcow2 whose backing
file (or external data file) is /etc/shadow or a host disk would hand that file to the
guest. cove refuses any such chain at ``vm create`` (and again at ``vm start``) unless the
user named the file (``--allow-backing``), never lets QEMU probe a format, and runs QEMU
under its seccomp sandbox.

Positive controls boot real guests (tests/vmguest.py, TCG here)."""

from __future__ import annotations

import json
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import CoveRunner, cove_argv
from integration.test_vm import create, inspect, wait_log

from cove.spec.vm import VMSpec
from cove.vm.qemu import Launch, Paths, RunFiles, command, run_command


@pytest.fixture(scope="module")
def kernel() -> vmguest.Kernel:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is missing: scripts/install.sh installs it")
    return vmguest.test_kernel()


@pytest.fixture(scope="module")
def initrd(kernel: vmguest.Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guest") / "initrd.gz"
    return vmguest.build_initramfs(out, kernel, vmguest.guest_init())


@pytest.fixture
def vms(cove: CoveRunner, cove_root: Path, kernel: vmguest.Kernel) -> Iterator[CoveRunner]:
    """``cove`` with the guest kernel installed; afterwards no QEMU of this root is left."""
    vmguest.install_kernel(cove_root)
    yield cove
    ids = [json.loads(line)["Id"] for line in
           cove("vm", "ls", "--format", "json").stdout.splitlines()]  # fmt: skip
    subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True)
    assert vmguest.leftovers(ids) == []


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The host file the attack wants: a marker nobody gave cove."""
    path = tmp_path / "host-secret"
    path.write_bytes(f"HOST-SECRET-{secrets.token_hex(8)}\n".encode().ljust(1 << 20, b"\0"))
    return path


def hostile_base(kind: str, d: Path, secret: Path) -> tuple[Path, list[str]]:
    """A base image of kind ``kind`` that reaches ``secret``; the extra ``vm create`` flags
    the variant needs."""
    base = d / f"{kind}.img"
    if kind == "backing":
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(base), "1M")
        return base, []
    if kind == "two-deep":  # the first link is named, the second is not
        mid = d / "mid.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(mid), "1M")
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(mid), "-F", "qcow2", str(base), "1M")
        return base, ["--allow-backing", str(mid)]
    if kind == "json":
        spec = json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(secret)}})
        qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", f"json:{spec}", "-F", "raw",
                 str(base), "1M")  # fmt: skip
        return base, []
    if kind == "data-file":
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on",
                 str(base), "1M")  # fmt: skip
        return base, []
    if kind == "raw-probed":  # a raw disk whose first bytes are a qcow2 header
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(base), "1M")
        with base.open("ab") as f:
            f.truncate(4 << 20)
        return base, []
    raise AssertionError(kind)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout
    assert err.startswith("Error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("kind", ["backing", "two-deep", "json", "data-file", "raw-probed"])
def test_disk_reaching_a_host_file_is_refused(
    vms: CoveRunner, kernel: vmguest.Kernel, initrd: Path, tmp_path: Path, secret: Path, kind: str
) -> None:
    base, flags = hostile_base(kind, tmp_path, secret)
    proc = vms("vm", "create", "evil", "--cpus", "1", "--memory", "128M", "--kernel",
               kernel.vmlinuz, "--initrd", str(initrd), "--disk-image", str(base), *flags,
               check=False)  # fmt: skip
    err = error_line(proc)
    assert "refused" in err or "--allow-backing" in err, err
    assert vms("vm", "ls", "-q").stdout.strip() == ""  # nothing half-created


def test_raw_image_with_a_qcow2_header_stays_raw(
    vms: CoveRunner, tmp_path: Path, secret: Path
) -> None:
    """Declared raw, the same bytes are accepted, and stay raw: the VM's chain ends at the
    image itself, never at the file its header names."""
    base, _ = hostile_base("raw-probed", tmp_path, secret)
    vms("vm", "create", "rawvm", "--cpus", "1", "--memory", "128M", "--disk-image", str(base),
        "--disk-format", "raw", "--network", "none")  # fmt: skip
    disk = inspect(vms, "rawvm")["Disk"]["Path"]
    argv = ["qemu-img", "info", "-U", "--backing-chain", "--output=json", "-f", "qcow2", disk]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    chain = json.loads(out)
    assert [c["format"] for c in chain] == ["qcow2", "raw"]
    assert chain[1]["filename"] == str(base)
    assert str(secret) not in out


def test_base_changed_after_create_is_refused_at_start(
    vms: CoveRunner, kernel: vmguest.Kernel, initrd: Path, tmp_path: Path, secret: Path
) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "64M")
    create(vms, "later", initrd, kernel, "--disk-image", str(base), "--network", "none")
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(base))
    err = error_line(vms("vm", "start", "later", check=False))
    assert str(secret) in err, err
    assert inspect(vms, "later")["State"]["Status"] == "created"


def test_every_drive_names_its_format() -> None:
    """QEMU never probes: the disk, an ISO (whose first 32 KiB are anything) and the seed."""
    spec = VMSpec("f", iso="/m/x.iso", disk_size=1 << 30)
    argv = command(spec, Paths("/r/v"), Launch("tcg", "m", has_disk=True, has_seed=True))
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert len(drives) == 3 and all(",format=" in d for d in drives), drives
    run = run_command(accel="tcg", cpus=1, memory_mib=64, kernel="/k", append="",
                      files=RunFiles("/d", "/r"))  # fmt: skip
    assert all(",format=" in run[i + 1] for i, a in enumerate(run) if a == "-drive")


def _status(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.split() for k, _, v in (ln.partition(":") for ln in lines)}


def test_sandboxed_vm_with_a_cove_disk_boots(
    vms: CoveRunner, kernel: vmguest.Kernel, initrd: Path
) -> None:
    """Positive control: a VM with a qcow2 disk cove made boots, its QEMU in seccomp filter
    mode (Seccomp: 2) with the sandbox on its command line, as the unprivileged cove-qemu
    user without capabilities; its screendump (the one file it writes later) still works."""
    create(vms, "good", initrd, kernel, "--disk", "64M", "--network", "none")
    vms("vm", "start", "good")
    wait_log(vms, "good", vmguest.MARKER)
    pid = inspect(vms, "good")["State"]["Pid"]
    status = _status(pid)
    assert status["Seccomp"] == ["2"]
    qemu_uid = pwd.getpwnam("cove-qemu").pw_uid
    assert qemu_uid != 0 and status["Uid"] == [str(qemu_uid)] * 4, status["Uid"]
    assert int(status["CapEff"][0], 16) == 0 and int(status["CapPrm"][0], 16) == 0
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-sandbox" in cmdline and b"-daemonize" not in cmdline
    vms("vm", "rm", "-f", "good")


def test_named_backing_file_works(
    vms: CoveRunner, kernel: vmguest.Kernel, initrd: Path, tmp_path: Path
) -> None:
    """Positive control: a backing file the user names with --allow-backing is used."""
    golden = tmp_path / "golden.raw"
    qemu_img("create", "-q", "-f", "raw", str(golden), "64M")
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(golden), "-F", "raw", str(base))
    create(vms, "named", initrd, kernel, "--disk-image", str(base), "--allow-backing",
           str(golden), "--network", "none")  # fmt: skip
    vms("vm", "start", "named")
    wait_log(vms, "named", vmguest.MARKER)
    vms("vm", "rm", "-f", "named")
