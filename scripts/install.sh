#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for cove (as root) and run the demo.
#   scripts/install.sh            install everything, then run scripts/demo.sh
#   scripts/install.sh --no-demo  install only (what CI does before the tests)
set -euo pipefail
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

# The Python package, in its own venv (Debian's python3 is externally managed).
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# compat mode: a plain path in a .pth file, no import-hook finder on every start (~10 ms)
"$venv/bin/python" -m pip install -q -e "$here[chart]" --config-settings editable_mode=compat
ln -sf "$venv/bin/cove" /usr/local/bin/cove
echo "installed: $(/usr/local/bin/cove --version) ($venv)"

if [ $demo = 1 ]; then
    exec "$here/scripts/demo.sh"
fi
