#!/usr/bin/env bash
# A tour of what cove does today, offline: build a base image from Debian's busybox-static,
# import it, list it, inspect it, save it, load it back, unpack it.
set -euo pipefail
cove=${COVE:-cove}
root=$(mktemp -d /tmp/cove-demo.XXXXXX)
work=$(mktemp -d /tmp/cove-demo-work.XXXXXX)
trap 'rm -rf "$root" "$work"' EXIT
export COVE_ROOT=$root

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh echo cat ls uname; do ln -s busybox "$work/rootfs/bin/$applet"; done
echo "demo" > "$work/rootfs/etc/hostname"
tar --numeric-owner -C "$work/rootfs" -czf "$work/busybox.tar.gz" .

step "$cove" import --change 'CMD ["/bin/sh"]' "$work/busybox.tar.gz" demo/busybox:1
step "$cove" images
step "$cove" history demo/busybox:1
step "$cove" image inspect --format '{{.Id}} {{.Architecture}} {{json .Config}}' demo/busybox:1
step "$cove" save -o "$work/busybox.tar" demo/busybox:1
step "$cove" rmi demo/busybox:1
step "$cove" load -i "$work/busybox.tar"
layer=$("$cove" image unpack demo/busybox:1)
step ls -l "$layer/bin"
step "$cove" run --rm demo/busybox:1 sh -c 'echo "hello from pid $$ on $(hostname)"; ls /proc | grep -c "^[0-9]"'
step "$cove" run --rm --memory 64m --cpus 0.5 --hostname demo demo/busybox:1 \
    sh -c 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; uname -n'
echo
echo "demo done: images and containers work. VMs (cove vm) arrive with a later issue."
