"""``cove vm`` end to end: real QEMU guests (TCG here, KVM where the probe allows), a real
Debian cloud kernel and a busybox initramfs the tests build (tests/vmguest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import CoveRunner, cove_argv

BOOT = 120.0  # seconds a TCG boot may take on a loaded 2-core machine


@pytest.fixture(scope="session")
def kernel() -> vmguest.Kernel:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is missing: scripts/install.sh installs it")
    return vmguest.test_kernel()


@pytest.fixture(scope="session")
def initrd(kernel: vmguest.Kernel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guest") / "initrd.gz"
    return vmguest.build_initramfs(out, kernel, vmguest.guest_init())


@pytest.fixture
def vms(cove: CoveRunner, cove_root: Path, kernel: vmguest.Kernel) -> Iterator[CoveRunner]:
    """``cove`` with the guest kernel where ``cove vm kernel fetch`` puts it (hard links,
    so the accelerator probe finds one); afterwards no QEMU of this root may be left."""
    vmguest.install_kernel(cove_root)
    yield cove
    ids = [json.loads(line)["Id"] for line in
           cove("vm", "ls", "--format", "json").stdout.splitlines()]  # fmt: skip
    subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True)
    assert vmguest.leftovers(ids) == []


def gone(pid: int) -> bool:
    """No such process, or a zombie its (slow) reaper has not collected yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def inspect(cove: CoveRunner, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cove("vm", "inspect", name).stdout)[0]  # type: ignore[no-any-return]


def wait_log(cove: CoveRunner, name: str, text: str, timeout: float = BOOT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = cove("vm", "logs", name).stdout
        if text in log:
            return log
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared in the log of vm {name}:\n{log[-3000:]}")


def wait_status(cove: CoveRunner, name: str, status: str, timeout: float = BOOT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inspect(cove, name)["State"]["Status"] == status:
            return
        time.sleep(0.3)
    raise AssertionError(f"vm {name} never became {status}")


def console_run(cove: CoveRunner, name: str, command: str, expect: str) -> str:
    """Type ``command`` on the VM's serial console (its socket); the output up to ``expect``."""
    path = inspect(cove, name)["Paths"]["Console"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)

        def until(text: bytes, nudge: bytes) -> bytes:
            seen = b""
            deadline = time.monotonic() + 60
            next_nudge = 0.0
            while text not in seen:
                now = time.monotonic()
                if now > deadline:
                    raise AssertionError(f"{text!r} not seen after {command!r}: {seen[-2000:]!r}")
                if nudge and now >= next_nudge:
                    s.sendall(nudge)  # a shell still starting may drop what came before it
                    next_nudge = now + 2
                ready, _, _ = select.select([s], [], [], 0.5)
                if ready:
                    seen += s.recv(65536)
            return seen

        until(b"cove# ", b"\n")  # a prompt: the shell reads what we type from here on
        s.sendall(command.encode() + b"\n")
        return until(expect.encode(), b"").decode(errors="replace")


def create(cove: CoveRunner, name: str, initrd: Path, kernel: vmguest.Kernel,
           *flags: str, append: str = "") -> None:  # fmt: skip
    cove(
        "vm",
        "create",
        name,
        "--cpus",
        "1",
        "--memory",
        "256M",
        "--kernel",
        kernel.vmlinuz,
        "--initrd",
        str(initrd),
        "--append",
        f"{vmguest.CMDLINE} {append}".strip(),
        *flags,
    )


def test_direct_kernel_boot_acpi_stop_and_rm(
    vms: CoveRunner, cove_root: Path, kernel: vmguest.Kernel, initrd: Path
) -> None:
    create(vms, "k1", initrd, kernel)
    assert vms("vm", "ls", "-q").stdout == "k1\n"
    assert inspect(vms, "k1")["State"]["Status"] == "created"
    vms("vm", "start", "k1")
    wait_log(vms, "k1", vmguest.MARKER)
    info = inspect(vms, "k1")
    assert info["State"]["Status"] == "running" and info["State"]["QMPStatus"] == "running"
    accel = info["Accelerator"]
    assert accel["Name"] in ("kvm", "tcg") and accel["Reason"]
    if os.path.exists("/dev/kvm") and accel["Name"] == "tcg":
        assert "probe" in accel["Reason"]  # the verdict of a real boot, not a file check
    # restart: the power button, then a new QEMU that boots again
    vms("vm", "restart", "-t", "90", "k1")
    assert inspect(vms, "k1")["State"]["Pid"] != info["State"]["Pid"]
    log = wait_log(vms, "k1", "COVE-POWER-BUTTON")
    assert log.count("--- cove: vm k1 started") == 2
    deadline = time.monotonic() + BOOT
    while vms("vm", "logs", "k1").stdout.count(vmguest.MARKER) < 2:
        assert time.monotonic() < deadline, "no second boot"
        time.sleep(0.3)
    info = inspect(vms, "k1")
    pid = info["State"]["Pid"]
    assert Path(f"/proc/{pid}").exists()
    t0 = time.monotonic()
    stop = vms("vm", "stop", "-t", "90", "k1")
    assert "forced" not in stop.stderr, stop.stderr  # the guest's acpid powered it off
    print(f"ACPI stop took {time.monotonic() - t0:.1f}s")
    assert "COVE-POWER-BUTTON" in vms("vm", "logs", "k1").stdout
    assert inspect(vms, "k1")["State"]["Status"] == "stopped"
    assert "stopped" in vms("vm", "ls").stdout
    assert gone(pid)
    vm_dir = Path(info["Paths"]["Dir"])
    run_dir = Path(info["Paths"]["Qmp"]).parent
    assert vm_dir.exists()
    vms("vm", "rm", "k1")
    assert not vm_dir.exists() and not run_dir.exists()
    assert vms("vm", "ls", "-q").stdout == ""


def test_console_runs_a_command(vms: CoveRunner, cove_root: Path, kernel: vmguest.Kernel,
                                initrd: Path) -> None:  # fmt: skip
    create(vms, "c1", initrd, kernel)
    vms("vm", "start", "c1")
    wait_log(vms, "c1", vmguest.MARKER)
    master, slave = pty.openpty()
    proc = subprocess.Popen(cove_argv(cove_root, "vm", "console", "c1"), stdin=slave,
                            stdout=slave, stderr=slave, close_fds=True)  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        time.sleep(1)
        os.write(master, b"\recho hi-$((6*7))\r")
        deadline = time.monotonic() + 60
        while b"hi-42" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 65536)
        assert b"hi-42" in seen, seen[-2000:]
        assert b"cove# " in seen  # a prompt
        os.write(master, b"\x1d")  # Ctrl-]: detach
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert inspect(vms, "c1")["State"]["Status"] == "running"  # detaching leaves it running


def test_iso_install_then_boot_from_disk(
    vms: CoveRunner, cove_root: Path, kernel: vmguest.Kernel, tmp_path: Path
) -> None:
    init = vmguest.install_init()
    rd = vmguest.build_initramfs(tmp_path / "install.gz", kernel, init)
    iso = vmguest.build_iso(tmp_path / "install.iso", Path(kernel.vmlinuz), rd,
                            f"{vmguest.CMDLINE} cove.token=seed-42")  # fmt: skip
    vms("vm", "create", "inst", "--cpus", "1", "--memory", "256M", "--iso", str(iso),
        "--disk", "1G")  # fmt: skip
    vms("vm", "start", "inst")
    log = wait_log(vms, "inst", "INSTALLED", timeout=240)
    assert "BOOTED-FROM-DISK" not in log
    wait_status(vms, "inst", "stopped")  # the installer powers off
    disk = inspect(vms, "inst")["Disk"]["Path"]
    # the installed disk alone boots, and the data the guest wrote is there
    vms("vm", "create", "installed", "--cpus", "1", "--memory", "256M", "--disk-image", disk)
    vms("vm", "start", "installed")
    log = wait_log(vms, "installed", "BOOTED-FROM-DISK", timeout=240)
    assert "BOOTED-FROM-DISK COVE-DATA seed-42" in log
    before = hashlib.sha256(Path(disk).read_bytes()).hexdigest()
    wait_log(vms, "installed", vmguest.MARKER)
    vms("vm", "kill", "installed")
    assert hashlib.sha256(Path(disk).read_bytes()).hexdigest() == before  # the base untouched


def test_cloud_init_seed_reaches_the_guest(vms: CoveRunner, kernel: vmguest.Kernel,
                                           initrd: Path, tmp_path: Path) -> None:  # fmt: skip
    from cove.vm import cloudinit

    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#cloud-config\nruncmd:\n  - [echo, 'from cove']\n")
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1ovQGrhCDYmW9bUJYpXxJqrBbIpS2p0q test\n")
    create(vms, "ci", initrd, kernel, "--cloud-init", str(user_data), "--ssh-key", str(key))
    vms("vm", "start", "ci")
    log = wait_log(vms, "ci", vmguest.MARKER)
    seed = cloudinit.read_seed(inspect(vms, "ci")["CloudInit"])
    assert "CIDATA-LABEL=cidata" in log
    assert seed.files["user-data"] == user_data.read_bytes()
    assert b"ssh-ed25519 AAAAC3" in seed.files["meta-data"]
    for name, data in seed.files.items():
        assert f"CIDATA-FILE {name} {hashlib.md5(data).hexdigest()}" in log, (name, log[-2000:])


def test_user_network_port_forward(vms: CoveRunner, kernel: vmguest.Kernel,
                                   initrd: Path) -> None:  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    create(vms, "web", initrd, kernel, "-p", f"127.0.0.1:{port}:80", append="cove.dhcp=1")
    vms("vm", "start", "web")
    wait_log(vms, "web", vmguest.MARKER)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
        assert vmguest.MARKER in resp.read().decode()


def test_bridge_network_vm_and_container(vms: CoveRunner, kernel: vmguest.Kernel, initrd: Path,
                                         alpine: str) -> None:  # fmt: skip
    vms("network", "create", "vmnet")
    create(vms, "bvm", initrd, kernel, "--network", "vmnet")
    vms("vm", "start", "bvm")
    log = wait_log(vms, "bvm", vmguest.MARKER)
    address = inspect(vms, "bvm")["Network"]["IPAddress"]
    assert f"COVE-NET eth0 {address}/" in log
    tap = inspect(vms, "bvm")["Network"]["Tap"]
    assert Path(f"/sys/class/net/{tap}/brport").exists()  # on the network's bridge
    # container -> VM, by address and by name (the network's DNS knows the VM)
    for host in (address, "bvm"):
        out = vms("run", "--rm", "--network", "vmnet", "alpine:3.20", "wget", "-qO-",
                  f"http://{host}/").stdout  # fmt: skip
        assert vmguest.MARKER in out
    # VM -> container
    vms("run", "-d", "--name", "ctr", "--network", "vmnet", "-v",
        "/bin/busybox:/opt/bb/busybox:ro", "alpine:3.20", "sh", "-c",
        "echo from-container > /tmp/i && /opt/bb/busybox httpd -f -p 8080 -h /tmp")  # fmt: skip
    cip = json.loads(vms("inspect", "ctr").stdout)[0]["NetworkSettings"]["Networks"]["vmnet"][
        "IPAddress"
    ]
    out = console_run(vms, "bvm", f"wget -qO- http://{cip}:8080/i; echo END-$((40+2))",
                      "END-42")  # fmt: skip
    assert "from-container" in out
    assert vms("network", "rm", "vmnet", check=False).returncode != 0  # the vm is on it
    vms("rm", "-f", "ctr")
    vms("vm", "rm", "-f", "bvm")
    assert not Path(f"/sys/class/net/{tap}").exists()
    vms("network", "rm", "vmnet")


def test_pause_resume_and_snapshots(vms: CoveRunner, kernel: vmguest.Kernel,
                                    initrd: Path) -> None:  # fmt: skip
    create(vms, "snap", initrd, kernel, "--disk", "64M")
    vms("vm", "start", "snap")
    wait_log(vms, "snap", vmguest.MARKER)
    vms("vm", "pause", "snap")
    assert inspect(vms, "snap")["State"]["QMPStatus"] == "paused"
    assert "paused" in vms("vm", "ls").stdout
    vms("vm", "resume", "snap")
    assert inspect(vms, "snap")["State"]["QMPStatus"] == "running"
    console_run(vms, "snap", "echo OLD-DATA > /dev/vda; sync; echo W-$((1+1))", "W-2")
    vms("vm", "snapshot", "create", "snap", "s1")
    assert "s1" in vms("vm", "snapshot", "ls", "snap").stdout
    out = console_run(vms, "snap", "echo NEW-DATA > /dev/vda; sync; head -c 8 /dev/vda; "
                      "echo; echo N-$((2+2))", "N-4")  # fmt: skip
    assert "NEW-DATA\r\n" in out
    vms("vm", "snapshot", "restore", "snap", "s1")
    out = console_run(vms, "snap", "echo 3 > /proc/sys/vm/drop_caches; head -c 8 /dev/vda; "
                      "echo; echo R-$((3+3))", "R-6")  # fmt: skip
    assert "OLD-DATA\r\n" in out and "NEW-DATA\r\n" not in out
    # a snapshot taken while stopped holds no vm state: restoring it online is refused
    # (below); growing the disk online works, shrinking it is refused
    vms("vm", "disk", "resize", "snap", "96M")
    from cove.vm import disks

    disk = inspect(vms, "snap")["Disk"]["Path"]
    assert disks.virtual_size(disk) == 96 << 20
    assert vms("vm", "disk", "resize", "snap", "32M", check=False).returncode != 0
    assert vms("vm", "snapshot", "create", "snap", "bad name", check=False).returncode != 0
    # a forced stop: no waiting for the guest
    stop = vms("vm", "stop", "-t", "0", "snap")
    assert "forced" in stop.stderr
    assert inspect(vms, "snap")["State"]["Error"].startswith("forced off")
    vms("vm", "snapshot", "create", "snap", "s2")
    vms("vm", "start", "snap")
    bad = vms("vm", "snapshot", "restore", "snap", "s2", check=False)
    assert bad.returncode != 0 and "no vm state" in bad.stderr
    assert inspect(vms, "snap")["State"]["QMPStatus"] == "running"
    vms("vm", "snapshot", "rm", "snap", "s1")  # online: delvm
    vms("vm", "kill", "snap")
    listed = vms("vm", "snapshot", "ls", "snap").stdout
    assert "s2" in listed and "s1 " not in listed
    assert vms("vm", "snapshot", "restore", "snap", "nope", check=False).returncode != 0
    vms("vm", "disk", "resize", "snap", "128M")
    assert disks.virtual_size(disk) == 128 << 20


def test_screenshot_png(vms: CoveRunner, kernel: vmguest.Kernel, initrd: Path,
                        tmp_path: Path) -> None:  # fmt: skip
    create(vms, "scr", initrd, kernel, "--display", "vnc")
    vms("vm", "start", "scr")
    wait_log(vms, "scr", vmguest.MARKER)
    out = tmp_path / "shot.png"
    vms("vm", "screenshot", "scr", str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 320 and height >= 200
    import zlib

    idat, pos = b"", 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    assert len(set(zlib.decompress(idat))) > 2  # the guest's text, not a blank screen
    no_display = tmp_path / "x.png"
    create(vms, "nodisp", initrd, kernel)
    bad = vms("vm", "screenshot", "nodisp", str(no_display), check=False)
    assert bad.returncode != 0 and "display" in bad.stderr and not no_display.exists()


def test_reality_wins_and_bad_input(vms: CoveRunner, cove_root: Path, kernel: vmguest.Kernel,
                                    initrd: Path, tmp_path: Path) -> None:  # fmt: skip
    create(vms, "r1", initrd, kernel)
    vms("vm", "start", "r1")
    wait_log(vms, "r1", vmguest.MARKER)
    pid = inspect(vms, "r1")["State"]["Pid"]
    os.kill(pid, 9)  # QEMU killed by hand
    deadline = time.monotonic() + 30
    while not gone(pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "stopped" in vms("vm", "ls").stdout
    # the guest powers itself off: the state says so
    vms("vm", "start", "r1")
    deadline = time.monotonic() + BOOT
    while vms("vm", "logs", "r1").stdout.count(vmguest.MARKER) < 2:
        assert time.monotonic() < deadline, "no second boot"
        time.sleep(0.3)
    console_run(vms, "r1", "poweroff -f", "Power down")
    wait_status(vms, "r1", "stopped", timeout=60)
    # bad input: one line, non-zero, nothing half-made
    for args, message in (
        (("--iso", str(tmp_path / "missing.iso"), "--disk", "1G"), "no such file"),
        (("--kernel", kernel.vmlinuz, "--memory", "lots"), "invalid size"),
        (("--disk", "1G", "--accel", "warp"), "invalid choice"),
    ):
        proc = vms("vm", "create", "bad", *args, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) <= 2
    assert "bad" not in vms("vm", "ls", "-q").stdout
    # a VM whose QEMU cannot start: the error is QEMU's, the VM stays startable
    junk = tmp_path / "not-a-kernel"
    junk.write_bytes(b"\0" * 4096)
    vms("vm", "create", "broken", "--kernel", str(junk), "--initrd", str(initrd))
    proc = vms("vm", "start", "broken", check=False)
    assert proc.returncode != 0 and "qemu" in proc.stderr.lower()
    assert inspect(vms, "broken")["State"]["Status"] == "created"
    nope = vms("vm", "start", "nope", check=False)
    assert nope.returncode != 0 and "no such vm: nope" in nope.stderr, nope
    # a taken name is refused for that reason, and the VM holding it is left as it was
    before = inspect(vms, "r1")
    taken = vms("vm", "create", "r1", "--disk", "1G", check=False)
    assert taken.returncode != 0 and "the vm name 'r1' is already in use" in taken.stderr, taken
    assert inspect(vms, "r1") == before


def test_kernel_fetch(cove: CoveRunner) -> None:
    """The real download through apt's mirrors (the package registry CI may reach)."""
    out = cove("vm", "kernel", "fetch", timeout=600).stdout.strip()
    assert out.endswith("/vmlinuz") and Path(out).stat().st_size > 1 << 20
    assert "cloud-amd64" in cove("vm", "kernel", "ls").stdout
