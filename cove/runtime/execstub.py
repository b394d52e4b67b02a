"""The last step into a container: a tiny static program in a sealed memfd execs the
container's process, so cove's interpreter is never what the container's first execve sees.

Until its final execve a container process is a fork of cove's host Python. If that execve
ran the container's file directly, an entrypoint script starting ``#!/proc/self/exe`` would
run the host interpreter inside the container (the kernel opens the script's interpreter
while /proc/self/exe still names cove's binary), and a container process could open that
binary through /proc/PID/exe and write to it (the CVE-2019-5736 class). runc's "runc-dmz"
answer, carried over: cove execs (execveat, AT_EMPTY_PATH) a ~250-byte program written
into a memfd sealed against every change (F_SEAL_SEAL|SHRINK|GROW|WRITE); that program
then execve()s the path Python resolved. At that execve /proc/self/exe is the sealed memfd:
no host file, nothing to overwrite. A script whose interpreter reaches the stub again
(``#!/proc/self/exe``) finds no marker in its argv and is refused (exit 126).

The stub's argv is ``[MARKER, path, argv0, argv1, ...]``; MARKER starts with a space, which
a ``#!`` line can never give (the kernel ends the interpreter's name at the first blank).
A failed execve is reported to P as the 4-byte errno on the setup socket, which the stub
holds open (not close-on-exec) until it marks it close-on-exec just before that execve, so
P still reads EOF on success and Docker's 126/127 messages on failure.

Only x86_64 has a stub yet; other machines are refused rather than run from the host's
interpreter (one ``_TEXT`` builder per architecture: aarch64 goes next to x86_64).

Imported before the container's root changes (init.py imports it): nothing here may import
lazily, the host's Python library is out of reach by then.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from typing import NoReturn

MARKER = " cove-exec"  # a #! line cannot produce an argv[0] that starts with a blank
_REFUSAL = b"cove: the runtime's exec stub cannot be run from a container (refused)\n"
_BASE = 0x400000
_HEADERS = 64 + 56


class ExecError(Exception):
    """The container's command cannot be exec'd; ``code`` is Docker's exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def exec_error(argv0: str, err: int) -> ExecError:
    """Docker's message and exit status for execve's errno ``err`` on ``argv0``."""
    if err in (errno.ENOENT, errno.ENOTDIR):
        where = "" if "/" in argv0 else " in $PATH"
        return ExecError(f'exec: "{argv0}": executable file not found{where}', 127)
    if err in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR):
        return ExecError(f'exec: "{argv0}": permission denied', 126)
    return ExecError(f'exec: "{argv0}": {os.strerror(err)}', 126)


def resolve(argv0: str, env: dict[str, str]) -> str:
    """The file execvp(3) would run for ``argv0`` with ``env``'s PATH (relative names from
    the current directory), checked as the caller's credentials; raises ExecError.

    As glibc: a candidate that does not exist is skipped, one that exists but cannot be
    executed is remembered (EACCES) and the search goes on.
    """
    if not argv0:
        raise exec_error(argv0, errno.ENOENT)
    candidates = [argv0] if "/" in argv0 else [
        os.path.join(d or ".", argv0) for d in os.get_exec_path(env)
    ]  # fmt: skip
    failure = errno.ENOENT
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR) and failure == errno.ENOENT:
                failure = e.errno or errno.EACCES
            continue
        if stat.S_ISDIR(st.st_mode):
            failure = errno.EACCES if failure == errno.ENOENT else failure
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK, effective_ids=True):
            return path
        failure = errno.EACCES if failure == errno.ENOENT else failure
    raise exec_error(argv0, failure)


def _x86_64(report_fd: int) -> bytes:
    """execve(argv[1], argv + 2, envp) once argv[0] is the marker; errno to ``report_fd``."""
    fd = struct.pack("<I", report_fd)
    code = bytearray()
    code += b"\x48\x8b\x0c\x24"  # 00 mov rcx, [rsp]              argc
    code += b"\x48\x83\xf9\x03"  # 04 cmp rcx, 3                  marker, path, argv0
    code += b"\x7c\x00"  # 08 jl refuse (patched)
    jl_at = len(code) - 1
    code += b"\x48\x8b\x44\x24\x08"  # 0a mov rax, [rsp+8]      argv[0]
    code += b"\x80\x38\x20"  # 0f cmp byte [rax], ' '
    code += b"\x75\x00"  # 12 jne refuse (patched)
    jne_at = len(code) - 1
    # fcntl(report_fd, F_SETFD, FD_CLOEXEC): P must read EOF once the final execve works
    code += b"\xbf" + fd  # mov edi, report_fd
    code += b"\xbe\x02\x00\x00\x00"  # mov esi, F_SETFD
    code += b"\xba\x01\x00\x00\x00"  # mov edx, FD_CLOEXEC
    code += b"\xb8\x48\x00\x00\x00"  # mov eax, SYS_fcntl
    code += b"\x0f\x05"  # syscall
    code += b"\x48\x85\xc0"  # test rax, rax
    code += b"\x78\x00"  # js failed (patched)
    js_at = len(code) - 1
    code += b"\x48\x8b\x0c\x24"  # mov rcx, [rsp]
    code += b"\x48\x8b\x7c\x24\x10"  # mov rdi, [rsp+16]       argv[1]: the resolved path
    code += b"\x48\x8d\x74\x24\x18"  # lea rsi, [rsp+24]       argv + 2
    code += b"\x48\x8d\x54\xcc\x10"  # lea rdx, [rsp+rcx*8+16] envp
    code += b"\xb8\x3b\x00\x00\x00"  # mov eax, SYS_execve
    code += b"\x0f\x05"  # syscall
    # failed: rax = -errno; write the errno (4 bytes) to report_fd, exit 127 or 126
    code[js_at] = len(code) - (js_at + 1)
    code += b"\xf7\xd8"  # neg eax
    code += b"\x89\x04\x24"  # mov [rsp], eax
    code += b"\xbf" + fd  # mov edi, report_fd
    code += b"\x48\x89\xe6"  # mov rsi, rsp
    code += b"\xba\x04\x00\x00\x00"  # mov edx, 4
    code += b"\xb8\x01\x00\x00\x00"  # mov eax, SYS_write
    code += b"\x0f\x05"  # syscall
    code += b"\x8b\x04\x24"  # mov eax, [rsp]
    code += b"\xbf\x7e\x00\x00\x00"  # mov edi, 126
    code += b"\x83\xf8\x02"  # cmp eax, ENOENT
    code += b"\x74\x05"  # je notfound
    code += b"\x83\xf8\x14"  # cmp eax, ENOTDIR
    code += b"\x75\x05"  # jne out
    code += b"\xbf\x7f\x00\x00\x00"  # notfound: mov edi, 127
    code += b"\xb8\xe7\x00\x00\x00"  # out: mov eax, SYS_exit_group
    code += b"\x0f\x05"  # syscall
    refuse = len(code)
    code[jl_at] = refuse - (jl_at + 1)
    code[jne_at] = refuse - (jne_at + 1)
    code += b"\xbf\x02\x00\x00\x00"  # refuse: mov edi, 2
    lea_at = len(code)
    code += b"\x48\x8d\x35\x00\x00\x00\x00"  # lea rsi, [rip+message] (patched)
    code += b"\xba" + struct.pack("<I", len(_REFUSAL))  # mov edx, len
    code += b"\xb8\x01\x00\x00\x00"  # mov eax, SYS_write
    code += b"\x0f\x05"  # syscall
    code += b"\xbf\x7e\x00\x00\x00"  # mov edi, 126
    code += b"\xb8\xe7\x00\x00\x00"  # mov eax, SYS_exit_group
    code += b"\x0f\x05"  # syscall
    struct.pack_into("<i", code, lea_at + 3, len(code) - (lea_at + 7))
    code += _REFUSAL
    return _elf64(bytes(code), 62)  # EM_X86_64


_TEXT: dict[str, Callable[[int], bytes]] = {"x86_64": _x86_64}


def _elf64(code: bytes, machine: int) -> bytes:
    """A static little-endian ELF64 executable: one read+execute PT_LOAD of the whole file,
    entry right after the headers (the layout of cove/vm/setids.py's program)."""
    size = _HEADERS + len(code)
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack(
            "<HHIQQQIHHHHHH", 2, machine, 1, _BASE + _HEADERS, 64, 0, 0, 64, 56, 1, 0, 0, 0
        )
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    return ehdr + phdr + code


def program(report_fd: int, machine: str | None = None) -> bytes:
    """The stub for ``machine`` (this one by default); ExecError where there is none."""
    machine = machine or os.uname().machine
    build = _TEXT.get(machine)
    if build is None:
        raise ExecError(
            f"no exec stub for {machine}: cove will not exec a container process from its "
            "own interpreter (refused)",
            125,
        )
    return build(report_fd)


def sealed_memfd(data: bytes) -> int:
    """A close-on-exec memfd holding ``data``, sealed so nothing can ever change it."""
    fd = os.memfd_create("cove-exec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def exec_via_stub(path: str, args: list[str], env: dict[str, str], report_fd: int) -> NoReturn:
    """Replace this process with the stub, which execs ``path`` with ``args`` and ``env``.

    Invariant: every fd but stdio and ``report_fd`` is closed already; the memfd is
    close-on-exec, so the container's process never holds it.
    """
    fd = sealed_memfd(program(report_fd))
    os.set_inheritable(report_fd, True)  # the stub marks it close-on-exec itself
    argv = [MARKER, path, *args]
    try:
        os.execve(fd, argv, env)  # fexecve: execveat(fd, "", ..., AT_EMPTY_PATH)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOSYS):
            raise
    # a seccomp profile without execveat: the same sealed file through /proc
    os.execve(f"/proc/self/fd/{fd}", argv, env)
