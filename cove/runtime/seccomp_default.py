"""cove's default seccomp profile as one table: an allowlist with Docker's semantics.

Every syscall not allowed by a row below fails with EPERM (the default action). Each row
holds under Docker's conditions (profiles/seccomp in moby): ``caps`` all held (includes.caps),
none of ``unless_caps`` held (excludes.caps), the native architecture in ``arches``
(includes.arches, Docker's names: amd64, x86, x32, arm64, arm, s390x, ppc64le, riscv64, ...)
and not in ``not_arches``, and the running kernel at least ``min_kernel``. Capabilities are
the container's bounding set, as Docker's.

The rows follow moby's current default profile (moby/profiles seccomp/default_linux.go) with
one deliberate difference, ``unshare``, kept behind CAP_SYS_ADMIN (see docs/design.md,
"Seccomp"). Names libseccomp does not know on this host are skipped when the profile is
compiled, so they stay refused; nothing here is allowed because it is unknown.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from cove.sys.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
)

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
DEFAULT_ERRNO = errno.EPERM

# clone(2) flags that make namespaces (include/uapi/linux/sched.h, named in the syscall layer)
NS_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
    | CLONE_NEWPID | CLONE_NEWNET
)  # fmt: skip
AF_VSOCK = 40  # include/linux/socket.h

# Docker's architecture names (libseccomp's) for os.uname().machine
MACHINE_ARCH = {
    "x86_64": "amd64",
    "i386": "x86",
    "i686": "x86",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv8l": "arm",
    "s390x": "s390x",
    "ppc64le": "ppc64le",
    "riscv64": "riscv64",
    "mips64": "mips64",
}

# The filter covers the native architecture and the ones its CPU also executes (archMap):
# without the 32-bit entries, an int 0x80 call would bypass an x86_64-only filter's rules.
ARCH_MAP: dict[str, list[str]] = {
    "amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "mips64": ["SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
    "mips64n32": ["SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
    "mipsel64": ["SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
    "mips3l64n32": ["SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    caps: tuple[str, ...] = ()
    unless_caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    not_arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None
    args: tuple[tuple[int, int, str], ...] = ()  # (index, value, SCMP_CMP_*)
    action: str = ALLOW
    errno_ret: int | None = None


def _w(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Unconditional: what any process may do to itself, its files, its sockets, its children.
BASE = _w("""
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
    chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
    copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
    fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
    flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
    fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv
    futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid
    geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
    getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
    getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
    gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init
    inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
    io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule
    landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
    listen listmount listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr
    lstat lstat64 madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir
    mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify
    mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink
    mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open
    pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64
    prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64
    pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg
    recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename renameat
    renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
    rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
    sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
    sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
    semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
    setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
    setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
    setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64
    statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
    timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
    uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid
    write writev
""")

_S390 = ("s390", "s390x")

RULES: tuple[Rule, ...] = (
    Rule(BASE),
    # since 4.8 ptrace can no longer be used to bypass seccomp (the tracer's changes are
    # re-checked), so tracing one's own children is allowed
    Rule(_w("process_vm_readv process_vm_writev ptrace"), min_kernel=(4, 8)),
    # every address family but AF_VSOCK (host/VM sockets reach outside the container's netns)
    Rule(("socket",), args=((0, AF_VSOCK, "SCMP_CMP_NE"),)),
    # personality: only Linux and Linux32 (with UNAME26), and the query; never the flags
    # that weaken the address space (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ADDR_LIMIT_3GB...)
    *(
        Rule(("personality",), args=((0, value, "SCMP_CMP_EQ"),))
        for value in (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
    ),
    # architecture-specific calls
    Rule(_w("sync_file_range2 swapcontext"), arches=("ppc64le",)),
    Rule(
        _w("arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
        arches=("arm", "arm64"),
    ),
    Rule(("arch_prctl",), arches=("amd64", "x32")),
    Rule(("modify_ldt",), arches=("amd64", "x32", "x86")),
    Rule(_w("s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"), arches=_S390),
    Rule(("riscv_flush_icache",), arches=("riscv64",)),
    # capability-dependent additions: the syscall is the capability's whole point
    Rule(("open_by_handle_at",), caps=("CAP_DAC_READ_SEARCH",)),
    Rule(
        _w("""
            bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
            lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr
            move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname
            sethostname setns syslog umount umount2 unshare
        """),
        caps=("CAP_SYS_ADMIN",),
    ),
    # without CAP_SYS_ADMIN: clone without any namespace flag (s390 swaps the first two
    # arguments), and clone3 (flags in memory, which seccomp cannot read) says ENOSYS so
    # libc falls back to clone
    Rule(
        ("clone",),
        unless_caps=("CAP_SYS_ADMIN",),
        not_arches=_S390,
        args=((0, NS_FLAGS, "SCMP_CMP_MASKED_EQ"),),
    ),
    Rule(
        ("clone",),
        unless_caps=("CAP_SYS_ADMIN",),
        arches=_S390,
        args=((1, NS_FLAGS, "SCMP_CMP_MASKED_EQ"),),
    ),
    Rule(("clone3",), unless_caps=("CAP_SYS_ADMIN",), action=ERRNO, errno_ret=errno.ENOSYS),
    Rule(("reboot",), caps=("CAP_SYS_BOOT",)),
    Rule(("chroot",), caps=("CAP_SYS_CHROOT",)),
    Rule(_w("delete_module init_module finit_module"), caps=("CAP_SYS_MODULE",)),
    Rule(("acct",), caps=("CAP_SYS_PACCT",)),
    Rule(
        _w("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace"),
        caps=("CAP_SYS_PTRACE",),
    ),
    Rule(_w("iopl ioperm"), caps=("CAP_SYS_RAWIO",)),
    Rule(_w("settimeofday stime clock_settime clock_settime64"), caps=("CAP_SYS_TIME",)),
    Rule(("vhangup",), caps=("CAP_SYS_TTY_CONFIG",)),
    Rule(_w("get_mempolicy mbind set_mempolicy set_mempolicy_home_node"), caps=("CAP_SYS_NICE",)),
    Rule(("syslog",), caps=("CAP_SYSLOG",)),
    Rule(("bpf",), caps=("CAP_BPF",)),
    Rule(("perf_event_open",), caps=("CAP_PERFMON",)),
)


def applies(rule: Rule, caps: set[str], arch: str, kernel: tuple[int, int]) -> bool:
    """Docker's includes/excludes: every include holds and no exclude does."""
    if rule.caps and not set(rule.caps) <= caps:
        return False
    if rule.unless_caps and set(rule.unless_caps) & caps:
        return False
    if rule.arches and arch not in rule.arches:
        return False
    if arch in rule.not_arches:
        return False
    return rule.min_kernel is None or kernel >= rule.min_kernel
