#!/usr/bin/env bash
# The README on a fresh machine: a Debian bookworm minbase root (debootstrap, cached), a clone of
# this repository's HEAD (not the working tree) and ../shared copied in with the machine's apt
# sources, CA bundle and pip configuration, entered with `unshare -m` + pivot_root (not chroot),
# /proc, /sys and /dev bound, /run and /tmp fresh tmpfs; there it runs `bash .ci/run` and reports
# the result with the interpreter version.
#
# As root. It shares the kernel, network namespace, iptables and cgroup trees with this machine:
# run it when no other root tests run (.ci/run runs it after the normal suite).
#   scripts/fresh-root-check.sh [COMMAND...]   another command than `bash .ci/run` (debugging)
#   COVE_FRESH_CACHE=DIR   the cache of the base root and downloaded .debs (/var/cache/cove-fresh-root)
#   COVE_FRESH_MIRROR=URL  the Debian mirror (default: the first bookworm one in this machine's apt sources)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${COVE_SHARED:-$(cd "$here/.." && pwd)/shared}
cache=${COVE_FRESH_CACHE:-/var/cache/cove-fresh-root}
suite=bookworm
# a new week or a change to how the base is built (bump the version) makes a new base root
key="$suite-minbase-$(date -u +%G-w%V)-v1"

log() { echo "fresh-root: $*"; }
die() { echo "fresh-root: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, mounts, pivot_root)"
[ -d "$shared" ] || die "no shared directory at $shared (set COVE_SHARED)"
head=$(git -C "$here" rev-parse --verify HEAD) || die "$here is not a git checkout"
command -v debootstrap >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends debootstrap >/dev/null
}
umask 022
mkdir -p "$cache/runs" "$cache/apt-archives/partial"
start=$SECONDS
command=(bash .ci/run)
[ $# -gt 0 ] && command=("$@")

# --- the mirror: this machine's own (the only package source it may reach) -------------------
mirror=${COVE_FRESH_MIRROR:-$(/usr/bin/python3 -I - "$suite" <<'PY'
import glob, sys
suite = sys.argv[1]
def one_line(path):
    for line in open(path):
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [options]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            yield words[0]
def deb822(path):
    for stanza in open(path).read().split("\n\n"):
        fields, last = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and last:
                fields[last] += " " + line.strip()
            elif ":" in line:
                last, _, value = line.partition(":")
                last = last.strip().lower()
                fields[last] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            yield from fields.get("uris", "").split()
found = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        found += one_line(path)
    except FileNotFoundError:
        pass
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    found += deb822(path)
print(found[0] if found else "")
PY
)}
[ -n "$mirror" ] || die "no '$suite' mirror in /etc/apt/sources.list(.d) (set COVE_FRESH_MIRROR)"

# --- the base root: debootstrap once per key, kept in the cache --------------------------------
base="$cache/base-$key"
exec 9>"$cache/.lock"
flock 9
if [ ! -d "$base" ]; then
    log "building the $suite minbase root from $mirror (cached as $base)"
    t0=$SECONDS
    tmp=$(mktemp -d "$cache/.base-tmp.XXXXXX")
    if ! debootstrap --variant=minbase --cache-dir="$cache/apt-archives" \
        "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
        tail -20 "$cache/debootstrap.log" >&2
        rm -rf --one-file-system "$tmp"
        die "debootstrap failed (log: $cache/debootstrap.log)"
    fi
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    chmod 755 "$tmp"  # like a real /: mktemp made it 0700
    mv "$tmp" "$base"
    for old in "$cache"/base-*; do
        [ "$old" = "$base" ] || rm -rf --one-file-system "$old"
    done
    log "base root built in $((SECONDS - t0)) s"
fi
# runs a killed check left behind (nothing is mounted there: the mounts lived in its namespace)
find "$cache/runs" -mindepth 1 -maxdepth 1 -mmin +720 -exec rm -rf --one-file-system {} +
flock -u 9

# --- this run's root: a copy of the base, then the repository and the machine's configuration --
work=$(mktemp -d "$cache/runs/run.XXXXXX")
root="$work/root"
nsfile="$work/mntns"
cleanup() {
    # processes the check started that are still in its mount namespace (a leaked monitor, say):
    # end them by id, then remove the run's root (mounts were private to that namespace)
    if [ -s "$nsfile" ]; then
        ns=$(cat "$nsfile")
        for p in /proc/[0-9]*; do
            if [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ]; then
                log "ending leftover process ${p#/proc/}: $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)"
                kill -KILL "${p#/proc/}" 2>/dev/null || true
            fi
        done
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP  # so that cleanup runs
cp -a --reflink=auto "$base" "$root"

mkdir -p "$root/src"
git clone -q --no-hardlinks "$here" "$root/src/cove"
git -C "$root/src/cove" checkout -q --detach "$head"
cp -a "$shared" "$root/src/shared"

# apt: the sources, their keys, and the options this machine needs to reach its mirror (files in
# apt.conf.d that no package owns and that set Acquire:: options, e.g. a snapshot's Valid-Until)
# (only this machine's: debootstrap's own sources.list would list the mirror twice)
rm -f "$root/etc/apt/sources.list"
cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/"
if [ -e /etc/apt/sources.list ]; then cp -a /etc/apt/sources.list "$root/etc/apt/"; fi
for d in /etc/apt/trusted.gpg.d /etc/apt/keyrings; do
    [ -d "$d" ] && mkdir -p "$root$d" && cp -a "$d/." "$root$d/"
done
for f in /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] || continue
    dpkg -S "$f" >/dev/null 2>&1 && continue
    grep -q '^[[:space:]]*Acquire' "$f" && cp -a "$f" "$root/etc/apt/apt.conf.d/"
done
# the CA bundle, and the local CAs it was made from (ca-certificates' postinst rebuilds it)
mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
cp -a /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
[ -d /usr/local/share/ca-certificates ] &&
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
# pip: the system, XDG and root's configuration files (PIP_* variables are passed below)
[ -f /etc/pip.conf ] && cp -a /etc/pip.conf "$root/etc/"
[ -d /etc/xdg/pip ] && mkdir -p "$root/etc/xdg" && cp -a /etc/xdg/pip "$root/etc/xdg/"
for d in "$HOME/.config/pip" "$HOME/.pip"; do
    [ -d "$d" ] && mkdir -p "$root/root/${d#"$HOME"/}" && cp -a "$d/." "$root/root/${d#"$HOME"/}/"
done
# the machine image's own docker CLI 28 (/usr/local/bin/docker, no package owns it; see
# shared/notes/engine-api-and-runtime-cli.md): a CI machine has it, a debootstrap root does not
if [ -x /usr/local/bin/docker ] && ! dpkg -S /usr/local/bin/docker >/dev/null 2>&1; then
    mkdir -p "$root/usr/local/bin" && cp -a /usr/local/bin/docker "$root/usr/local/bin/"
fi
# name resolution as on this machine
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/hosts "$root/etc/hosts"

# the environment of a fresh login, plus what this machine uses to reach its registries
envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-true}" COVE_FRESH_ROOT_INSIDE=1)
while IFS= read -r name; do
    envs+=("$name=${!name}")
done < <(compgen -e | grep -E '^(PIP_[A-Z_]+|SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY)$' || true)

log "entering the root (Debian $(cat "$root/etc/debian_version"), repository at $head)"
# Inside a private mount namespace: bind the run's root onto itself (pivot_root needs a mount
# point), the host's /proc, /sys (cgroup trees included) and /dev (kvm, loop, pts) recursively,
# fresh tmpfs on /run and /tmp, a bind of the .deb cache; then pivot_root into it and detach the
# old root, so the namespace's root mount is the fresh root (cove exec relies on that).
set +e
unshare -m --propagation private -- /bin/bash -euo pipefail -c '
root=$1 nsfile=$2 debs=$3; shift 3
readlink /proc/self/ns/mnt >"$nsfile"
mount --bind "$root" "$root"
for d in proc sys dev; do mount --rbind "/$d" "$root/$d"; done
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
# a fresh tmpfs without nodev/nosuid: on Debian 12 /tmp is a directory of the root filesystem
# (device nodes work there, and tests make some)
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/run/lock" "$root/var/cache/apt/archives"
mount --bind "$debs" "$root/var/cache/apt/archives"
cd "$root"
mkdir -p .old-root
pivot_root . .old-root
cd /
umount -l /.old-root
rmdir /.old-root
cd /src/cove
exec env -i "$@"
' fresh-root "$root" "$nsfile" "$cache/apt-archives" "${envs[@]}" "${command[@]}" 2>&1 | tee "$cache/last-run.log"
rc=${PIPESTATUS[0]}
set -e
# .ci/run's own result line inside names the interpreter: "ci: ... (Python 3.11.2, ...)"
py=$(grep -o '^ci: suite .*(Python [0-9.]*' "$cache/last-run.log" | grep -o 'Python [0-9.]*' | tail -1)
secs=$((SECONDS - start))
if [ "$rc" = 0 ]; then
    log "PASSED: bash .ci/run in a fresh $suite root (${py:-Python ?}, $((secs / 60)) min $((secs % 60)) s)"
else
    log "FAILED (exit $rc): bash .ci/run in a fresh $suite root (${py:-Python ?}, $((secs / 60)) min $((secs % 60)) s; log: $cache/last-run.log)"
fi
exit "$rc"
