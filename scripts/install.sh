#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for cove (as root) and run the demo.
#   scripts/install.sh            install everything, then run scripts/demo.sh
#   scripts/install.sh --no-demo  install only (what CI does before the tests)
set -euo pipefail
# what this makes (the venv, its packages) is readable and runnable by every account
umask 022
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${COVE_VENV:-/opt/cove/venv}
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs system packages)" >&2
    exit 1
fi

# System packages: the tools cove drives. Test and benchmark peers come from
# scripts/test-deps.sh, which scripts/test.sh runs.
packages=(
    python3 python3-venv python3-pip ca-certificates
    tar gzip xz-utils zstd util-linux iproute2
    busybox-static   # the demo's base image
    libseccomp2 tini # seccomp (through pyseccomp), --init
    procps           # cove top runs ps
    iptables         # NAT, published ports, network isolation (iptables-restore)
    qemu-system-x86 qemu-utils  # the VMM of cove vm, qemu-img for disks
    cpio             # the demo and run --vm build initramfs images
    uidmap           # rootless: newuidmap/newgidmap map a user's /etc/subuid range
    slirp4netns      # rootless: user-mode networking and published ports
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# rootless: slirp4netns opens /dev/net/tun in the user's own network namespace; udev makes
# it 0666 on a standard system (a tun device still needs CAP_NET_ADMIN in its namespace),
# a host without udev (containers, microVMs) leaves it 0600
[ -c /dev/net/tun ] && chmod 0666 /dev/net/tun
# rootless run --vm volumes: QEMU's virtiofsd writes its pidfile in /run/virtiofsd, which
# cove covers with the user's own directory in virtiofsd's mount namespace: it must exist
# (recreated at boot by systemd-tmpfiles where the host has it)
if [ -d /etc/tmpfiles.d ]; then
    echo "d /run/virtiofsd 0700 root root -" >/etc/tmpfiles.d/cove-virtiofsd.conf
fi
mkdir -p -m 0700 /run/virtiofsd

# The Python package, in its own venv (Debian's python3 is externally managed), built on the
# distribution's interpreter whatever PATH says: a private build ahead on PATH (pyenv under
# /root) is neither what users run nor executable by other accounts. An existing venv made from
# another interpreter (or another major.minor) is rebuilt in place.
python=/usr/bin/python3
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: cove needs Python 3.11 or newer; this system's is $("$python" -V 2>&1)" >&2
    exit 1
}
same_base() {  # does the venv in $1 come from $python? (its pyvenv.cfg: home, version)
    [ -x "$1/bin/python" ] && [ -r "$1/pyvenv.cfg" ] || return 1
    "$python" -I - "$1/pyvenv.cfg" <<'PY'
import os, sys
cfg = {}
with open(sys.argv[1]) as f:
    for line in f:
        key, eq, value = line.partition("=")
        if eq:
            cfg[key.strip()] = value.strip()
home = os.path.realpath(cfg.get("home", ""))
minor = cfg.get("version", cfg.get("version_info", "")).split(".")[:2]
ok = home == os.path.dirname(os.path.realpath(sys.executable)) and minor == [
    str(v) for v in sys.version_info[:2]
]
sys.exit(0 if ok else 1)
PY
}
if [ ! -e "$venv/pyvenv.cfg" ]; then
    "$python" -m venv "$venv"
elif ! same_base "$venv"; then
    echo "install.sh: $venv was not made from $python ($("$python" -V)): rebuilding it"
    "$python" -m venv --clear "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# Other accounts run the same venv (rootless cove). An editable install makes them import this
# checkout, so it is one only where they can read it; a checkout under /root (0700) is copied
# into the venv instead.
if setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$python" -I -c "import sys; sys.path.insert(0, '$here'); import cove" 2>/dev/null; then
    # compat mode: a plain path in a .pth file, no import-hook finder on every start (~10 ms)
    "$venv/bin/python" -m pip install -q -e "$here[chart]" --config-settings editable_mode=compat
    # bytecode for the package, as a wheel install writes it and an editable one does not:
    # without fresh .pyc every start compiles the start path again in memory (tens of ms;
    # more where PYTHONDONTWRITEBYTECODE is set or the checkout is not writable by the user
    # running cove). Written as the checkout's owner: root-owned __pycache__ in a developer's
    # checkout could not be rewritten by their own (rootless) cove after their next edit.
    # Idempotent: compileall skips modules whose .pyc matches the source.
    owner_uid=$(stat -c %u "$here")
    owner_gid=$(stat -c %g "$here")
    if [ "$owner_uid" != 0 ]; then
        # what an earlier install.sh (run as root) left there goes back to the owner
        find "$here/cove" -name __pycache__ -type d -user 0 \
            -exec chown -R "$owner_uid:$owner_gid" {} + 2>/dev/null || true
    fi
    setpriv --reuid="$owner_uid" --regid="$owner_gid" --clear-groups \
        "$venv/bin/python" -m compileall -q -j 0 "$here/cove" >/dev/null ||
        echo "install.sh: note: could not precompile $here/cove as uid $owner_uid" >&2
else
    echo "install.sh: other accounts cannot read $here: installing a copy of it into $venv"
    "$venv/bin/python" -m pip uninstall -q -y cove 2>/dev/null || true
    # pip compiles the copy's bytecode as it installs it (root-owned in root's venv, as the
    # rest of it): nothing to precompile here
    "$venv/bin/python" -m pip install -q "$here[chart]"
fi
ln -sf "$venv/bin/cove" /usr/local/bin/cove
# the runc-compatible runtime: one executable path, as containerd's BinaryName and podman's
# --runtime want it
ln -sf "$venv/bin/cove-runc" /usr/local/bin/cove-runc
echo "installed: $(/usr/local/bin/cove --version) ($venv, $("$venv/bin/python" -V))"
# the boot-time restart of --restart always/unless-stopped containers: installed, not enabled
# (as Podman ships podman-restart.service); `systemctl enable cove-restart.service` turns it on
if [ -d /run/systemd/system ] && [ -d /etc/systemd/system ]; then
    install -m 0644 "$here/scripts/systemd/cove-restart.service" /etc/systemd/system/
    systemctl daemon-reload 2>/dev/null || true
fi
# every account runs the installed cove (rootless): check it as nobody
if ! setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$venv/bin/python" -I -c 'import cove' 2>/dev/null; then
    echo "install.sh: note: other accounts cannot run $venv (a directory on the way is not" \
        "searchable by them); only root can run cove" >&2
fi

if [ $demo = 1 ]; then
    exec "$here/scripts/demo.sh"
fi
