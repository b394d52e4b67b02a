#!/usr/bin/env bash
# A tour of what cove does today, offline: build a base image from Debian's busybox-static,
# import it, list it, inspect it, save it, load it back, unpack it, run it, build on it.
set -euo pipefail
cove=${COVE:-cove}
root=$(mktemp -d /tmp/cove-demo.XXXXXX)
work=$(mktemp -d /tmp/cove-demo-work.XXXXXX)
cleanup() {
    "$cove" system reset -f >/dev/null 2>&1
    rm -rf "$root" "$work"
}
trap cleanup EXIT
export COVE_ROOT=$root

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh echo cat ls uname sleep hostname; do ln -s busybox "$work/rootfs/bin/$applet"; done
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
step "$cove" run -d --name ticker demo/busybox:1 \
    sh -c 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.2; done'
sleep 1
step "$cove" ps
step "$cove" logs --tail 2 ticker
step "$cove" exec ticker hostname
step "$cove" stop -t 1 ticker
step "$cove" ps -a
step "$cove" rm ticker

# cove build: a Dockerfile on top of the busybox image, then again from the cache
mkdir -p "$work/app"
printf 'echo "built by cove: $(cat /etc/greeting)"\n' > "$work/app/hello.sh"
cat > "$work/app/Dockerfile" <<'EOF'
FROM demo/busybox:1
ARG GREETING=hello
COPY hello.sh /app/hello.sh
RUN echo "$GREETING from RUN" > /etc/greeting
CMD ["sh", "/app/hello.sh"]
EOF
step "$cove" build --progress plain -t demo/app:1 "$work/app"
step "$cove" build --progress plain -t demo/app:1 "$work/app"
step "$cove" run --rm demo/app:1
shared=$(cd "$(dirname "$0")/.." && pwd)/../shared/images/alpine-3.20
if [ -f "$shared/Dockerfile" ]; then
    step "$cove" build -q -t alpine:3.20 "$shared"
    step "$cove" run --rm alpine:3.20 cat /etc/alpine-release
fi

# a real VM: Debian's cloud kernel (fetched through apt, not installed) and a busybox initramfs
step "$cove" vm kernel fetch
kernel=$("$cove" vm kernel ls | head -1 | cut -f2)
mkdir -p "$work/initrd/bin"
cp /bin/busybox "$work/initrd/bin/busybox"
cat > "$work/initrd/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc 2>/dev/null || { /bin/busybox mkdir -p /proc; /bin/busybox mount -t proc proc /proc; }
/bin/busybox echo "hello from a cove vm: kernel $(/bin/busybox uname -r), $(/bin/busybox nproc) cpu(s)"
/bin/busybox poweroff -f
EOF
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"
step "$cove" vm create demo-vm --memory 256M --cpus 1 --kernel "$kernel" --initrd "$work/initrd.gz" \
    --append "quiet panic=-1"
step "$cove" vm start demo-vm
for _ in $(seq 120); do
    "$cove" vm logs demo-vm | grep -q "hello from a cove vm" && break
    sleep 0.5
done
step "$cove" vm logs demo-vm
sleep 1
step "$cove" vm ls
step "$cove" vm rm -f demo-vm
echo
echo "demo done: images, containers, builds and a VM work."
