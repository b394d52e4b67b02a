#!/usr/bin/env bash
# Peers needed only by the tests and benchmarks (not by cove's users): installed by
# scripts/test.sh before it runs the suite, so the user's install (scripts/install.sh) stays lean.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${COVE_VENV:-/opt/cove/venv}

if [ "$(id -u)" != 0 ]; then
    exit 0  # unit tests only: nothing to install
fi
packages=(
    skopeo umoci     # interop tests and benchmarks
    debootstrap      # bench/: a large Debian rootfs
    runc             # the start benchmark's peer
    conmon           # bench/lifecycle.py's peer for cove's per-container monitor
    iperf3           # bench/net.py
    docker-registry openssl  # registry tests: real registries on 127.0.0.1, test CAs
    grub-pc-bin grub-common xorriso mtools  # the VM tests build a bootable ISO
    golang-github-docker-docker-dev  # Docker's published default seccomp profile (compared)
    git              # test_upgrade.py starts a monitor from the commit before the package move
    qemu-user-static # other CPU architectures (test_crossarch.py): user-mode emulators
    qemu-system-arm qemu-efi-aarch64  # aarch64 guests (test_crossarch.py, bench/crossarch.py)
    docker.io        # cove serve's peer: dockerd 20.10 + CLI 20.10 (tests start their own dockerd)
    containerd       # cove-runc under containerd 1.6 (ctr, the runc v2 shim; tests start their own)
    podman           # cove-runc under podman 4.3 (with conmon)
    crun             # bench/runtime.py's second peer beside runc
    containernetworking-plugins  # CNI bridge/host-local/loopback for the CRI pod-network test
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # dockerd/containerd must never run as services here: the tests start their own dockerd
    # (own --data-root, --exec-root, socket) and stop it. Masked units stop systemd from
    # starting them; a policy-rc.d held only for this install stops invoke-rc.d (sysvinit, chroots).
    for u in docker.service docker.socket containerd.service; do
        [ -e "/etc/systemd/system/$u" ] || { mkdir -p /etc/systemd/system; ln -s /dev/null "/etc/systemd/system/$u"; }
    done
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
    fi
    rc=0
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    [ -z "$policy" ] || rm -f "$policy"
    [ $rc = 0 ] || exit $rc
fi
# and never at boot (sysvinit links): the packages' own start scripts stay disabled
for s in docker containerd; do
    [ ! -e "/etc/init.d/$s" ] || update-rc.d "$s" disable >/dev/null 2>&1 || true
done
if [ -x "$venv/bin/python" ]; then
    # the test tools: pytest, ruff, mypy (the user's install has only cove and its chart extra)
    "$venv/bin/python" -m pip install -q -e "$here[test,chart]" \
        --config-settings editable_mode=compat >/dev/null 2>&1
fi
