"""The QEMU command line of a VM: a pure function of its spec, its paths and its launch.

One machine type, q35, for every boot mode: it has the ACPI power button that
``vm stop`` presses (microvm without ACPI has none, and with ACPI did not boot an
initramfs here), PCI for virtio devices and SeaBIOS for ISO and disk boots. Every
device is virtio and explicit (``-nodefaults``): no emulated NIC with a PXE ROM, no
VGA unless a display is asked for, which is also what makes boots fast.

QEMU runs daemonized, one process per VM, with its QMP socket, pidfile, serial
console socket (logged to a file whether or not anyone is attached) and disks in the
VM's state directory.

Every drive names its format: QEMU never probes one (a raw image, an ISO or a disk a guest
wrote could start with a qcow2 header that names a host file as its backing file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cove.spec.vm import PortForward, VMSpec

QEMU = "qemu-system-x86_64"
# QEMU's seccomp filter: no obsolete syscalls, no set*id/setsid/chroot (elevateprivileges),
# no fork or exec (spawn), no affinity or priority changes (resourcecontrol). A guest that
# takes over QEMU (a device emulation bug) is then still denied a shell on the host.
# spawn=deny forbids -daemonize's fork and elevateprivileges=deny its setsid, so cove
# detaches QEMU itself (a new session before exec) instead.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# With -runas, QEMU 7.2 switches user after the filter is loaded, and set*id under
# elevateprivileges=deny (or =children) is SIGSYS: the switch needs them allowed. After it
# QEMU has no capabilities, so set*id can no longer raise anything.
SANDBOX_RUNAS = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class Paths:
    """The files of one VM: disks and logs under ``<root>/vms/<id>/``; its sockets and
    pidfile, which live only while QEMU does, under ``run`` (a short path in /run: a unix
    socket path must fit in 108 bytes, and state roots can be deep)."""

    dir: str
    run: str = ""

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _r(self, name: str) -> str:
        return os.path.join(self.run or self.dir, name)

    @property
    def qmp(self) -> str:
        return self._r("qmp.sock")

    @property
    def pidfile(self) -> str:
        return self._r("qemu.pid")

    @property
    def console(self) -> str:
        return self._r("console.sock")

    @property
    def serial_log(self) -> str:
        return self._p("serial.log")

    @property
    def vnc(self) -> str:
        return self._r("vnc.sock")

    @property
    def disk(self) -> str:
        return self._p("disk.qcow2")

    @property
    def seed(self) -> str:
        return self._p("seed.iso")

    @property
    def qemu_log(self) -> str:
        return self._p("qemu.log")

    @property
    def screen_dir(self) -> str:
        """The one directory QEMU (as its unprivileged user) may create files in."""
        return self._r("screen")


@dataclass(frozen=True)
class Launch:
    """What is decided at start, not at create: the accelerator and the network link."""

    accel: str  # "kvm" or "tcg"
    mac: str
    tap: str | None = None  # a tap device on a cove network's bridge
    append_extra: str = ""  # cove's own kernel parameters (the address on a cove network)
    has_disk: bool = False
    has_seed: bool = False
    runas: str | None = None  # the unprivileged user QEMU becomes once started


def _q(path: str) -> str:
    """A path inside a QEMU option string: its commas doubled, or they would end the value
    (and let a file name add options of its own)."""
    return path.replace(",", ",,")


def kernel_cmdline(spec: VMSpec, launch: Launch) -> str:
    """The direct boot's command line: the user's, a serial console unless they chose one,
    then cove's parameters."""
    parts = [spec.append] if spec.append else []
    if "console=" not in spec.append:
        parts.insert(0, "console=ttyS0")
    if launch.append_extra:
        parts.append(launch.append_extra)
    return " ".join(parts)


def command(spec: VMSpec, paths: Paths, launch: Launch, *, qemu: str = QEMU) -> list[str]:
    """The argv that starts ``spec``'s VM (in the foreground: the caller detaches it)."""
    kvm = launch.accel == "kvm"
    argv = [
        qemu,
        "-name", f"{spec.name},process=cove-vm-{spec.name}",
        "-machine", f"q35,accel={launch.accel}",
        # KVM passes the host CPU through; TCG emulates the richest model it has
        "-cpu", "host" if kvm else "max",
        "-smp", str(spec.cpus),
        "-m", f"{spec.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-sandbox", SANDBOX_RUNAS if launch.runas else SANDBOX,
        *(["-runas", launch.runas] if launch.runas else []),
        "-pidfile", paths.pidfile,
        "-qmp", f"unix:{_q(paths.qmp)},server=on,wait=off",
        # the console keeps a log of everything the guest printed, attached or not
        "-chardev", f"socket,id=serial0,path={_q(paths.console)},server=on,wait=off,"
                    f"logfile={_q(paths.serial_log)},logappend=on",
        "-serial", "chardev:serial0",
        "-device", "virtio-rng-pci",  # entropy early in boot: no stall in getrandom()
    ]  # fmt: skip
    if spec.display == "vnc":
        argv += ["-device", "VGA", "-display", f"vnc=unix:{_q(paths.vnc)}"]
    else:
        argv += ["-display", "none"]
    boot_cd = spec.boot == "iso"
    if launch.has_disk:
        argv += [
            "-drive", f"file={_q(paths.disk)},if=none,id=disk0,format=qcow2,discard=unmap",
            "-device", f"virtio-blk-pci,drive=disk0,bootindex={2 if boot_cd else 1}",
        ]  # fmt: skip
    if spec.iso or launch.has_seed:
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    if spec.iso:
        argv += [
            "-drive", f"file={_q(spec.iso)},if=none,id=cd0,format=raw,media=cdrom,readonly=on",
            "-device", "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=0",
        ]  # fmt: skip
    if launch.has_seed:
        argv += [
            "-drive", f"file={_q(paths.seed)},if=none,id=seed0,format=raw,media=cdrom,"
                      "readonly=on",
            "-device", "scsi-cd,drive=seed0,bus=scsi0.0",
        ]  # fmt: skip
    if spec.kernel:
        argv += ["-kernel", spec.kernel, "-append", kernel_cmdline(spec, launch)]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
    if spec.network == "user":
        fwd = "".join(
            f",hostfwd={p.proto}:{p.host_ip}:{p.host_port}-:{p.guest_port}" for p in spec.ports
        )
        argv += ["-netdev", f"user,id=net0{fwd}",
                 "-device", f"virtio-net-pci,netdev=net0,mac={launch.mac}"]  # fmt: skip
    elif spec.network != "none":
        if not launch.tap:
            raise ValueError(f"vm {spec.name}: network {spec.network} needs a tap device")
        argv += ["-netdev", f"tap,id=net0,ifname={launch.tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net0,mac={launch.mac}"]  # fmt: skip
    return argv


@dataclass(frozen=True)
class RunFiles:
    """The files of one ``run --vm``: in the container's directory, and (sockets) a short
    runtime directory."""

    dir: str
    run: str

    @property
    def disk(self) -> str:
        return os.path.join(self.dir, "root.qcow2")

    @property
    def initrd(self) -> str:
        return os.path.join(self.dir, "initrd.img")

    @property
    def stdout(self) -> str:
        return os.path.join(self.dir, "stdout")

    @property
    def stderr(self) -> str:
        return os.path.join(self.dir, "stderr")

    @property
    def exit(self) -> str:
        return os.path.join(self.dir, "exit")

    @property
    def console_log(self) -> str:
        return os.path.join(self.dir, "console.log")

    @property
    def qemu_log(self) -> str:
        return os.path.join(self.dir, "qemu.log")

    @property
    def ctl(self) -> str:
        return os.path.join(self.run, "ctl.sock")

    @property
    def stdin(self) -> str:
        return os.path.join(self.run, "stdin.sock")

    def fs(self, i: int) -> str:
        return os.path.join(self.run, f"fs{i}.sock")


def run_command(
    *,
    accel: str,
    cpus: int,
    memory_mib: int,
    kernel: str,
    append: str,
    files: RunFiles,
    volumes: int = 0,
    interactive: bool = False,
    network: str = "user",
    ports: tuple[PortForward, ...] = (),
    tap: str | None = None,
    mac: str = "52:54:00:12:34:56",
    qemu: str = QEMU,
) -> list[str]:
    """The argv of one ``run --vm``: QEMU in the foreground of its supervisor, the kernel
    and agent initramfs booted directly, the image's root on a throw-away virtio disk, the
    command's streams on virtio-serial ports (files QEMU appends to; control and stdin on
    sockets), volumes through virtiofs (which needs guest memory shared with virtiofsd)."""
    kvm = accel == "kvm"
    machine = f"q35,accel={accel}"
    argv = [
        qemu,
        "-machine", machine,
        "-cpu", "host" if kvm else "max",
        "-smp", str(cpus),
        "-m", f"{memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-sandbox", SANDBOX,
        "-kernel", kernel, "-initrd", files.initrd, "-append", append,
        "-chardev", f"file,id=con,path={_q(files.console_log)}", "-serial", "chardev:con",
        "-device", "virtio-rng-pci",
        "-drive", f"file={_q(files.disk)},if=none,id=root,format=qcow2,discard=unmap,"
                  "cache=unsafe",
        "-device", "virtio-blk-pci,drive=root",
        "-device", "virtio-serial-pci,id=vser",
    ]  # fmt: skip
    ports_ = [("out", "cove.stdout", f"file,path={_q(files.stdout)}"),
              ("err", "cove.stderr", f"file,path={_q(files.stderr)}"),
              ("exit", "cove.exit", f"file,path={_q(files.exit)}"),
              ("ctl", "cove.ctl", f"socket,path={_q(files.ctl)},server=on,wait=off")]  # fmt: skip
    if interactive:
        ports_.append(("in", "cove.stdin", f"socket,path={_q(files.stdin)},server=on,wait=off"))
    for cid, name, spec in ports_:
        argv += ["-chardev", f"{spec},id={cid}",
                 "-device", f"virtserialport,bus=vser.0,chardev={cid},name={name}"]  # fmt: skip
    if volumes:
        argv[argv.index("-machine") + 1] = f"{machine},memory-backend=mem"
        argv += ["-object", f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on"]
        for i in range(volumes):
            argv += ["-chardev", f"socket,id=fs{i},path={_q(files.fs(i))}",
                     "-device", f"vhost-user-fs-pci,chardev=fs{i},tag=cove{i}"]  # fmt: skip
    if network == "user":
        fwd = "".join(f",hostfwd={p.proto}:{p.host_ip}:{p.host_port}-:{p.guest_port}"
                      for p in ports)  # fmt: skip
        argv += ["-netdev", f"user,id=net0{fwd}",
                 "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]  # fmt: skip
    elif network != "none":
        if not tap:
            raise ValueError(f"network {network} needs a tap device")
        argv += ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]  # fmt: skip
    return argv
