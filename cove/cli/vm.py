"""``cove vm ...``: virtual machine verbs (virsh's, with Docker's manners)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from cove.engine import Engine

DETACH = b"\x1d"  # Ctrl-], as virsh console and telnet


def _vm(engine: Engine) -> Any:
    from cove.vm.manager import VMManager

    return VMManager(engine.root)


def _arch_name(text: str | None) -> str:
    """--arch (aarch64 or arm64, x86_64 or amd64) as uname -m names it; "" the host's."""
    from cove.vm import arch

    return arch.parse(text).name if text else ""


def cmd_create(engine: Engine, args: argparse.Namespace) -> int:
    from cove.spec.vm import PortForward, VMSpec, parse_bytes

    spec = VMSpec(
        name=args.name,
        memory_mib=parse_bytes(args.memory, default_unit="m") >> 20,
        cpus=args.cpus,
        disk_size=parse_bytes(args.disk, default_unit="g") if args.disk else None,
        disk_image=args.disk_image,
        disk_format=args.disk_format,
        allow_backing=list(args.allow_backing),
        iso=args.iso,
        kernel=args.kernel,
        initrd=args.initrd,
        append=args.append or "",
        cloud_init=args.cloud_init,
        ssh_key=args.ssh_key,
        user=args.user,
        network=args.network,
        ports=[PortForward.parse(p) for p in args.publish],
        display=args.display,
        accel=args.accel,
        arch=_arch_name(args.arch),
    )
    mgr = _vm(engine)
    rec = mgr.create(spec)
    if args.start:
        rec = mgr.start(rec.id)
        _accel_note(rec)
    print(rec.name)
    return 0


def _accel_note(rec: Any) -> None:
    if rec.accel == "tcg" and rec.spec.accel == "auto":
        sys.stderr.write(f"warning: vm {rec.name} runs without KVM: {rec.accel_reason}\n")


def cmd_start(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    for name in args.names:
        rec = mgr.start(name)
        _accel_note(rec)
        if not args.console:
            print(rec.name)
    if args.console:
        return _console(mgr.console_socket(args.names[-1]), args.names[-1])
    return 0


def cmd_stop(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    for name in args.names:
        rec, clean = mgr.stop(name, args.time)
        if not clean:
            sys.stderr.write(f"warning: vm {rec.name} ignored the power button for "
                             f"{args.time:g} s: forced off\n")  # fmt: skip
        print(rec.name)
    return 0


def _simple(method: str) -> Any:
    def run(engine: Engine, args: argparse.Namespace) -> int:
        mgr = _vm(engine)
        for name in args.names:
            rec = getattr(mgr, method)(name)
            print(rec.name)
        return 0

    return run


def cmd_restart(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    for name in args.names:
        print(mgr.restart(name, args.time).name)
    return 0


def cmd_rm(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    for name in args.names:
        print(mgr.remove(name, force=args.force))
    return 0


def cmd_ls(engine: Engine, args: argparse.Namespace) -> int:
    recs = _vm(engine).all()
    if args.quiet:
        for r in recs:
            print(r.name)
        return 0
    if args.format == "json":
        for r in recs:
            print(json.dumps({"Id": r.id, "Name": r.name, "Status": r.status.value,
                              "Accelerator": r.accel, "Boot": r.spec.boot,
                              "Memory": r.spec.memory_mib, "Cpus": r.spec.cpus,
                              "Network": r.spec.network, "IPAddress": r.address}))  # fmt: skip
        return 0
    rows = [("ID", "NAME", "STATUS", "ACCEL", "BOOT", "CPUS", "MEMORY", "NETWORK")]
    for r in recs:
        rows.append((r.id[:12], r.name, r.status.value, r.accel or "-", r.spec.boot,
                     str(r.spec.cpus), f"{r.spec.memory_mib}MiB",
                     r.spec.network + (f" {r.address}" if r.address else "")))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_inspect(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    print(json.dumps([mgr.inspect(n) for n in args.names], indent=4))
    return 0


def _console(path: str, name: str) -> int:
    """Relay the terminal and the VM's serial console until Ctrl-] or the VM stops."""
    import select
    import socket
    import termios
    import tty

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    fd = sys.stdin.fileno()
    is_tty = os.isatty(fd)
    saved = termios.tcgetattr(fd) if is_tty else None
    sys.stderr.write(f"Connected to vm {name} (detach with Ctrl-])\r\n")
    sys.stderr.flush()
    try:
        if is_tty:
            tty.setraw(fd)
        stdin_open = True
        while True:
            watch = [sock] + ([fd] if stdin_open else [])
            ready, _, _ = select.select(watch, [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return 0  # the VM stopped
                os.write(1, data)
            if fd in ready:
                data = os.read(fd, 4096)
                if not data:
                    stdin_open = False
                    continue
                if DETACH in data:
                    sock.sendall(data.split(DETACH, 1)[0])
                    return 0
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sock.close()
        sys.stderr.write("\r\n")


def cmd_console(engine: Engine, args: argparse.Namespace) -> int:
    return _console(_vm(engine).console_socket(args.name), args.name)


def cmd_logs(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    rec, path = mgr.serial_log(args.name)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        while True:
            data = f.read(65536)
            if data:
                os.write(1, data)
                continue
            if not args.follow or not mgr.get(rec.id).status.can_stop():
                return 0
            time.sleep(0.2)


def cmd_screenshot(engine: Engine, args: argparse.Namespace) -> int:
    _vm(engine).screenshot(args.name, args.file)
    return 0


def cmd_snapshot(engine: Engine, args: argparse.Namespace) -> int:
    mgr = _vm(engine)
    action = args.snapshot_command
    if action == "ls":
        snaps = mgr.snapshots(args.name)
        print(f"{'NAME':<20} {'VM STATE':>10}  DATE")
        for s in snaps:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date"]))
            print(f"{s['name']:<20} {s['vm_state_size']:>10}  {when}")
        return 0
    if not args.snapshot:
        sys.stderr.write(f"Error: vm snapshot {action} needs a snapshot name\n")
        return 125
    {"create": mgr.snapshot_create, "restore": mgr.snapshot_restore,
     "rm": mgr.snapshot_remove}[action](args.name, args.snapshot)  # fmt: skip
    print(args.snapshot)
    return 0


def cmd_disk_resize(engine: Engine, args: argparse.Namespace) -> int:
    from cove.spec.vm import parse_bytes

    _vm(engine).disk_resize(args.name, parse_bytes(args.size, default_unit="g"))
    return 0


def cmd_ssh(engine: Engine, args: argparse.Namespace) -> int:
    argv = _vm(engine).ssh_argv(args.name, args.command)
    os.execvp(argv[0], argv)


def cmd_kernel_fetch(engine: Engine, args: argparse.Namespace) -> int:
    from cove.vm import arch, debarch, kernel

    if args.arch:  # another architecture's cloud kernel, from its own package lists
        a = arch.parse(args.arch)
        k = kernel.fetch(debarch.kernels_dir(engine.root, a), args.package or a.kernel_package,
                         debarch.apt_options(engine.root, a))  # fmt: skip
    else:
        k = kernel.fetch(kernel.kernels_dir(engine.root), args.package or kernel.DEFAULT_PACKAGE)
    print(k.vmlinuz)
    return 0


def cmd_kernel_ls(engine: Engine, args: argparse.Namespace) -> int:
    from cove.vm import kernel

    for k in kernel.installed(kernel.kernels_dir(engine.root)):
        print(f"{k.release}\t{k.vmlinuz}")
    return 0


def register(sub: Any) -> None:
    vm = sub.add_parser("vm", help="manage virtual machines (QEMU/KVM)")
    vsub = vm.add_subparsers(dest="vm_command", metavar="COMMAND", parser_class=type(vm))
    p = vsub.add_parser("create", help="create a vm")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--memory", default="1G", help="memory (default 1G)")
    p.add_argument("--cpus", type=int, default=2, help="virtual cpus (default 2)")
    disk = p.add_mutually_exclusive_group()
    disk.add_argument("--disk", metavar="SIZE", help="a new qcow2 disk of this size")
    disk.add_argument(
        "--disk-image",
        metavar="FILE",
        help="boot disk: an overlay over this qcow2/raw image (never modified)",
    )
    p.add_argument(
        "--disk-format",
        choices=("raw", "qcow2"),
        help="the --disk-image's format (default: probed, then checked like a qcow2's chain)",
    )
    p.add_argument(
        "--allow-backing",
        metavar="PATH",
        action="append",
        default=[],
        help="a backing file the --disk-image's chain may name outside cove's vm directory "
        "(repeatable; any other is refused)",
    )
    p.add_argument("--iso", metavar="FILE", help="a CD image to boot (installers)")
    p.add_argument("--arch", help="the guest's CPU: x86_64 (default on this host) or aarch64 "
                   "(emulated: qemu-system-aarch64, virt machine, TCG)")  # fmt: skip
    p.add_argument("--kernel", metavar="FILE", help="boot this kernel directly")
    p.add_argument("--initrd", metavar="FILE", help="initramfs for --kernel")
    p.add_argument("--append", metavar="ARGS", help="kernel command line for --kernel")
    p.add_argument("--cloud-init", metavar="FILE", help="user-data for a NoCloud seed")
    p.add_argument("--ssh-key", metavar="FILE", help="public key for the guest user")
    p.add_argument("--user", help="guest user cloud-init creates (default cove with --ssh-key)")
    p.add_argument("--network", default="user", help="user (default), none, or a cove network")
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:]HOST:GUEST",
        help="forward a host port to the guest (user networking)",
    )
    p.add_argument("--display", default="none", choices=["none", "vnc"])
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    p.add_argument("--start", action="store_true", help="start it at once")
    p.set_defaults(func=cmd_create)
    p = vsub.add_parser("start", help="start vms")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--console", action="store_true", help="attach to the serial console")
    p.set_defaults(func=cmd_start)
    p = vsub.add_parser("stop", help="power vms off (ACPI), forced after a timeout")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-t", "--time", type=float, default=60.0, help="seconds to wait (default 60)")
    p.set_defaults(func=cmd_stop)
    p = vsub.add_parser("restart", help="stop then start vms")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-t", "--time", type=float, default=60.0, help="seconds to wait (default 60)")
    p.set_defaults(func=cmd_restart)
    for verb, method, text in (("kill", "kill", "kill the qemu of vms"),
                               ("pause", "pause", "pause vms"),
                               ("resume", "resume", "resume paused vms")):  # fmt: skip
        p = vsub.add_parser(verb, help=text)
        p.add_argument("names", nargs="+", metavar="NAME")
        p.set_defaults(func=_simple(method))
    p = vsub.add_parser("rm", help="remove vms (their disks too)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true", help="kill a running vm first")
    p.set_defaults(func=cmd_rm)
    p = vsub.add_parser("ls", aliases=["list"], help="list vms")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ls)
    p = vsub.add_parser("inspect", help="show vms as JSON")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_inspect)
    p = vsub.add_parser("console", help="attach to the serial console (detach: Ctrl-])")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_console)
    p = vsub.add_parser("logs", help="the serial console log")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="follow while the vm runs")
    p.set_defaults(func=cmd_logs)
    p = vsub.add_parser("screenshot", help="save the display as PNG")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE.png")
    p.set_defaults(func=cmd_screenshot)
    p = vsub.add_parser("snapshot", help="internal snapshots of the vm's disk (and state)")
    p.add_argument("snapshot_command", choices=["create", "ls", "restore", "rm"])
    p.add_argument("name", metavar="NAME")
    p.add_argument("snapshot", nargs="?", metavar="SNAPSHOT")
    p.set_defaults(func=cmd_snapshot)
    p = vsub.add_parser("disk", help="disk operations")
    dsub = p.add_subparsers(dest="disk_command", metavar="COMMAND", parser_class=type(vm))
    p = dsub.add_parser("resize", help="grow the vm's disk")
    p.add_argument("name", metavar="NAME")
    p.add_argument("size", metavar="SIZE")
    p.set_defaults(func=cmd_disk_resize)
    p = vsub.add_parser("ssh", help="ssh into the vm (needs --ssh-key and -p HOST:22)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_ssh)
    p = vsub.add_parser("kernel", help="guest kernels for direct boots")
    ksub = p.add_subparsers(dest="kernel_command", metavar="COMMAND", parser_class=type(vm))
    p = ksub.add_parser("fetch", help="download Debian's cloud kernel into the state root")
    p.add_argument("--package", help="the kernel package (default linux-image-cloud-ARCH)")
    p.add_argument("--arch", help="a guest architecture (aarch64/arm64; default the host's)")
    p.set_defaults(func=cmd_kernel_fetch)
    p = ksub.add_parser("ls", help="list fetched kernels")
    p.set_defaults(func=cmd_kernel_ls)


def cmd_compare(engine: Engine, args: argparse.Namespace) -> int:
    from cove import compare

    rest = list(args.command)
    command: list[str] = []
    takes = {"-n": "n", "--output": "output", "--memory": "memory", "--cpus": "cpus",
             "--platform": "platform"}  # fmt: skip
    i = 0
    while i < len(rest):
        word = rest[i]
        name, eq, value = word.partition("=")
        if word == "--":
            command = rest[i + 1 :]
            break
        if name in takes:
            if not eq:
                if i + 1 >= len(rest):
                    sys.stderr.write(f"Error: {name} needs a value\n")
                    return 125
                value = rest[i + 1]
                i += 1
            if name == "-n" and not value.isdigit():
                sys.stderr.write(f"Error: -n wants a number, not {value!r}\n")
                return 125
            setattr(args, takes[name], int(value) if name == "-n" else value)
            i += 1
            continue
        command = rest[i:]
        break
    if not command:
        command = ["true"]
    if args.n < 1:
        sys.stderr.write("Error: -n must be at least 1\n")
        return 125
    vm_flags = []
    if args.memory:
        vm_flags += ["--memory", args.memory]
    if args.cpus:
        vm_flags += ["--cpus", args.cpus]
    results = compare.compare(engine.root, args.image, command, args.n, vm_flags=vm_flags,
                              platform=args.platform)  # fmt: skip
    print(compare.table(results, args.n))
    if args.output:
        compare.write_outputs(results, args.image, command, args.output)
        print(f"\nwrote {os.path.join(args.output, 'results.json')} and "
              f"{os.path.join(args.output, 'compare.png')}")  # fmt: skip
    return 0


def register_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="run a command as a container and as a vm, measure both")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-n", type=int, default=3, help="runs per isolation (default 3)")
    p.add_argument("--output", metavar="DIR", help="write results.json and compare.png here")
    p.add_argument("--memory", help="vm memory (default 512M)")
    p.add_argument("--cpus", help="vm cpus (default 1)")
    p.add_argument("--platform", help="another architecture's image (os/arch), emulated both ways")
    # REMAINDER: "compare IMAGE -n 3 -- CMD" puts options after IMAGE; they are read below
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    p.set_defaults(func=cmd_compare)
