"""The VM spec and the QEMU command line builder: pure, no QEMU started."""

from __future__ import annotations

import pytest

from cove.errors import InvalidSpec
from cove.spec.vm import PortForward, VMSpec, parse_bytes
from cove.vm.qemu import SANDBOX, Launch, Paths, command, kernel_cmdline


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_parse_bytes() -> None:
    assert parse_bytes("1G") == 1 << 30
    assert parse_bytes("512m") == 512 << 20
    assert parse_bytes("1.5g") == 3 << 29
    assert parse_bytes("2048", default_unit="m") == 2048 << 20
    assert parse_bytes("10GiB") == 10 << 30
    for bad in ("", "x", "-1G", "0", "1Q"):
        with pytest.raises(InvalidSpec):
            parse_bytes(bad)


def test_port_forward() -> None:
    assert PortForward.parse("8080:80") == PortForward("127.0.0.1", 8080, 80, "tcp")
    assert PortForward.parse("0.0.0.0:53:53/udp") == PortForward("0.0.0.0", 53, 53, "udp")
    for bad in ("80", "a:b", "1:2/sctp", "70000:80", "1.2.3:8080:80"):
        with pytest.raises(InvalidSpec):
            PortForward.parse(bad)


def test_spec_validation_and_roundtrip() -> None:
    with pytest.raises(InvalidSpec, match="nothing to boot"):
        VMSpec("a").validate()
    with pytest.raises(InvalidSpec, match="needs --kernel"):
        VMSpec("a", initrd="/i", disk_size=1).validate()
    with pytest.raises(InvalidSpec, match="invalid vm name"):
        VMSpec("-x", disk_size=1).validate()
    with pytest.raises(InvalidSpec, match="user"):
        VMSpec("a", disk_size=1, network="app", ports=[PortForward.parse("1:2")]).validate()
    spec = VMSpec("a", kernel="/k", ports=[PortForward.parse("8080:80")]).validate()
    assert VMSpec.from_json(spec.to_json()) == spec
    assert spec.boot == "kernel"
    assert VMSpec("b", iso="/x.iso", disk_size=1).boot == "iso"
    assert VMSpec("c", disk_image="/d.qcow2").boot == "disk"


def test_kernel_command_line() -> None:
    launch = Launch("tcg", "52:54:00:00:00:01", append_extra="cove.ip=10.0.0.2/24")
    assert kernel_cmdline(VMSpec("a", kernel="/k"), launch) == "console=ttyS0 cove.ip=10.0.0.2/24"
    spec = VMSpec("a", kernel="/k", append="console=hvc0 quiet")
    assert kernel_cmdline(spec, Launch("tcg", "m")) == "console=hvc0 quiet"


def test_command_direct_kernel_user_net() -> None:
    spec = VMSpec("vm1", memory_mib=512, cpus=1, kernel="/k", initrd="/i", append="quiet",
                  ports=[PortForward.parse("127.0.0.1:8080:80")])  # fmt: skip
    argv = command(spec, Paths("/r/vms/x"), Launch("tcg", "52:54:00:aa:bb:cc"))
    assert argv[0] == "qemu-system-x86_64"
    assert _pairs(argv, "-machine") == ["q35,accel=tcg"]
    assert _pairs(argv, "-cpu") == ["max"]
    assert _pairs(argv, "-m") == ["512M"] and _pairs(argv, "-smp") == ["1"]
    assert "-nodefaults" in argv and "-daemonize" not in argv  # the sandbox forbids its fork
    assert _pairs(argv, "-sandbox") == [SANDBOX]
    assert _pairs(argv, "-pidfile") == ["/r/vms/x/qemu.pid"]
    assert _pairs(argv, "-qmp") == ["unix:/r/vms/x/qmp.sock,server=on,wait=off"]
    (chardev,) = _pairs(argv, "-chardev")
    assert "path=/r/vms/x/console.sock" in chardev and "logfile=/r/vms/x/serial.log" in chardev
    assert _pairs(argv, "-kernel") == ["/k"] and _pairs(argv, "-initrd") == ["/i"]
    assert _pairs(argv, "-append") == ["console=ttyS0 quiet"]
    assert _pairs(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"]
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc" in _pairs(argv, "-device")
    assert _pairs(argv, "-display") == ["none"] and "VGA" not in _pairs(argv, "-device")
    assert "-drive" not in argv  # no disk, no CD


def test_command_iso_install_with_disk_seed_tap_and_display() -> None:
    spec = VMSpec("vm2", iso="/media/inst.iso", disk_size=1 << 30, network="app",
                  display="vnc")  # fmt: skip
    launch = Launch("kvm", "02:42:0a:59:00:02", tap="ctap1234", has_disk=True, has_seed=True)
    argv = command(spec, Paths("/r/v"), launch)
    assert _pairs(argv, "-machine") == ["q35,accel=kvm"] and _pairs(argv, "-cpu") == ["host"]
    devices = _pairs(argv, "-device")
    drives = _pairs(argv, "-drive")
    assert "file=/r/v/disk.qcow2,if=none,id=disk0,format=qcow2,discard=unmap" in drives
    assert "virtio-blk-pci,drive=disk0,bootindex=2" in devices  # the CD boots first
    assert "file=/media/inst.iso,if=none,id=cd0,format=raw,media=cdrom,readonly=on" in drives
    assert "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=0" in devices
    assert "file=/r/v/seed.iso,if=none,id=seed0,format=raw,media=cdrom,readonly=on" in drives
    assert devices.count("virtio-scsi-pci,id=scsi0") == 1
    assert _pairs(argv, "-netdev") == ["tap,id=net0,ifname=ctap1234,script=no,downscript=no"]
    assert "VGA" in devices and _pairs(argv, "-display") == ["vnc=unix:/r/v/vnc.sock"]
    assert "-daemonize" not in argv and "-kernel" not in argv


def test_command_disk_boot_and_no_network() -> None:
    spec = VMSpec("vm3", disk_image="/base.qcow2", network="none")
    argv = command(spec, Paths("/r/v"), Launch("tcg", "m", has_disk=True))
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in _pairs(argv, "-device")
    assert "-netdev" not in argv and "virtio-scsi-pci,id=scsi0" not in _pairs(argv, "-device")
    with pytest.raises(ValueError, match="tap"):
        command(VMSpec("vm4", disk_size=1, network="app"), Paths("/r"), Launch("tcg", "m"))
