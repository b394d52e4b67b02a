"""Guest-side tooling for the VM tests: a kernel, a busybox initramfs, an installer ISO.

The guest is Debian's cloud kernel plus a static busybox in a gzip newc initramfs whose
``/init`` is a shell script (``guest_init``, ``install_init``). Its contract with tests:

Kernel command line (read by /init from /proc/cmdline):
  ``console=ttyS0``        required: every line below goes to /dev/console
  ``cove.ip=ADDR/PREFIX``  static address on eth0, the virtio NIC
  ``cove.gw=GW``           default route, with cove.ip
  ``cove.dns=ADDR``        /etc/resolv.conf nameserver, with cove.ip
  ``cove.dhcp=1``          udhcpc on eth0 instead (QEMU user-mode networking serves DHCP)
  ``cove.token=TOKEN``     what install_init records on the disk (default: its ``token``)
  ``quiet``                recommended: kernel messages would interleave with the lines below

Console lines (ttyS0), each a whole line, in this order:
  ``INSTALLED``                           install_init copied its CD to /dev/vda, then powers off
  ``BOOTED-FROM-DISK COVE-DATA <token>``  install_init found its record on /dev/vda
  ``CIDATA-LABEL=<label>``                a CD labelled cidata/CIDATA, mounted at /mnt/cidata
  ``CIDATA-FILE <path> <md5>``            one per file on it, sorted by path
  ``COVE-NET eth0 <ADDR/PREFIX>``         networking configured (static or DHCP lease)
  ``<marker>`` (``COVE-GUEST-UP``)        all of the above done, acpid and httpd running;
                                          an interactive shell (prompt ``cove# ``) follows
  ``COVE-POWER-BUTTON``                   the ACPI power button was pressed: ``poweroff -f``

Services: busybox ``acpid`` powers the guest off on the ACPI power button (QMP
``system_powerdown``); ``httpd -p 80 -h /www`` serves /www/index.html, which holds the
marker. The shell on ttyS0 has job control and is respawned when it exits.

Install flow (``install_init``, inside an ISO from ``build_iso`` labelled COVE_INSTALL):
a record ``COVE-DATA <token>`` at ``data_offset_mib`` MiB into /dev/vda wins (booted from
the disk); else the CD with the installer label is copied onto a blank /dev/vda (the
first MiB all zeros), the record written after it, and the guest powers off.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from cove.vm.initramfs import (
    Cpio,
    add_modules,
    busybox_base,
    write,
)
from cove.vm.kernel import Kernel, fetch, installed

KERNEL_CACHE = Path(os.environ.get("COVE_TEST_KERNELS", "/var/cache/cove-test-kernels"))
BUSYBOX = Path("/bin/busybox")
MARKER = "COVE-GUEST-UP"
INSTALL_LABEL = "COVE_INSTALL"
DATA_OFFSET_MIB = 900  # past any installer ISO, inside a 1 GiB disk
DEFAULT_TOKEN = "cove"
# The kernel's cmdline for the guests: serial console, fewer kernel lines on it, a panic
# (a broken /init) reboots, which ends QEMU under -no-reboot instead of hanging a test.
CMDLINE = "console=ttyS0 quiet panic=-1"

# What the cloud kernel builds as modules for cove's q35 machine (its config: VIRTIO_PCI,
# VIRTIO_BLK, SCSI_VIRTIO, BLK_DEV_SR, VIRTIO_NET, ACPI_BUTTON, INPUT_EVDEV, ISO9660_FS
# are all =m); /init loads them in this order, each after its dependencies. The 8250
# serial console, ext4, the i8042 keyboard and the VGA text console are built in; the
# kernel has no DRM, so ``-device VGA`` shows the text console to screendumps as it is.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",  # -device virtio-blk-pci: /dev/vda, /dev/vdb ...
    "virtio_scsi",  # -device virtio-scsi-pci
    "sr_mod",  # -device scsi-cd: /dev/sr0, /dev/sr1
    "isofs",  # mounting the cloud-init seed
    "virtio_net",  # -device virtio-net-pci: eth0
    "virtio_rng",  # -device virtio-rng-pci, which cove adds to every VM
    "button",  # the ACPI power button behind QMP system_powerdown ...
    "evdev",  # ... which acpid reads as /dev/input/event* (there is no /proc/acpi/event)
)
# scsi_mod scans hosts asynchronously (SCSI_SCAN_ASYNC=y): with scan=sync, insmod
# virtio_scsi returns with its CD-ROMs found, so /dev/sr* exist once sr_mod is loaded too
# and /init need not poll for them. (insmod, unlike modprobe, ignores scsi_mod.scan= on
# the kernel command line, hence the parameter in load-order.)
MODULE_PARAMS: Mapping[str, str] = {"scsi_mod": "scan=sync"}

_NO_FILES: Mapping[str, bytes] = MappingProxyType({})


# --- the kernel ---------------------------------------------------------------------------


@functools.cache
def test_kernel() -> Kernel:
    """The cloud kernel under KERNEL_CACHE, downloaded there on first use."""
    have = installed(str(KERNEL_CACHE))
    if have:
        return have[-1]
    return fetch(str(KERNEL_CACHE))


# pytest would collect this as a test in every module that imports it by name
setattr(test_kernel, "__test__", False)  # noqa: B010 - mypy rejects the attribute spelled out


# --- the initramfs ------------------------------------------------------------------------

# udhcpc's hook: it runs this with $1 = deconfig|bound|renew|leasefail|nak and the lease in
# the environment ($ip, $mask as a prefix length, $router, $dns).
UDHCPC_SCRIPT = """\
#!/bin/busybox sh
case "$1" in
deconfig)
	ip addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	ip route del default 2>/dev/null
	for r in $router; do ip route add default via "$r" dev "$interface"; break; done
	: >/etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	[ "$1" = bound ] && echo "COVE-NET $interface $ip/${mask:-24}" >/dev/console
	;;
esac
exit 0
"""

# busybox acpid turns the power button's input event into "PWRF 00000080" and runs
# /etc/acpi/PWRF/00000080; poweroff -f because pid 1 is a shell, not an init that would
# act on poweroff's signal.
POWER_BUTTON_SCRIPT = """\
#!/bin/busybox sh
echo COVE-POWER-BUTTON >/dev/console
sync
poweroff -f
"""


def build_initramfs(
    dest: Path,
    kernel: Kernel,
    init: str,
    *,
    modules: Sequence[str] = GUEST_MODULES,
    files: Mapping[str, bytes] = _NO_FILES,
) -> Path:
    """Write a gzip newc initramfs to ``dest``: busybox and its applets in /bin, ``init``
    as /init, ``modules`` (with dependencies) under /lib/modules with their insmod order
    in /lib/modules/load-order (lines of ``FILE [PARAMS]``), the udhcpc and power button
    hooks, then ``files`` (path: bytes; ``#!`` ones executable), which win over all else.
    """
    cpio = Cpio()
    busybox_base(cpio, BUSYBOX)
    for d in ("www", "var/log"):
        cpio.dir(d)
    cpio.symlink("var/run", "/run")
    add_modules(cpio, kernel, modules, MODULE_PARAMS)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWER_BUTTON_SCRIPT.encode(), 0o755)
    cpio.file("etc/hostname", b"cove-guest\n")
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\n")
    cpio.file("init", init.encode(), 0o755)
    for name, data in files.items():
        cpio.file(name, data, 0o755 if data.startswith(b"#!") else 0o644)
    write(cpio, dest)
    return Path(dest)


# --- /init --------------------------------------------------------------------------------

_PREAMBLE = r"""#!/bin/busybox sh
# /init of the cove test guest, generated by tests/vmguest.py (see its docstring)
export PATH=/bin HOME=/root TERM=vt100 PS1='cove# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
hostname -F /etc/hostname

# cmdarg NAME: the value of NAME=VALUE on the kernel command line (no globbing of it)
cmdarg() (
	set -f
	for w in $(cat /proc/cmdline); do
		case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
	done
	return 1
)

# say LINE: a contract line on the console, and on the VGA text console too when there is
# one the kernel's console is not already on, for screendumps
say() {
	echo "$*"
	case "$(cat /sys/class/tty/console/active 2>/dev/null)" in
	*tty0* | *tty1*) ;;
	*) echo "$*" 2>/dev/null >/dev/tty1 ;;
	esac
}

# isolabel DEV: the ISO 9660 volume label of a CD (or disk), failing when it has none
isolabel() {
	[ -b "$1" ] || return 1
	[ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || return 1
	dd if="$1" bs=8 skip=4101 count=4 2>/dev/null | sed 's/ *$//'
}

while read -r mod params; do
	[ -n "$mod" ] || continue
	insmod "/lib/modules/$mod" $params || echo "cove-guest: insmod $mod failed"
done </lib/modules/load-order

ip link set lo up
acpid -c /etc/acpi -l /var/log/acpid.log
"""

_INSTALL = r"""
# blank DEV: its first MiB is all zeros
blank() { [ "$(dd if="$1" bs=64k count=16 2>/dev/null | tr -d '\000' | wc -c)" = 0 ]; }
DATA_SECTOR=$((@OFFSET@ * 2048))
record=
if [ -b /dev/vda ]; then
	record=$(dd if=/dev/vda bs=512 skip=$DATA_SECTOR count=1 2>/dev/null | tr -d '\000' | head -n 1)
fi
case "$record" in
"COVE-DATA "*)
	say "BOOTED-FROM-DISK $record"
	;;
*)
	installer=
	for cd in /dev/sr0 /dev/sr1; do
		[ "$(isolabel $cd)" = @LABEL@ ] && installer=$cd && break
	done
	if [ -z "$installer" ]; then
		say "INSTALL-SKIPPED: no CD labelled @LABEL@ and no record on /dev/vda"
	elif [ ! -b /dev/vda ] || ! blank /dev/vda; then
		say "INSTALL-SKIPPED: /dev/vda is missing or not blank"
	elif [ "$(cat /sys/block/vda/size)" -le $((DATA_SECTOR + 1)) ]; then
		say "INSTALL-FAILED: /dev/vda is smaller than @OFFSET@ MiB"
	else
		token=$(cmdarg cove.token) || token=@TOKEN@
		dd if=$installer of=/dev/vda bs=1M conv=fsync 2>/dev/null
		echo "COVE-DATA $token" |
			dd of=/dev/vda bs=512 seek=$DATA_SECTOR conv=notrunc,fsync 2>/dev/null
		sync
		say INSTALLED
		sleep 1  # let the serial port drain before the machine goes away
		poweroff -f
	fi
	;;
esac
"""

_BODY = r"""
for cd in /dev/sr0 /dev/sr1; do
	label=$(isolabel $cd) || continue
	case "$label" in cidata|CIDATA) ;; *) continue ;; esac
	mkdir -p /mnt/cidata
	mount -t iso9660 -o ro $cd /mnt/cidata || continue
	say "CIDATA-LABEL=$label"
	(cd /mnt/cidata && find . -type f | sort | while read -r f; do
		say "CIDATA-FILE ${f#./} $(md5sum <"$f" | cut -d' ' -f1)"
	done)
	break
done

addr=$(cmdarg cove.ip)
dhcp=$(cmdarg cove.dhcp)
if [ -n "$addr" ] || [ "$dhcp" = 1 ]; then
	n=0
	while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do usleep 100000; n=$((n + 1)); done
	ip link set eth0 up
fi
if [ -n "$addr" ]; then
	ip addr add "$addr" dev eth0
	gw=$(cmdarg cove.gw) && ip route add default via "$gw"
	dns=$(cmdarg cove.dns) && echo "nameserver $dns" >/etc/resolv.conf
	say "COVE-NET eth0 $addr"
elif [ "$dhcp" = 1 ]; then
	# -b: to the background once bound (the hook prints COVE-NET) or after 10 tries
	udhcpc -i eth0 -s /etc/udhcpc.script -t 10 -T 1 -b -p /run/udhcpc.pid \
		>/var/log/udhcpc.log 2>&1
fi

[ -e /www/index.html ] || echo "@MARKER@" >/www/index.html
httpd -p 80 -h /www
@EXTRA@
say "@MARKER@"
while :; do
	# cttyhack opens the console's real tty (ttyS0) as the controlling tty: job control
	setsid cttyhack sh
	sleep 1
done
"""


def guest_init(
    *,
    marker: str = MARKER,
    install: bool = False,
    install_label: str = INSTALL_LABEL,
    data_offset_mib: int = DATA_OFFSET_MIB,
    token: str = DEFAULT_TOKEN,
    extra: str = "",
) -> str:
    """The /init script of the module docstring's contract. ``install`` adds the install
    flow before everything else; ``extra`` is shell run just before the marker."""
    for what, value in (("marker", marker), ("install_label", install_label), ("token", token)):
        if not value or any(c.isspace() or c in "\"'`$\\" for c in value):
            raise ValueError(f"{what} {value!r}: want one word without quotes or $")
    script = _PREAMBLE
    if install:
        script += (
            _INSTALL.replace("@OFFSET@", str(int(data_offset_mib)))
            .replace("@LABEL@", install_label)
            .replace("@TOKEN@", token)
        )
    return script + _BODY.replace("@MARKER@", marker).replace("@EXTRA@", extra)


def install_init(
    *,
    marker: str = MARKER,
    install_label: str = INSTALL_LABEL,
    data_offset_mib: int = DATA_OFFSET_MIB,
    token: str = DEFAULT_TOKEN,
    extra: str = "",
) -> str:
    """``guest_init(install=True, ...)``: installs from the CD onto /dev/vda, or boots on
    from a disk that has been installed."""
    return guest_init(
        marker=marker,
        install=True,
        install_label=install_label,
        data_offset_mib=data_offset_mib,
        token=token,
        extra=extra,
    )


# --- the installer ISO --------------------------------------------------------------------


def _grub_word(word: str) -> str:
    """One argument for grub.cfg: its script language quotes like sh."""
    safe = all(c.isalnum() or c in "-_.,:/=@+%" for c in word)
    return word if safe else "'" + word.replace("'", "'\\''") + "'"


def build_iso(
    dest: Path, kernel: Path, initrd: Path, cmdline: str, *, label: str = INSTALL_LABEL
) -> Path:
    """A hybrid BIOS GRUB image (grub-mkrescue) that boots ``kernel`` + ``initrd`` with
    ``cmdline`` on the serial console, from a CD and from a disk it was dd'ed onto: grub
    finds its files by volume label, never by device."""
    args = " ".join(_grub_word(w) for w in shlex.split(cmdline))
    cfg = f"""\
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set default=0
search --no-floppy --label {label} --set=root
menuentry cove {{
	linux /boot/vmlinuz {args}
	initrd /boot/initrd.gz
}}
"""
    with tempfile.TemporaryDirectory(prefix="cove-iso-") as tmp:
        tree = Path(tmp) / "tree"
        (tree / "boot" / "grub").mkdir(parents=True)
        shutil.copyfile(kernel, tree / "boot" / "vmlinuz")
        shutil.copyfile(initrd, tree / "boot" / "initrd.gz")
        (tree / "boot" / "grub" / "grub.cfg").write_text(cfg)
        proc = subprocess.run(
            ["grub-mkrescue", "--directory=/usr/lib/grub/i386-pc", "--locales=", "--fonts=",
             "--themes=", "--compress=xz", "-o", str(dest), str(tree), "--", "-volid", label],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"grub-mkrescue failed: {proc.stderr.strip()}")
    return Path(dest)


def install_kernel(root: Path) -> Kernel:
    """The test kernel where ``cove vm kernel fetch`` puts it in state root ``root`` (hard
    links: no copy), so the KVM probe and ``run --vm`` find it."""
    k = test_kernel()
    dest = Path(root) / "kernels" / k.release
    dest.parent.mkdir(parents=True, exist_ok=True)
    # hard links need one filesystem: where the state root is elsewhere (a tmpfs /tmp, as in
    # scripts/fresh-root-check.sh, Debian 13 and many setups) the kernel is copied
    same_fs = os.stat(k.dir).st_dev == os.stat(dest.parent).st_dev
    subprocess.run(["cp", "-al" if same_fs else "-a", k.dir, str(dest)], check=True)
    return k


def leftovers(ids: Sequence[str], *needles: str) -> list[str]:
    """What of VMs ``ids`` outlived them: runtime dirs, taps, and processes whose command
    line names one of them (or a ``needle``, such as the state root)."""
    found = [p for i in ids for p in (f"/run/cove-vm/{i[:20]}", f"/sys/class/net/ctap{i[:10]}")
             if os.path.exists(p)]  # fmt: skip
    marks = [i[:20].encode() for i in ids] + [n.encode() for n in needles]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if any(m in cmdline for m in marks):
                found.append(f"process {proc.name}: {cmdline[:120]!r}")
    return found
