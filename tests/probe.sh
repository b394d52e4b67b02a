#!/bin/sh
# Prints, from inside a container, what it sees: one KEY=VALUE per line (busybox sh is enough).
echo "pid=$$"
echo "hostname=$(hostname)"
for ns in /proc/self/ns/*; do echo "ns_$(basename "$ns")=$(readlink "$ns")"; done
grep -E '^(CapEff|CapBnd|CapPrm|Seccomp|NoNewPrivs|Uid|Gid|Groups):' /proc/self/status \
    | sed 's/:[[:space:]]*/=/; s/[[:space:]]\+/ /g'
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "ifaces=$(ls /sys/class/net | tr '\n' ' ')"
echo "mounts=$(wc -l < /proc/self/mounts)"
echo "root_mount=$(awk '$2 == "/" {print $3}' /proc/self/mounts)"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ' | tr '\n' ';')"
for f in memory/memory.limit_in_bytes memory.max pids/pids.max pids.max cpu/cpu.cfs_quota_us cpu.max; do
    [ -r "/sys/fs/cgroup/$f" ] && echo "cg_$(echo "$f" | tr './' '__')=$(cat "/sys/fs/cgroup/$f")"
done
echo "cgroup=$(cat /proc/self/cgroup | tr '\n' ';')"
echo "probe=done"
