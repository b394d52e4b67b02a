"""A throwaway user with its own subordinate id range, for rootless start benchmarks.

``bench/start.py --rootless`` makes one (useradd, home under a temp dir, /etc/subuid and
/etc/subgid lines), runs ``cove`` and ``podman`` as it through runuser, and removes
everything afterwards: the user's processes (cove's pause process and podman's), its lines
and its home.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RANGE = 65536


def _edit(name: str, add: str | None) -> None:
    for path in ("/etc/subuid", "/etc/subgid"):
        lines = Path(path).read_text().splitlines() if os.path.exists(path) else []
        keep = [line for line in lines if not line.startswith(name + ":")]
        if add:
            keep.append(add)
        Path(path).write_text("".join(line + "\n" for line in keep))


def _start() -> int:
    top = 1_500_000_000
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    top = max(top, int(parts[1]) + int(parts[2]))
    return top


class BenchUser:
    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.home = home
        pw = pwd.getpwnam(name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        # /run/user/UID, as logind gives a login session. Podman refuses a runroot
        # ($XDG_RUNTIME_DIR/containers) longer than 50 characters in `podman container
        # cleanup`, the exit command conmon runs: with a runtime dir under the temp home that
        # cleanup failed, the container stayed "stopped", and every `podman run` waited out its
        # 20 s conmon timeout before returning.
        self.run = Path("/run/user") / str(self.uid)

    def argv(self, *cmd: str) -> list[str]:
        env = [f"HOME={self.home}", f"USER={self.name}", f"XDG_RUNTIME_DIR={self.run}",
               "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]  # fmt: skip
        return ["runuser", "-u", self.name, "--", "env", "-i", *env, *cmd]


@contextlib.contextmanager
def bench_user() -> Iterator[BenchUser]:
    base = Path(tempfile.mkdtemp(prefix="cove-bench-rootless.", dir="/tmp"))
    os.chmod(base, 0o755)
    name = f"covebench{os.getpid() % 100000}"
    home = base / name
    subprocess.run(["useradd", "-m", "-d", str(home), "-K", "SUB_UID_COUNT=0",
                    "-K", "SUB_GID_COUNT=0", name], check=True, capture_output=True)  # fmt: skip
    uid = pwd.getpwnam(name).pw_uid
    start = _start()
    made_run = False
    try:
        _edit(name, f"{name}:{start}:{RANGE}")
        user = BenchUser(name, home)
        os.makedirs(user.run.parent, mode=0o755, exist_ok=True)
        user.run.mkdir(mode=0o700)  # FileExistsError: left by an earlier user with this uid
        made_run = True
        os.chown(user.run, user.uid, user.gid)
        yield user
    finally:
        ids = {uid, *range(start, start + RANGE)}
        for _ in range(100):
            pids = []
            for p in os.listdir("/proc"):
                with contextlib.suppress(OSError):
                    if p.isdigit() and os.stat(f"/proc/{p}").st_uid in ids:
                        pids.append(int(p))
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        # podman leaves its lock file (libpod_rootless_lock_UID) in /dev/shm
        for f in os.listdir("/dev/shm"):
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join("/dev/shm", f)).st_uid in ids:
                    os.unlink(os.path.join("/dev/shm", f))
        _edit(name, None)
        subprocess.run(["userdel", name], capture_output=True)
        if made_run:
            shutil.rmtree(Path("/run/user") / str(uid), ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
