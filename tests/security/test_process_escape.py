"""A container's process must not reach cove's host interpreter, nor a host directory.

(a) The container's first execve (and exec's, and a health check's) used to come straight
from a fork of cove's Python: an entrypoint script starting ``#!/proc/self/exe`` ran the
host's interpreter in the container (CVE-2019-5736 class). The hostile images carry the
host interpreter's shared libraries, so the host binary would really run there if reached:
``-V`` prints its version, and a script body reads /proc/self/exe and tries to open it for
writing (never writes). Now the last step is a sealed memfd stub, which refuses to be run
as an interpreter.

(c) The working directory was entered before stray fds were closed and never checked: an
fd of a host directory that cove inherited, named by ``-w /proc/self/fd/N`` or by an image
symlink, left the process (and files it made) on the host (CVE-2024-21626 class).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    CoveRunner,
    TarBuilder,
    add_host_program,
    alpine_variant,
    cove_argv,
    host_interpreter,
)

SELF_V = b"#!/proc/self/exe -V\n"
# with -I -S the host Python needs only its encodings (carried in the image) to run this
SELF_SCRIPT = b"""#!/proc/self/exe -IS
import sys
data = open("/proc/self/exe", "rb").read()
sys.stdout.write("PYTHON-RAN " + data.hex() + "\\n")
try:
    open("/proc/self/exe", "ab").close()  # O_WRONLY|O_APPEND, nothing is written
    print("OPENED-FOR-WRITING")
except OSError as e:
    print("write-open refused", e.errno)
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def interp() -> Iterator[Path]:
    """The host interpreter; its content must be the same after the test, pass or fail."""
    path = host_interpreter()
    before = _sha256(path)
    yield path
    assert _sha256(path) == before, f"{path} changed"


def _self_exe_image(cove: CoveRunner, alpine_tar: Path, tmp_path: Path, interp: Path,
                    change: list[str]) -> str:  # fmt: skip
    stdlib = interp.parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

    def add(tb: TarBuilder) -> None:
        add_host_program(tb, interp, trees=[stdlib / "encodings"])
        tb.file(str(stdlib / "os.py").lstrip("/"), (stdlib / "os.py").read_bytes())  # landmark
        tb.file("evil", SELF_V, mode=0o755)
        tb.file("evil-script", SELF_SCRIPT, mode=0o755)
        tb.symlink("x", "/proc/self/exe")
        tb.file("evil-link", b"#!/x -V\n", mode=0o755)

    return alpine_variant(cove, alpine_tar, "selfexe:1", tmp_path, add=add, change=change)


def _assert_host_interpreter_not_run(proc: subprocess.CompletedProcess[str], interp: Path) -> None:
    out = proc.stdout + proc.stderr
    assert "Python" not in out, f"the host interpreter ran in the container: {out!r}"
    assert "PYTHON-RAN" not in out and "OPENED-FOR-WRITING" not in out, out[:300]
    for word in out.split():
        if len(word) > 1000:
            data = bytes.fromhex(word)
            assert hashlib.sha256(data).hexdigest() != _sha256(interp), "host binary read"
    assert proc.returncode == 126, (proc.returncode, out)
    assert "exec stub cannot be run from a container (refused)" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("change", "args"),
    [
        (['ENTRYPOINT ["/evil"]'], []),
        (['CMD ["/evil"]'], []),
        (['ENTRYPOINT ["/evil-link"]'], []),  # the interpreter named through an image symlink
        (['CMD ["/bin/sh"]'], ["/evil-script"]),  # the host interpreter would run this body
    ],
    ids=["entrypoint", "cmd", "symlink", "script"],
)
def test_first_process_cannot_run_host_interpreter(
    cove: CoveRunner, alpine_tar: Path, tmp_path: Path, interp: Path,
    change: list[str], args: list[str],
) -> None:  # fmt: skip
    _self_exe_image(cove, alpine_tar, tmp_path, interp, change)
    proc = cove("run", "--rm", "--network", "none", "selfexe:1", *args, check=False)
    _assert_host_interpreter_not_run(proc, interp)


@pytest.mark.parametrize("what", ["/evil", "/evil-script"])
def test_exec_and_health_check_cannot_run_host_interpreter(
    cove: CoveRunner, alpine_tar: Path, tmp_path: Path, interp: Path, what: str
) -> None:
    _self_exe_image(cove, alpine_tar, tmp_path, interp, ['CMD ["/bin/sh"]'])
    cove("run", "-d", "--name", "victim", "--network", "none", "selfexe:1", "sleep", "600")
    _assert_host_interpreter_not_run(cove("exec", "victim", what, check=False), interp)
    # a health check goes through the same exec path (exec form: the shell form's sh would
    # be what execs the script); its output is kept in the record
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f'FROM selfexe:1\nHEALTHCHECK --interval=1s --retries=1 CMD ["{what}"]\n'
    )
    cove("build", "-t", "checked:1", str(ctx))
    cove("run", "-d", "--name", "checked", "--network", "none", "checked:1", "sleep", "600")
    log = ""
    for _ in range(120):  # the first check runs a second after the start
        log = cove("inspect", "--format", "{{json .State.Health}}", "checked").stdout
        if '"ExitCode"' in log:
            break
        subprocess.run(["sleep", "0.5"], check=True)
    assert '"ExitCode": 126' in log or '"ExitCode":126' in log, log
    assert "Python" not in log and "PYTHON-RAN" not in log, log


def test_normal_entrypoint_still_runs(cove: CoveRunner, alpine: str, interp: Path) -> None:
    """Positive control: PATH lookup, argv[0], env and exit codes are as before the stub."""
    script = 'echo "$0 $X"; readlink /proc/self/exe; exit 7'
    proc = cove("run", "--rm", "--network", "none", "-e", "X=1", "alpine:3.20",
                "sh", "-c", script, check=False)  # fmt: skip
    assert proc.returncode == 7, proc
    assert proc.stdout.split("\n")[:2] == ["sh 1", "/bin/busybox"], proc.stdout
    missing = cove("run", "--rm", "--network", "none", "alpine:3.20", "nosuch", check=False)
    assert missing.returncode == 127
    assert 'exec: "nosuch": executable file not found in $PATH' in missing.stderr
    denied = cove("run", "--rm", "--network", "none", "alpine:3.20", "/etc/passwd", check=False)
    assert denied.returncode == 126 and "permission denied" in denied.stderr


# ------------------------------------------------------------------------------------------
# (c) the working directory


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A host directory and an inheritable fd of it, as a careless caller would leak it."""
    d = tmp_path / "host-side"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield d, fd
    finally:
        os.close(fd)


def _cove_with_fd(root: Path, fd: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cove_argv(root, *args), capture_output=True, text=True,
                          pass_fds=(fd,), timeout=300)  # fmt: skip


@pytest.mark.parametrize("how", ["fd", "fd-subdir", "image-symlink", "exec"])
def test_workdir_cannot_land_on_the_host(
    cove: CoveRunner, cove_root: Path, alpine: str, alpine_tar: Path, tmp_path: Path,
    host_dir: tuple[Path, int], how: str,
) -> None:  # fmt: skip
    d, fd = host_dir
    work = f"/proc/self/fd/{fd}" + ("/sub" if how == "fd-subdir" else "")
    image = "alpine:3.20"
    wflag = ["-w", work]
    if how == "image-symlink":
        image = "wd:1"
        alpine_variant(cove, alpine_tar, image, tmp_path,
                       add=lambda tb: tb.symlink("work", f"/proc/self/fd/{fd}"),
                       change=['CMD ["/bin/sh"]', "WORKDIR /work"])  # fmt: skip
        wflag = []
    payload = ["sh", "-c", "touch escaped; pwd"]
    if how == "exec":
        cove("run", "-d", "--name", "wd", "--network", "none", image, "sleep", "600")
        proc = _cove_with_fd(cove_root, fd, "exec", *wflag, "wd", *payload)
    else:
        proc = _cove_with_fd(cove_root, fd, "run", "--rm", "--network", "none", *wflag, image,
                             *payload)  # fmt: skip
    assert sorted(os.listdir(d)) == [], f"the container wrote on the host: {os.listdir(d)}"
    assert proc.returncode == 126, (proc.returncode, proc.stdout, proc.stderr)
    assert "cwd" in proc.stderr and ("/proc/self/fd" in proc.stderr or "/work" in proc.stderr)


def test_normal_workdir_works(cove: CoveRunner, cove_root: Path, alpine: str,
                              host_dir: tuple[Path, int]) -> None:  # fmt: skip
    """Positive control: an ordinary (and a missing, so created) -w, even with a stray fd."""
    d, fd = host_dir
    for work in ("/tmp", "/made/by/cove"):
        proc = _cove_with_fd(cove_root, fd, "run", "--rm", "--network", "none", "-w", work,
                             "alpine:3.20", "sh", "-c", "touch here; pwd; ls")  # fmt: skip
        assert proc.returncode == 0, proc
        assert proc.stdout.split() == [work, "here"], proc.stdout
    assert os.listdir(d) == []


# (b) exec'd processes are forks of cove until their execve. Joined to the container's pid
# namespace while still dumpable, a container process holding CAP_SYS_PTRACE in its user
# namespace could read their memory and environment or attach to them (CVE-2016-9962 class).
# ``COVE_STOP_AT=exec-joined`` holds one right after the joins, the widest such window.


def _stopped_exec(root: str) -> tuple[int, int]:
    """(host pid, pid in the container) of the exec'd process held at exec-joined."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        nspid = fields.get("NSpid", "").split()
        if (
            fields.get("State", "").strip().startswith("T")
            and len(nspid) == 2
            and (b"exec" in cmdline and root.encode() in cmdline)
        ):
            return int(entry), int(nspid[1])
    raise LookupError("no exec'd process held at exec-joined")


def test_exec_is_not_readable_by_the_container_before_execve(alpine_tar: Path) -> None:
    # a user-namespaced container: its root holds CAP_SYS_PTRACE in its own namespace only,
    # so the dumpable flag alone decides (pytest's 0700 tmp dirs would refuse --userns)
    root = Path(tempfile.mkdtemp(prefix="cove-dumpable-", dir="/var/tmp"))
    root.chmod(0o711)

    def cove(*args: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(cove_argv(root, *args), capture_output=True, text=True,
                              timeout=120, env=env)  # fmt: skip
        assert proc.returncode == 0, (args, proc.stderr)
        return proc.stdout

    held: subprocess.Popen[bytes] | None = None
    host_pid = 0
    try:
        cove("import", str(alpine_tar), "alpine:3.20")
        cove("run", "-d", "--name", "victim", "--network", "none", "--userns=auto",
             "--cap-add", "SYS_PTRACE", "alpine:3.20", "sleep", "1000")  # fmt: skip
        env = dict(os.environ, COVE_STOP_AT="exec-joined", COVE_SECRET_MARK="host-env-leak")
        held = subprocess.Popen(cove_argv(root, "exec", "victim", "true"), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        in_ctr = 0
        for _ in range(200):
            try:
                host_pid, in_ctr = _stopped_exec(str(root))
                break
            except LookupError:
                if held.poll() is not None:
                    raise AssertionError(held.communicate()) from None
                time.sleep(0.05)
        assert in_ctr, "the exec'd process never reached the hold point"
        probe = (
            f"cat /proc/{in_ctr}/environ >/dev/null 2>&1 && echo environ-read; "
            f"readlink /proc/{in_ctr}/exe >/dev/null 2>&1 && echo exe-read; "
            f"grep -q host-env-leak /proc/{in_ctr}/environ 2>/dev/null && echo LEAK; "
            # positive control: the container's own init, dumpable again after its execve
            "cat /proc/1/environ >/dev/null 2>&1 && echo init-read; true"
        )
        out = cove("exec", "victim", "sh", "-c", probe).split()
        assert "init-read" in out, out  # the probe reads what it may read
        assert "environ-read" not in out and "exe-read" not in out and "LEAK" not in out, out
    finally:
        if host_pid:
            os.kill(host_pid, 18)  # SIGCONT: let the held exec finish
        if held is not None:
            try:
                held.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                held.kill()
                held.communicate()
        subprocess.run(cove_argv(root, "system", "reset", "-f"), capture_output=True,
                       timeout=300)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
