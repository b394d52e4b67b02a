"""``run --vm`` from a booted template: the agent VM is booted once per kernel, agent and
machine shape, saved, and every run restores it instead of booting.

What QEMU 7.2 (Debian 12) allows, and what was chosen:

- Save and restore are QEMU migration. 7.2 has no ``file:`` URI (8.2+) and no mapped-ram:
  the template is saved with ``migrate fd:`` to a file (the descriptor passed over QMP), and
  a run restores with ``-incoming defer`` + ``migrate-incoming fd:N`` (a descriptor it
  inherits): no ``exec:``, which QEMU's ``-sandbox spawn=deny`` forbids. ``-loadvm`` needs
  the vmstate inside a qcow2 that every run would open writable: not shared.
- Memory: the guest RAM is a ``memory-backend-file``, ``share=on`` while the template boots
  (its writes land in the file) and saved with the ``x-ignore-shared`` capability (since
  QEMU 4.0), so the stream holds device state only (~0.3 MB). A run maps the same file
  ``share=off``: MAP_PRIVATE, copy-on-write, so concurrent runs share the template's pages
  in the page cache and never change the file; restoring reads no RAM at all. (The ``rom=``
  option that opens the file read-only is 8.2+; 7.2 opens it O_RDWR and maps it private.)
- Devices are the template's, with the run's backends given at restore under the same ids
  (chardevs and drives are not migrated state): the root disk is a per-run qcow2 overlay of
  the image's ext4 with the template disk's fixed virtual size (the guest read the size at
  boot), the four ports and the stdin port point into the run's directory, the NIC's netdev
  carries the run's forwards. The agent parks before touching the disk or the network.
- Each restored VM is made fresh before the command: the host sends, on ``cove.ctl``, the
  run's config (``agent.run_message``) with its clock and 64 random bytes that the guest
  credits with RNDADDENTROPY and a forced reseed (``cove.vm.fresh``); the agent sets the
  run's MAC, hostname and address and drops the block cache of /dev/vda before mounting it.
- The key is a digest of everything the saved state depends on: the kernel file, the agent
  initramfs (its name is the digest of /init, modules and busybox), the QEMU binary, the
  architecture, accelerator, memory, cpus and devices. A template whose kernel or agent
  changed is removed when the new one is built.
- Not templated (they boot cold): foreign architectures, guests the freshness program is
  not built for (``supported``: x86-64 only, so an arm64 host's own guests too), ``-v``
  (vhost-user-fs blocks migration and needs shared memory), cove networks (a tap),
  ``COVE_VM_TEMPLATE=0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cove.errors import VMFailed
from cove.vm import qemu as qcmd

ENV = "COVE_VM_TEMPLATE"  # "0": every run --vm boots cold
DISK_SIZE = 256 << 30  # every templated run's root disk (a sparse qcow2: costs nothing)
NETWORKS = ("user", "none")  # the devices a template can have (a tap needs a run's bridge)
BUILD_TIMEOUT = 180.0
RESTORE_TIMEOUT = 30.0
FORMAT = 1  # of a template directory; a change makes every old one stale


@dataclass(frozen=True)
class Shape:
    """The machine a template is: what must be the same between its boot and a restore."""

    arch: str
    accel: str
    memory_mib: int
    cpus: int
    network: str  # "user" (a virtio NIC on slirp) or "none" (no NIC)
    kernel: str  # the vmlinuz file
    initrd: str  # the agent's cached initramfs (agent.base_initrd)
    qemu: str = qcmd.QEMU


def enabled(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return env.get(ENV, "1") != "0"


def supported(arch: str) -> bool:
    """Whether a guest of ``arch`` can be restored from a template: every restore runs
    ``cove.vm.fresh``'s program in it, machine code built for its ARCHES alone."""
    from cove.vm import fresh

    return arch in fresh.ARCHES


def _identity(path: str) -> str:
    """A file's identity: a changed file (a new kernel, a rebuilt agent) is a new key."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def key(shape: Shape, identities: dict[str, str], append: str | None = None) -> str:
    """The template's name: a digest of its shape, of its files' identities and of the
    kernel command line it boots with (``append``, by default ``cmdline()``): a restored
    copy keeps the boot-time choices of the template's kernel, so a new command line is a
    new template."""
    append = cmdline() if append is None else append
    data = json.dumps([FORMAT, asdict(shape), sorted(identities.items()), append],
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def identities(shape: Shape) -> dict[str, str]:
    qemu = shutil.which(shape.qemu) or shape.qemu
    return {"kernel": _identity(shape.kernel), "initrd": _identity(shape.initrd),
            "qemu": _identity(qemu)}  # fmt: skip


def cmdline() -> str:
    """The template's kernel command line: the agent's, and the word that parks it."""
    from cove.vm import agent

    return agent.cmdline(["cove.template"])


def qmp_path(files: qcmd.RunFiles) -> str:
    return os.path.join(files.run, "qmp.sock")


def command(
    shape: Shape,
    files: qcmd.RunFiles,
    *,
    memory_file: str,
    restore: bool,
    ports: tuple[Any, ...] = (),
    mac: str = "52:54:00:12:34:56",
) -> list[str]:
    """The QEMU argv of a template's boot (``restore=False``: its RAM file shared, so the
    guest's memory ends up in it) or of a run restoring it (``restore=True``: the file
    mapped private, ``-incoming defer``). Both have the same devices with the same ids;
    only their backends (``files``, the forwards in ``ports``) differ."""
    argv = qcmd.run_command(
        accel=shape.accel, cpus=shape.cpus, memory_mib=shape.memory_mib, kernel=shape.kernel,
        append=cmdline(), files=files, interactive=True, network=shape.network, ports=ports,
        mac=mac, qemu=shape.qemu,
    )  # fmt: skip
    argv[argv.index("-initrd") + 1] = shape.initrd  # the agent's, with no run's config
    i = argv.index("-machine")
    argv[i + 1] += ",memory-backend=mem"
    share = "off" if restore else "on"
    argv += [
        "-object", f"memory-backend-file,id=mem,size={shape.memory_mib}M,"
                   f"mem-path={qcmd._q(memory_file)},share={share}",
        "-qmp", f"unix:{qcmd._q(qmp_path(files))},server=on,wait=off",
    ]  # fmt: skip
    if restore:
        argv += ["-incoming", "defer"]
    return argv


# -- QMP: a few commands, no qemu.qmp import on the run's path ------------------------------


class Monitor:
    """A synchronous QMP connection (JSON lines over the unix socket)."""

    def __init__(self, path: str, alive: Callable[[], bool], timeout: float = 10.0) -> None:
        self.path = path
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                break
            except OSError as e:
                s.close()
                if not alive() or time.monotonic() > deadline:
                    raise VMFailed(f"cannot reach qemu's monitor {path}: {e.strerror}") from e
                time.sleep(0.005)
        s.settimeout(timeout)
        self.sock = s
        self.reader = s.makefile("rb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            try:
                line = self.reader.readline()
            except OSError as e:  # QEMU died mid-reply (a damaged state file): reset, timeout
                raise VMFailed(f"qemu's monitor {self.path}: {e.strerror or e}") from e
            if not line:
                raise VMFailed(f"qemu closed its monitor {self.path}")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, name: str, fds: list[int] | None = None, **args: Any) -> Any:
        data = json.dumps({"execute": name, "arguments": args}).encode()
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.sendall(data)
        except OSError as e:
            raise VMFailed(f"qemu's monitor {self.path}: {name}: {e.strerror or e}") from e
        reply = self._read()
        if "error" in reply:
            raise VMFailed(f"qemu: {name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def wait_migration(mon: Monitor, alive: Callable[[], bool], timeout: float, tpl: str) -> None:
    """Until the migration to or from the template ``tpl`` (its directory) completes."""
    deadline = time.monotonic() + timeout
    while True:
        info = mon.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            why = info.get("error-desc", "no reason given")
            raise VMFailed(f"migration of vm template {tpl} {status}: {why}")
        if not alive() or time.monotonic() > deadline:
            raise VMFailed(f"migration of vm template {tpl} did not complete (status {status})")
        time.sleep(0.005)


IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]


# -- the template on disk -------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    dir: str

    @property
    def memory(self) -> str:
        return os.path.join(self.dir, "ram")

    @property
    def state(self) -> str:
        return os.path.join(self.dir, "state")

    @property
    def meta(self) -> str:
        return os.path.join(self.dir, "meta.json")

    def complete(self) -> bool:
        return all(os.path.isfile(p) for p in (self.memory, self.state, self.meta))


def templates_dir(root: str) -> str:
    return os.path.join(root, "vmtemplate")


def ensure(root: str, shape: Shape, note: Callable[[str], None] | None = None) -> Template:
    """The template of ``shape``, booted and saved under a lock the first time (concurrent
    first runs build it once); stale templates are removed then."""
    from cove.sys.syscalls import flocked

    base = templates_dir(root)
    os.makedirs(base, mode=0o700, exist_ok=True)
    ids = identities(shape)
    k = key(shape, ids)
    tpl = Template(os.path.join(base, k))
    if tpl.complete():
        return tpl
    with flocked(os.path.join(base, k + ".lock")):
        if tpl.complete():
            return tpl
        remove_stale(root, keep=k, shape=shape)
        if note:
            note("booting the vm template (once per kernel, agent and machine shape)")
        _build(tpl, shape, ids)
    return tpl


def stale(meta: dict[str, Any], current: Shape | None = None) -> bool:
    """A template whose files changed or went away (its kernel, agent or QEMU: it can never
    be used again, since its key named the old ones), or one ``current`` supersedes: the
    same machine and kernel file with another agent (a new agent has a new file name)."""
    try:
        shape = Shape(**(meta.get("shape") or {}))
    except TypeError:
        return True
    if meta.get("format") != FORMAT or identities(shape) != meta.get("identities"):
        return True
    if current is not None:
        same = ("arch", "accel", "memory_mib", "cpus", "network", "kernel", "qemu")
        return all(getattr(shape, f) == getattr(current, f) for f in same)
    return False


def remove_stale(root: str, keep: str = "", shape: Shape | None = None) -> list[str]:
    """Remove every template whose kernel, agent or QEMU changed, those ``shape`` (the one
    being built, named ``keep``) supersedes, and unfinished builds (a template is renamed
    into place complete); the names removed."""
    import fcntl

    base = templates_dir(root)
    removed = []
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.join(base, name)
        if name == keep or name.endswith(".lock") or not os.path.isdir(path):
            continue
        k = name.split(".")[0]
        with open(os.path.join(base, k + ".lock"), "a") as lock:
            try:  # a build of that key in progress holds it: leave it alone
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if "." not in name:
                try:
                    with open(os.path.join(path, "meta.json")) as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    meta = {}
                if not stale(meta, shape):
                    continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def _build(tpl: Template, shape: Shape, ids: dict[str, str]) -> None:
    """Boot the agent to where it parks, save it, and rename the directory into place."""
    from cove.sys.syscalls import die_with_parent
    from cove.vm import disks
    from cove.vm.vmstore import run_dir

    work = tpl.dir + f".{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    os.mkdir(work, 0o700)
    files = qcmd.RunFiles(work, os.path.join(run_dir(), "tpl-" + os.path.basename(tpl.dir)[:12]))
    shutil.rmtree(files.run, ignore_errors=True)
    os.makedirs(files.run, mode=0o700)
    proc: subprocess.Popen[bytes] | None = None
    try:
        disks.create(files.disk, DISK_SIZE)  # blank: the agent parks before reading it
        for path in (files.stdout, files.stderr, files.exit, files.console_log):
            open(path, "wb").close()
        memory = os.path.join(work, "ram")
        with open(memory, "wb") as f:
            f.truncate(shape.memory_mib << 20)
        argv = command(shape, files, memory_file=memory, restore=False)
        from cove.vm import arch

        argv = arch.adapt(argv, arch.ARCHES.get(shape.arch, arch.X86_64))
        with open(files.qemu_log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    preexec_fn=die_with_parent, start_new_session=True)  # fmt: skip
        alive = _alive(proc)
        deadline = time.monotonic() + BUILD_TIMEOUT
        while b"parked" not in _read(files.exit):
            if not alive():
                raise VMFailed(f"vm template {tpl.dir} did not boot: {_last(files)}")
            if time.monotonic() > deadline:
                raise VMFailed(f"vm template {tpl.dir} did not park in {BUILD_TIMEOUT:g} s")
            time.sleep(0.02)
        mon = Monitor(qmp_path(files), alive)
        try:
            mon.execute("migrate-set-capabilities", capabilities=IGNORE_SHARED)
            mon.execute("stop")
            fd = os.open(os.path.join(work, "state"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                mon.execute("getfd", fds=[fd], fdname="state")
            finally:
                os.close(fd)
            mon.execute("migrate", uri="fd:state")
            wait_migration(mon, alive, BUILD_TIMEOUT, tpl.dir)
            mon.execute("quit")
        finally:
            mon.close()
        proc.wait(timeout=30)
        for path in (files.disk, files.stdout, files.stderr, files.exit, files.console_log):
            os.unlink(path)
        with open(os.path.join(work, "meta.json"), "w") as f:
            json.dump({"format": FORMAT, "shape": asdict(shape), "identities": ids,
                       "created": time.time()}, f)  # fmt: skip
        os.rename(work, tpl.dir)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(files.run, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def restore(
    tpl: Template, proc: subprocess.Popen[bytes], files: qcmd.RunFiles, state_fd: int
) -> None:
    """Bring ``proc`` (QEMU started from ``command(restore=True)`` with ``state_fd``
    inherited) to a running copy of ``tpl``."""
    alive = _alive(proc)
    mon = Monitor(qmp_path(files), alive)
    try:
        mon.execute("migrate-set-capabilities", capabilities=IGNORE_SHARED)
        mon.execute("migrate-incoming", uri=f"fd:{state_fd}")
        wait_migration(mon, alive, RESTORE_TIMEOUT, tpl.dir)
        # the template was stopped when saved, so the copy waits for this
        mon.execute("cont")
    finally:
        mon.close()


def _alive(proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: proc.poll() is None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _last(files: qcmd.RunFiles) -> str:
    for path in (files.qemu_log, files.console_log):
        lines = [ln for ln in _read(path).decode(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return "no output"


__all__ = ["DISK_SIZE", "ENV", "Shape", "Template", "command", "enabled", "ensure", "key",
           "remove_stale", "restore"]  # fmt: skip
