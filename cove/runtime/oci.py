"""runc's semantics over cove's runtime, for ``cove-runc`` (the face in ``cove/runc``).

The same ``Runtime`` as ``cove run`` makes and starts the container; this module adds what
an engine calling runc relies on: the state directory under ``--root``, runc's state JSON
and status names, its rules for which verb applies in which status (and the error words
containerd's shim matches: "does not exist", "container not running"), the pid file, the
console socket, OCI hooks, ``--preserve-fds``, exec, pause, update and stats.

Process model of ``create``: the caller (containerd's shim, conmon, runtime-tools) runs
``cove-runc create``, which forks the container (``api.Runtime.create``: C, then G, pid 1
of the container, waiting on the exec fifo) and exits. G is reparented to the nearest
child subreaper above cove-runc (the shim and conmon are one), never kept as a child of a
lingering cove process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from typing import Any

from cove.errors import Conflict, InvalidSpec, NotFound, StateError, Unsupported
from cove.runtime.api import Created, Runtime
from cove.runtime.cgroups import Cgroups, read_layout
from cove.spec.runtime import OCI_VERSION, Hook, Process, Resources, Spec

DEFAULT_ROOT = "/run/cove-runc"
_ID = re.compile(r"^[\w+\-.]+$")  # runc's id rule


class Paths:
    """Where one container's runtime state lives: ``<root>/<id>/``."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root

    def dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)


def _rfc3339(ts: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{whole}.{int((ts % 1) * 1e9):09d}Z"


def write_pid_file(path: str, pid: int) -> None:
    """Written to a temporary name and renamed, as runc: a reader sees all of it or none."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def send_console(console_socket: str, master: int) -> None:
    """Hand the pty master to the caller's socket (SCM_RIGHTS), as runc's console socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(console_socket)
        except OSError as e:
            raise NotFound(f"console socket {console_socket}: {e.strerror}") from e
        socket.send_fds(s, [b"/dev/ptmx"], [master])


def parse_signal(text: str) -> int:
    """A signal by number or by name, with or without SIG (runc's kill and runtime-tools')."""
    if text.isdigit():
        num = int(text)
        if 0 < num < 65:
            return num
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        with contextlib.suppress(AttributeError):
            return int(getattr(signal.Signals, name))
        m = re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name)
        if m:
            base = signal.SIGRTMIN if m.group(1) == "IN" else signal.SIGRTMAX
            return int(base) + int(m.group(2) or 0)
    raise InvalidSpec(f"unknown signal {text!r}")


class OciRuntime:
    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = os.path.abspath(root)
        self.paths = Paths(self.root)
        # ".cache" cannot be a container id's directory: ids may not start with "."
        self.rt = Runtime(self.root, os.path.join(self.root, ".cache"))

    # -- reading state --------------------------------------------------------------

    def _check_id(self, cid: str) -> None:
        if not _ID.match(cid) or cid.startswith("."):
            raise InvalidSpec(f"invalid container id {cid!r}")

    def _doc(self, cid: str) -> dict[str, Any]:
        self._check_id(cid)
        try:
            doc = self.rt.state_doc(cid)
        except NotFound as e:
            raise NotFound(f"container {cid} does not exist") from e
        return doc

    def _cgroups(self, doc: dict[str, Any]) -> Cgroups:
        return Cgroups(str(doc.get("cgroupsPath") or f"cove/{doc['id']}"))

    def _status(self, doc: dict[str, Any]) -> str:
        status = str(doc["status"])
        if status == "running" and self._cgroups(doc).frozen():
            return "paused"
        return status

    def _spec(self, cid: str) -> Spec:
        """The config create saw (a copy in the state dir: the bundle may change after)."""
        with open(os.path.join(self.paths.dir(cid), "config.json"), "rb") as f:
            return Spec.parse(f.read())

    def state(self, cid: str) -> dict[str, Any]:
        """runc's state JSON (libcontainer's ``containerState`` as ``runc state`` prints)."""
        doc = self._doc(cid)
        status = self._status(doc)
        spec = self._spec(cid)
        bundle = str(doc["bundle"])
        return {
            "ociVersion": str(doc.get("ociVersion") or OCI_VERSION),
            "id": cid,
            "pid": 0 if status == "stopped" else int(doc["pid"]),
            "status": status,
            "bundle": bundle,
            "rootfs": os.path.join(bundle, spec.root.path),
            "created": _rfc3339(float(doc["created"])),
            "owner": "",
            "annotations": doc.get("annotations") or {},
        }

    def containers(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.root)):
                if name.startswith(".") or not os.path.exists(
                    os.path.join(self.root, name, "state.json")
                ):
                    continue
                with contextlib.suppress(NotFound, OSError, ValueError):
                    out.append(self.state(name))
        return out

    def _hook_state(self, cid: str, status: str, pid: int) -> dict[str, Any]:
        from cove.runtime import hooks

        doc = self._doc(cid)
        spec = self._spec(cid)
        return hooks.state_doc(
            cid, status, pid, str(doc["bundle"]), spec.annotations, spec.oci_version
        )

    # -- create, start, run -----------------------------------------------------------

    def create(
        self,
        cid: str,
        bundle: str,
        *,
        pid_file: str = "",
        console_socket: str = "",
        preserve_fds: int = 0,
        detach: bool = True,
    ) -> Created:
        """Create ``cid`` from ``bundle``: its init waits on the exec fifo when this
        returns. The caller closes ``Created.sock`` (or waits on it, ``run``)."""
        self._check_id(cid)
        bundle = os.path.abspath(bundle or ".")
        if not os.path.isdir(bundle):
            raise NotFound(f"bundle {bundle} does not exist")
        if os.path.lexists(self.paths.dir(cid)):
            raise Conflict(f"container with id exists: {cid}")
        try:
            with open(os.path.join(bundle, "config.json"), "rb") as f:
                raw = f.read()
        except FileNotFoundError as e:
            raise NotFound(f"bundle {bundle} has no config.json") from e
        spec = Spec.parse(raw)
        if spec.process.terminal and detach and not console_socket:
            raise InvalidSpec(
                "cannot allocate tty if cove-runc will detach without setting console socket"
            )
        if console_socket and not spec.process.terminal:
            raise InvalidSpec("cannot use console socket if the container has no terminal")
        if not os.path.isdir(os.path.join(bundle, spec.root.path)):
            raise NotFound(f"rootfs {os.path.join(bundle, spec.root.path)} does not exist")
        hooks = spec.hooks

        def create_runtime(pid: int) -> None:
            if hooks is None:
                return
            from cove.runtime import hooks as hookmod

            state = hookmod.state_doc(
                cid, "creating", pid, bundle, spec.annotations, spec.oci_version
            )
            try:
                hookmod.run("prestart", hooks.prestart, state)
                hookmod.run("createRuntime", hooks.create_runtime, state)
            except hookmod.HookError as e:
                raise StateError(str(e)) from e

        created = self.rt.create(
            cid, bundle, preserve_fds=preserve_fds, on_hooks=create_runtime,
            spec=_runc_devices(spec),
        )  # fmt: skip
        try:
            # the config as created: delete's poststop hooks and state's rootfs read it
            with open(os.path.join(self.paths.dir(cid), "config.json"), "wb") as out:
                out.write(raw)
            if created.pty_master is not None and console_socket:
                send_console(console_socket, created.pty_master)
            if pid_file:
                write_pid_file(pid_file, created.pid)
        except BaseException:
            created.sock.close()
            self.delete(cid, force=True)
            raise
        finally:
            if created.pty_master is not None and console_socket:
                os.close(created.pty_master)
                created.pty_master = None
        return created

    def start(self, cid: str) -> None:
        doc = self._doc(cid)
        status = self._status(doc)
        if status == "stopped":
            raise StateError(f"cannot start a container that has stopped: {cid}")
        if status != "created":
            raise StateError(f"cannot start an already running container: {cid}")
        self.rt.start(cid)
        hooks = self._spec(cid).hooks
        if hooks is not None and hooks.poststart:
            pid = int(doc["pid"])
            self._wait_exec(pid)
            self._run_warn("poststart", hooks.poststart, cid, "running", pid)

    @staticmethod
    def _wait_exec(pid: int, timeout: float = 10.0) -> None:
        """Until the init has left this interpreter by execve (its startContainer hooks ran).

        The OCI spec orders startContainer, the user process's exec, then poststart; the fifo
        read only says the init was released, so without this wait poststart raced the
        init's startContainer hooks. The init is a fork of a runtime process, so while its
        /proc/PID/exe is this interpreter's file it has not exec'd yet.
        """
        try:
            own = os.stat("/proc/self/exe")
        except OSError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                exe = os.stat(f"/proc/{pid}/exe")
            except OSError:
                return  # gone (or a zombie): nothing left to wait for
            if (exe.st_dev, exe.st_ino) != (own.st_dev, own.st_ino):
                return
            time.sleep(0.001)

    def _run_warn(self, kind: str, hooks: list[Hook], cid: str, status: str, pid: int) -> None:
        """poststart and poststop: a failure is a warning, the container stays as it is
        (runtime-spec: "the runtime MUST log a warning, ... and continue")."""
        from cove.runtime import hooks as hookmod

        try:
            hookmod.run(kind, hooks, self._hook_state(cid, status, pid))
        except hookmod.HookError as e:
            os.write(2, f"WARNING: {e}\n".encode())

    # -- signals, delete -------------------------------------------------------------

    def kill(self, cid: str, sig: int, *, all_processes: bool = False) -> None:
        doc = self._doc(cid)
        status = self._status(doc)
        cg = self._cgroups(doc)
        if all_processes:
            pids = cg.pids()
            if status == "paused":  # a frozen task takes the signal when thawed
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                cg.freeze(False)
                return
            if not pids and status == "stopped":
                raise StateError(f"container not running: {cid}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            return
        if status == "stopped":
            raise StateError(f"container not running: {cid}")
        os.kill(int(doc["pid"]), sig)

    def delete(self, cid: str, *, force: bool = False) -> None:
        try:
            doc = self._doc(cid)
        except NotFound:
            if force:
                return  # runc: a forced delete of what is gone succeeds
            raise
        status = self._status(doc)
        if status in ("running", "paused") and not force:
            raise StateError(f"cannot delete container {cid} that is not stopped: {status}")
        spec: Spec | None = None
        with contextlib.suppress(OSError, InvalidSpec):
            spec = self._spec(cid)
        pid = int(doc["pid"])
        cg = self._cgroups(doc)
        if status != "stopped":
            # created (runc deletes it without --force) or forced: nothing of it survives
            cg.kill_all()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(500):
                if self.rt.status(cid) == "stopped":
                    break
                time.sleep(0.01)
        self.rt.delete(cid, force=True)
        if spec is not None and spec.hooks is not None and spec.hooks.poststop:
            from cove.runtime import hooks as hookmod

            state = hookmod.state_doc(
                cid, "stopped", 0, str(doc["bundle"]), spec.annotations, spec.oci_version
            )
            try:
                hookmod.run("poststop", spec.hooks.poststop, state)
            except hookmod.HookError as e:
                os.write(2, f"WARNING: {e}\n".encode())

    # -- exec, ps, pause, update, stats ------------------------------------------------

    def exec_process(self, cid: str, process: Process, *, preserve_fds: int = 0) -> Created:
        doc = self._doc(cid)
        status = self._status(doc)
        if status == "paused":
            raise StateError(f"cannot exec in a paused container: {cid}")
        if status != "running":
            raise StateError(f"cannot exec in a stopped container: {cid}")
        spec = self._spec(cid)
        return self.rt.exec_process(
            cid, process, seccomp=spec.linux.seccomp is not None, preserve_fds=preserve_fds
        )

    def base_process(self, cid: str) -> Process:
        """The container's own process: what ``exec ID ARGS`` starts from (runc's rule)."""
        self._doc(cid)
        return self._spec(cid).process

    def pids(self, cid: str) -> list[int]:
        return self._cgroups(self._doc(cid)).pids()

    def pause(self, cid: str) -> None:
        doc = self._doc(cid)
        if self._status(doc) != "running":
            raise StateError(f"container not running: {cid}")
        self._cgroups(doc).freeze(True)

    def resume(self, cid: str) -> None:
        doc = self._doc(cid)
        if self._status(doc) != "paused":
            raise StateError(f"container not paused: {cid}")
        self._cgroups(doc).freeze(False)

    def update(self, cid: str, resources: Resources) -> list[str]:
        doc = self._doc(cid)
        if self._status(doc) == "stopped":
            raise StateError(f"container not running: {cid}")
        return self._cgroups(doc).update(resources)

    def stats(self, cid: str) -> dict[str, Any]:
        """runc's ``events --stats`` event: ``{"type":"stats","id":..,"data":{...}}``."""
        doc = self._doc(cid)
        cg = self._cgroups(doc)
        raw = cg.stats()
        data = {
            "cpu": {"usage": {"total": raw["cpu_ns"]}},
            "memory": {"usage": {"usage": raw["mem_usage"], "limit": raw["mem_limit"]}},
            "pids": {"current": raw["pids"]},
            "blkio": {
                "ioServiceBytesRecursive": [
                    {"op": "Read", "value": raw["io_read"]},
                    {"op": "Write", "value": raw["io_write"]},
                ]
            },
        }
        return {"type": "stats", "id": cid, "data": data}

    def status(self, cid: str) -> str:
        return self._status(self._doc(cid))


def _runc_devices(spec: Spec) -> Spec:
    """runc's device cgroup order: the spec's rules, then the spec's own devices and the
    default allowed ones (null, zero, ..., mknod of any) after them. cove's bundles put
    Docker's defaults first; runc's default config.json ends with a deny-all that would
    otherwise also deny mknod of /dev/null in the container's /dev."""
    from cove.runtime.devices_bpf import DOCKER_DEFAULT_RULES
    from cove.spec.runtime import DeviceRule

    res = spec.linux.resources or Resources()
    own = [
        DeviceRule(True, "b" if d.type == "b" else "c", d.major, d.minor, "rwm")
        for d in spec.linux.devices
    ]
    res.devices = [*res.devices, *own, *DOCKER_DEFAULT_RULES]
    spec.linux.resources = res
    return spec


def check_systemd_cgroup() -> None:
    raise Unsupported(
        "--systemd-cgroup is not supported by cove-runc: use cgroupfs cgroups "
        "(containerd SystemdCgroup = false, podman --cgroup-manager cgroupfs)"
    )


def features() -> dict[str, Any]:
    """runtime-spec features.md: what this runtime implements."""
    from cove.runtime.caps import CAPS

    layout = read_layout()
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": [
            "prestart", "createRuntime", "createContainer", "startContainer",
            "poststart", "poststop",
        ],
        "mountOptions": [
            "async", "bind", "defaults", "dev", "dirsync", "exec", "noatime", "nodev",
            "nodiratime", "noexec", "nostrictatime", "nosuid", "nosymfollow", "private",
            "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave",
            "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync",
            "unbindable",
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": sorted(CAPS),
            "cgroup": {
                "v1": bool(layout.v1),
                "v2": layout.unified is not None,
                "systemd": False,
                "systemdUser": False,
            },
            "seccomp": {
                "enabled": True,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE", "SCMP_ACT_TRAP",
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE",
                ],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"io.github.cove.runtime": "cove-runc"},
    }  # fmt: skip


def default_spec() -> dict[str, Any]:
    """``runc spec``'s config.json: sh on a terminal in rootfs/, read-only root."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5",
                ],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }  # fmt: skip
