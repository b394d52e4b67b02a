"""The guest side of ``cove run --vm``: an initramfs whose /init runs one command of an OCI
image inside a VM and reports back over virtio-serial ports.

The /init below (busybox sh, static) loads the virtio modules, mounts the image's root
file system from /dev/vda (a throw-away qcow2 over the cached ext4 of the image),
prepares /proc, /sys, /dev, the hostname, the network and the shared volumes, then runs
the command through a private copy of busybox (``/.cove``, a tmpfs, so images without a
shell work too) with the run's user, environment and working directory. stdout and
stderr go to the ports ``cove.stdout`` and ``cove.stderr``; ``cove.exit`` gets ``up`` when
the command starts (the agent's first message) and then its exit code; signal names
arriving on ``cove.ctl`` are delivered to the command. Then the guest powers off. What a
run needs (its command, env, user ...) comes in a second cpio appended to the cached
initramfs: ``/cove/config``, a shell file cove writes with every value quoted.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cove.errors import Unsupported
from cove.vm import initramfs
from cove.vm.kernel import Kernel

# q35 + virtio-pci devices; virtiofs for -v; virtio_console for the ports
MODULES = (
    "virtio_pci", "virtio_blk", "virtio_console", "virtio_net", "virtio_rng", "virtiofs"
)  # fmt: skip

INIT = r"""#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r mod params; do
    insmod "/lib/modules/$mod" $params 2>/dev/null
done </lib/modules/load-order
port() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return; }
    done
}
fail() {
    echo "cove-agent: $*" >/dev/console
    [ -n "$EXIT" ] && echo 125 >"$EXIT"
    poweroff -f
}
i=0
while [ -z "$(port cove.exit)" ] && [ $i -lt 200 ]; do sleep 0.01; i=$((i+1)); done
OUT=$(port cove.stdout); ERR=$(port cove.stderr); EXIT=$(port cove.exit); CTL=$(port cove.ctl)
IN=$(port cove.stdin)
[ -n "$OUT" ] && [ -n "$EXIT" ] || fail "no virtio-serial ports"
if grep -qw cove.template /proc/cmdline; then
    # a template (cove.vm.template). What every run does first is done once, here: lo up,
    # busybox copied to a tmpfs that becomes the run's /.cove (under TCG each command
    # costs ~10 ms of the restored run)
    TEMPLATE=1
    ip link set lo up
    mkdir -p /newroot /pre
    mount -t tmpfs -o mode=0755 cove /pre && cp /bin/busybox /pre/busybox
    # the host saves the VM while it waits here, and every copy restored from it goes on
    # below with its own run (a port reads end-of-file until the host connects; header and
    # payload are read in one open: a close drops unread data)
    echo parked >"$EXIT"
    until { read -r what size && [ "$what" = cove-run ] && head -c "$size" >/run/payload; } \
        <"$CTL"; do sleep 0.01; done
    cpio -i -d -u </run/payload 2>/dev/null || fail "cannot unpack the run's config"  # in /
    # the template's clock and CRNG state are every copy's: the host's time, and its bytes
    # credited to the pool with a reseed (cove.vm.fresh)
    /cove/fresh 3>/dev/urandom </cove/fresh.in || fail "cannot set the clock and entropy"
    # the disk behind /dev/vda is this run's, not the template's: drop what the boot's
    # partition scan cached of it
    blockdev --flushbufs /dev/vda
fi
. /cove/config
[ "$COVE_STDIN" = 1 ] || IN=
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || fail "cannot mount the image's root file system"
for d in proc sys dev tmp .cove; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
if [ -x /pre/busybox ]; then
    mount --move /pre /newroot/.cove
else
    mount -t tmpfs -o mode=0755 cove /newroot/.cove
    cp /bin/busybox /newroot/.cove/busybox
fi
cp /cove/setids /newroot/.cove/setids
hostname "$COVE_HOSTNAME"
echo "$COVE_HOSTNAME" >/newroot/etc/hostname 2>/dev/null
printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n' "$COVE_HOSTNAME" \
    >/newroot/etc/hosts 2>/dev/null
[ -n "$TEMPLATE" ] || ip link set lo up
if [ -n "$COVE_ADDR" ]; then
    # a restored VM's NIC has the template's MAC until given the run's
    ip link set eth0 ${COVE_MAC:+address "$COVE_MAC"} up
    ip addr add "$COVE_ADDR" dev eth0
    ip route add default via "$COVE_GW"
    echo "nameserver $COVE_DNS" >/newroot/etc/resolv.conf 2>/dev/null
fi
cove_volumes || fail "cannot mount the volumes"
# signal names from the host go to the command; a port reads end-of-file while the host
# side is not connected, hence the outer loop
if [ -n "$CTL" ]; then
    ( while :; do
        while read -r sig; do
            # a signal that arrives during boot waits for the command to exist
            while [ ! -s /run/cove-child ]; do sleep 0.05; done
            kill -"$sig" "$(cat /run/cove-child)" 2>/dev/null
        done <"$CTL"
        sleep 0.2
    done ) &
fi
# the host sends stdin only once the command's port is open (earlier writes would be lost):
# the port is opened both ways and says so (ports open exclusively; the host is connected)
if [ -n "$IN" ]; then
    exec 3<>"$IN"
    echo ready >&3
fi
# the agent's first message: the guest is up and the command starts now ("up" on the
# exit port, before the exit code); the host times the boot up to here
echo up >"$EXIT"
# in the foreground: a background job would start with SIGINT and SIGQUIT ignored
if [ -n "$IN" ]; then
    ( cove_run ) >"$OUT" 2>"$ERR" <&3 3<&-
else
    ( cove_run ) >"$OUT" 2>"$ERR" </dev/null
fi
code=$?
echo "$code" >"$EXIT"
sync
poweroff -f
"""


# the last step, in the image's root as the run's user: cd, then exec the command by its path
# (busybox's sh would run its own applet for a bare ``ls`` or ``cat``, not the image's)
_EXEC = r"""cd "$0" || exit 126
case "$1" in
*/*) ;;
*)
    found=
    IFS=:
    for d in $PATH; do
        if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then found="$d/$1"; break; fi
    done
    unset IFS
    if [ -z "$found" ]; then
        echo "exec: \"$1\": executable file not found in \$PATH" >&2
        exit 127
    fi
    shift
    set -- "$found" "$@"
    ;;
esac
exec "$@"
"""


@dataclass
class RunConfig:
    """One run's command as the guest must execute it (resolved like the container path)."""

    args: list[str]
    env: list[str]
    cwd: str
    uid: int
    gid: int
    hostname: str
    groups: list[int] = field(default_factory=list)
    address: str = ""  # ADDR/PREFIX on eth0, with gateway and dns
    gateway: str = ""
    dns: str = ""
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)  # (tag, target, ro)
    mac: str = ""  # eth0's address (a restored VM's NIC still has the template's)
    stdin: bool = False  # -i: the command reads the cove.stdin port

    def script(self) -> str:
        q = shlex.quote
        lines = [
            f"COVE_HOSTNAME={q(self.hostname)}",
            f"COVE_ADDR={q(self.address)}",
            f"COVE_GW={q(self.gateway)}",
            f"COVE_DNS={q(self.dns)}",
            f"COVE_MAC={q(self.mac)}",
            f"COVE_STDIN={1 if self.stdin else 0}",
            "cove_volumes() {",
            "    :",
        ]
        for tag, target, ro in self.volumes:
            opts = "-o ro " if ro else ""
            where = "/newroot" + q(target)
            mount = f"mount -t virtiofs {opts}{q(tag)} {where}"
            lines.append(f"    mkdir -p {where} && {mount} || return 1")
        lines.append("}")
        bb = "/.cove/busybox"
        # the working directory is made if missing, as Docker does, before the user switch
        run = [
            # the command keeps this pid through every exec below: the signal relay's target
            "exec", "/bin/busybox", "sh", "-c", 'echo $$ >/run/cove-child; exec "$@"', "cove",
            "chroot", "/newroot", bb, "sh", "-c",
            'mkdir -p "$0" 2>/dev/null; exec "$@"', self.cwd,
            "/.cove/setids",  # groups, gid, uid as the container path sets them (setids.py)
            bb, "env", "-i", *self.env,
            bb, "sh", "-c", _EXEC, self.cwd, *self.args,
        ]  # fmt: skip
        lines.append("cove_run() {")
        lines.append("    " + " ".join(q(a) for a in run))
        lines.append("}")
        return "\n".join(lines) + "\n"


def base_initrd(cache_dir: str, kernel: Kernel, busybox: str | None = None) -> str:
    """The agent's initramfs for ``kernel``, built once and kept (its name says what went
    in: the kernel release, the /init, the module list, the busybox). ``busybox``: a static
    busybox of the guest's architecture when it is not the host's."""
    bb = Path(busybox) if busybox else initramfs.BUSYBOX
    st = bb.stat()
    h = hashlib.sha256(f"{INIT}|{MODULES}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    path = os.path.join(cache_dir, f"agent-{kernel.release}-{h[:16]}.cpio.gz")
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    cpio = initramfs.Cpio()
    initramfs.busybox_base(cpio, bb, initramfs.BUSYBOX if busybox else None)
    initramfs.add_modules(cpio, kernel, MODULES)
    cpio.file("init", INIT.encode(), 0o755)
    tmp = f"{path}.{os.getpid()}.tmp"
    # level 1: the kernel inflates it at every boot; size hardly matters here
    initramfs.write(cpio, tmp, level=1)
    os.replace(tmp, path)
    return path


def run_initrd(base: str, config: RunConfig, dest: str, *, aarch64: bool = False) -> None:
    """The cached initramfs followed by this run's /cove/config: the kernel unpacks
    concatenated archives in order (each gzip member padded to 4 bytes). ``aarch64``: the
    user switch program of an arm64 guest."""
    if aarch64:
        from cove.vm.setids_arm64 import program
    else:
        from cove.vm.setids import program

    cpio = initramfs.Cpio()
    cpio.file("cove/config", config.script().encode())
    cpio.file("cove/setids", program(config.uid, config.gid, config.groups), 0o755)
    with open(base, "rb") as f:
        data = f.read()
    data += b"\0" * (-len(data) % 4)
    with open(dest, "wb") as out:
        out.write(data)
        out.write(cpio.bytes())


def run_message(config: RunConfig, realtime_ns: int, seed: bytes, *, arch: str) -> bytes:
    """What the host sends a VM restored from a template on ``cove.ctl``: the line
    ``cove-run SIZE`` and a newc cpio of SIZE bytes with the run's /cove/config and user
    switch, and the program (``cove.vm.fresh``) with its input that sets the clock to
    ``realtime_ns`` and credits ``seed`` to the guest's entropy pool. ``arch``: the guest's;
    x86-64 only (the programs are x86-64 machine code: refused, never sent to another)."""
    from cove.vm import fresh
    from cove.vm.setids import program

    if arch not in fresh.ARCHES:
        raise Unsupported(f"no vm template run for {arch} guests: the freshness program is "
                          f"built for {', '.join(fresh.ARCHES)} only")  # fmt: skip

    cpio = initramfs.Cpio()
    cpio.file("cove/config", config.script().encode())
    cpio.file("cove/setids", program(config.uid, config.gid, config.groups), 0o755)
    cpio.file("cove/fresh", fresh.program(), 0o755)
    cpio.file("cove/fresh.in", fresh.payload(realtime_ns, seed), 0o600)
    body = cpio.bytes()
    return f"cove-run {len(body)}\n".encode() + body


def cmdline(extra: Sequence[str] = ()) -> str:
    """The guest kernel's command line: serial console for the boot log, no reboot loop,
    and initcalls a one-command VM never needs skipped (measured: ~1 s less under TCG)."""
    return " ".join([
        "console=ttyS0", "quiet", "panic=-1", "cryptomgr.notests", "audit=0",
        "initcall_blacklist=init_kprobe_trace,load_system_certificate_list,crypto_kdf108_init",
        "random.trust_cpu=on", "rcupdate.rcu_expedited=1", "tsc=reliable", "no_timer_check",
        *extra,
    ])  # fmt: skip


def initrd_dir(root: str) -> str:
    return os.path.join(root, "vmroot")


__all__ = [
    "MODULES", "RunConfig", "base_initrd", "cmdline", "initrd_dir", "run_initrd", "run_message"
]  # fmt: skip
