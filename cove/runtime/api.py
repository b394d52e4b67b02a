"""The runtime's API, shaped like runc's verbs: create, start, kill, delete, state.

State lives in ``<state_dir>/<id>/``: ``state.json`` and, between create and start, the
``exec.fifo`` the container's first process blocks on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from cove.errors import Conflict, InvalidSpec, NotFound, StartFailed, StateError, best_effort
from cove.runtime import caps as capmod
from cove.runtime import cgwarm
from cove.runtime.cgroups import Cgroups, read_layout
from cove.spec.runtime import IDMapping, Process, Spec
from cove.sys import private
from cove.sys import syscalls as sc

# process identity moved to the foundations (network and vm check pids too); the old names
# stay importable here for callers and for monitors started by older code
from cove.sys.proc import alive as alive
from cove.sys.proc import proc_start_time as proc_start_time
from cove.sys.proc import zombie as _zombie


class ContainerStartError(StartFailed):
    """The runtime's ``StartFailed`` (the name callers and older monitors import)."""


class Created:
    """A created container (or exec'd process): its pid, our end of the setup socket and
    its pty master. A plain class: a dataclass costs ~0.3 ms to create at import."""

    __slots__ = ("argv0", "cgroups", "id", "pid", "pty_master", "sock")

    def __init__(
        self,
        id: str,
        pid: int,
        pty_master: int | None,
        sock: socket.socket,
        cgroups: Cgroups,
        argv0: str = "",  # names the command in a failed execve's message
    ) -> None:
        self.id = id
        self.pid = pid
        self.pty_master = pty_master
        self.sock = sock
        self.cgroups = cgroups
        self.argv0 = argv0

    def __repr__(self) -> str:
        return f"Created(id={self.id!r}, pid={self.pid})"


class Runtime:
    def __init__(self, state_dir: str, cache_dir: str) -> None:
        self.state_dir = state_dir
        self.cache_dir = cache_dir

    def _dir(self, cid: str) -> str:
        if not cid or "/" in cid or cid.startswith("."):
            raise InvalidSpec(f"invalid container id {cid!r}")
        return os.path.join(self.state_dir, cid)

    def load_spec(self, bundle: str) -> Spec:
        try:
            with open(os.path.join(bundle, "config.json"), "rb") as f:
                return Spec.parse(f.read())
        except FileNotFoundError as e:
            raise NotFound(f"bundle {bundle} has no config.json") from e

    def create(
        self,
        cid: str,
        bundle: str,
        *,
        stdio: tuple[int, int, int] | None = None,
        preserve_fds: int = 0,
        on_hooks: Callable[[int], None] | None = None,
        spec: Spec | None = None,
    ) -> Created:
        """Set the container up to the point of exec; its first process waits for ``start``.

        ``on_hooks(pid)`` runs the runtime's createRuntime hooks when the init asks (a
        spec with hooks): namespaces made, mounts done, pivot_root not yet; raising fails
        the create. ``spec`` replaces the bundle's config.json (cove-runc's adjusted copy)."""
        from cove.runtime import init

        spec = spec or self.load_spec(bundle)
        bundle = os.path.abspath(bundle)
        sdir = self._dir(cid)
        # searchable, not listable: a container's mapped root must reach its own exec fifo
        private.make_dir(self.state_dir, private.SHARED_MODE)
        try:
            os.mkdir(sdir, 0o700)
        except FileExistsError as e:
            raise Conflict(f"container {cid} already exists in the runtime") from e
        fifo = os.path.join(sdir, "exec.fifo")
        os.mkfifo(fifo, 0o600)
        if spec.namespace("user") is not None:
            os.chown(fifo, *host_root_ids(spec))
            private.own_dir(sdir, host_root_ids(spec)[1])  # 0710: only the mapped root's group
        layout = read_layout()
        cgroups = Cgroups(spec.linux.cgroups_path or f"cove/{cid}", layout)
        parent_sock: socket.socket | None = None
        try:
            res = spec.linux.resources
            privileged = bool(res and any(d.allow and d.type == "a" for d in res.devices))
            for warning in cgroups.create(res, privileged=privileged):
                os.write(2, f"WARNING: {warning}\n".encode())
            if spec.namespace("user") is not None:
                from cove.runtime.init import ANNOTATION_OVERLAY, idmapped_lower_dirs

                overlay = spec.annotations.get(ANNOTATION_OVERLAY)
                for d in idmapped_lower_dirs(json.loads(overlay)) if overlay else []:
                    # <bundle>/lower/ and its mountpoints: the mapped root resolves them
                    private.make_dir(os.path.dirname(d), 0o755)
                    private.make_dir(d, 0o755)
            parent_sock, pid, pty = self._spawn(
                spec, bundle, fifo, cgroups, stdio, self._bpf(spec), init.child,
                cid=cid, preserve_fds=preserve_fds, on_hooks=on_hooks,
            )  # fmt: skip
            state = {
                "ociVersion": spec.oci_version,
                "id": cid,
                "pid": pid,
                "bundle": bundle,
                "created": time.time(),
                "startTime": proc_start_time(pid),
                "annotations": spec.annotations,
                "cgroupsPath": cgroups.path,
            }
            with open(os.path.join(sdir, "state.json"), "w") as f:
                json.dump(state, f)
            return Created(cid, pid, pty, parent_sock, cgroups, _argv0(spec.process))
        except BaseException:
            if parent_sock is not None:
                parent_sock.close()
            with best_effort(f"remove the cgroups of the failed create of {cid}", __name__):
                cgroups.destroy()
            _remove_state_dir(sdir)
            raise

    def exec_process(
        self,
        cid: str,
        process: Process,
        *,
        stdio: tuple[int, int, int] | None = None,
        seccomp: bool = True,
        preserve_fds: int = 0,
    ) -> Created:
        """Start ``process`` inside running container ``cid``: its namespaces, cgroups, and
        (unless ``seccomp`` is False, for --privileged) its seccomp filter. The caller's fds
        3..3+``preserve_fds``-1 pass through to the process (runc's ``exec --preserve-fds``).

        Returns like ``create``; follow with ``wait_exec``. The process is reparented to
        us (we become a child subreaper), so the caller waits for it.
        """
        from cove.runtime import init

        doc = self.state_doc(cid)
        if doc["status"] != "running":
            raise StateError(f"container {cid} is not running")
        spec = self.load_spec(str(doc["bundle"]))
        spec.process = process
        pid = int(str(doc["pid"]))
        ns_fds: list[tuple[int, int]] = []
        order = ("user", "ipc", "uts", "net", "pid", "cgroup", "mnt")
        flags = {
            "user": sc.CLONE_NEWUSER,
            "ipc": sc.CLONE_NEWIPC,
            "uts": sc.CLONE_NEWUTS,
            "net": sc.CLONE_NEWNET,
            "pid": sc.CLONE_NEWPID,
            "cgroup": sc.CLONE_NEWCGROUP,
            "mnt": sc.CLONE_NEWNS,
        }
        layout = read_layout()
        cgroups = Cgroups(str(doc.get("cgroupsPath") or f"cove/{cid}"), layout)
        parent_sock: socket.socket | None = None
        # everything of the init is opened through one pinned /proc/PID: a dead init's
        # directory answers ESRCH, never another process that got its pid number
        procfd = _pin_process(cid, pid, doc.get("startTime"))
        root = -1
        try:
            for kind in order:
                theirs = os.readlink(f"ns/{kind}", dir_fd=procfd)
                if theirs != os.readlink(f"/proc/self/ns/{kind}"):
                    fd = os.open(f"ns/{kind}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=procfd)
                    ns_fds.append((fd, flags[kind]))
            # the init's root, opened before any join: setns(CLONE_NEWNS) leaves X at the
            # namespace's root mount, which is not the container's root when the container
            # was made inside a chroot (pivot_root swapped the chroot's mount, not the
            # namespace's root); X enters this directory and checks it before anything runs
            root = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=procfd)
            inner = _inner_pid(procfd, cid)
            bpf = self._bpf(spec) if seccomp else None
            parent_sock, got, pty = self._spawn(
                spec, str(doc["bundle"]), "", cgroups, stdio, bpf,
                lambda ctx: init.exec_child(ctx, ns_fds, root, inner),
                preserve_fds=preserve_fds,
            )  # fmt: skip
            return Created(cid, got, pty, parent_sock, cgroups, _argv0(process))
        except BaseException:
            if parent_sock is not None:
                parent_sock.close()
            raise
        finally:
            for fd in (*(fd for fd, _ in ns_fds), root, procfd):
                if fd >= 0:
                    os.close(fd)

    def _bpf(self, spec: Spec) -> bytes | None:
        if spec.linux.seccomp is None:
            return None
        from cove.runtime.seccomp import bpf_for

        return bpf_for(spec.linux.seccomp, os.path.join(self.cache_dir, "seccomp"))

    def _spawn(
        self,
        spec: Spec,
        bundle: str,
        fifo: str,
        cgroups: Cgroups,
        stdio: tuple[int, int, int] | None,
        bpf: bytes | None,
        entry: Callable[[Any], Any],
        *,
        cid: str = "",
        preserve_fds: int = 0,
        on_hooks: Callable[[int], None] | None = None,
    ) -> tuple[socket.socket, int, int | None]:
        """Fork the child that runs ``entry(InitContext)`` (create's C or exec's X) and
        take its reports: our end of the socket, the process's pid and its pty master."""
        from cove.runtime import init

        layout = cgroups.layout
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctx = init.InitContext(
            spec=spec,
            bundle=bundle,
            sock=child_sock,
            fifo=fifo,
            cgroup_procs=cgroups.procs_files(),
            stdio=stdio,
            seccomp_bpf=bpf,
            host_v1_cgroups=layout.v1,
            host_unified=layout.unified,
            pure_v2=layout.pure_v2,
            last_cap=capmod.last_cap(),
            cid=cid,
            preserve_fds=preserve_fds,
        )
        # invariant: what the child forks is reparented to us when the child exits
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        # the face's head start on the cgroup rwsem's grace period (cgwarm) ends here: the
        # child's joins come next, while it is still armed
        cgwarm.stop()
        try:
            child = os.fork()
            if child == 0:
                # C and G only ever exec or _exit: a collector pass here would only touch
                # (and so copy) every page of the parent's heap
                gc.disable()
                parent_sock.close()
                entry(ctx)
            child_sock.close()
            pid, pty = self._handshake(parent_sock, child, spec, on_hooks)
        except BaseException:
            parent_sock.close()
            child_sock.close()
            raise
        return parent_sock, pid, pty

    def _handshake(
        self,
        sock: socket.socket,
        child: int,
        spec: Spec,
        on_hooks: Callable[[int], None] | None = None,
    ) -> tuple[int, int | None]:
        pid: int | None = None
        pty: int | None = None
        created = False
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(sock, 65536, 1)
                if not data:
                    raise ContainerStartError("container process exited during setup")
                msg = json.loads(data)
                kind = msg["type"]
                if kind == "userns":
                    self._write_id_maps(child, spec)
                    self._attach_idmapped_layers(child, spec)
                    sock.send(b"ok")
                elif kind == "hooks":
                    if on_hooks is not None:
                        on_hooks(int(msg["pid"]))
                    sock.send(b"ok")
                elif kind == "pid":
                    pid = int(msg["pid"])
                elif kind == "pty":
                    pty = fds[0]
                elif kind == "created":
                    created = True
                elif kind == "error":
                    raise ContainerStartError(msg["message"], int(msg.get("code", 125)))
                # the forking parent reports the pid and the child "created": either may come first
                if created and pid is not None:
                    return pid, pty
        except BaseException:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            if pty is not None:
                os.close(pty)
            raise
        finally:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)

    def _attach_idmapped_layers(self, pid: int, spec: Spec) -> None:
        """Show the lower layers through the container's id map, so its root owns its files.

        The idmapped clones are made here (host root may idmap the host's mounts) and
        attached by a short-lived helper that joins the container's mount namespace, at
        ``<bundle>/lower/<n>``: overlayfs inside the user namespace may only stack mounts of
        its own namespace. Nothing of this is visible on the host.
        """
        from cove.runtime.init import ANNOTATION_OVERLAY, idmapped_lower_dirs

        overlay = spec.annotations.get(ANNOTATION_OVERLAY)
        if not overlay:
            return
        cfg = json.loads(overlay)
        if cfg.get("shifted"):
            return  # copies already owned through the map (rootless keep-id: cove.image.idshift)
        targets = idmapped_lower_dirs(cfg)
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        fds: list[int] = []
        try:
            for rel in cfg["lower"]:
                fds.append(sc.idmapped_clone(os.path.join(cfg["layers_dir"], rel), userns))
            helper = os.fork()
            if helper == 0:
                try:
                    sc.setns(mntns, sc.CLONE_NEWNS)
                    for fd, target in zip(fds, targets, strict=True):
                        sc.move_mount_fd(fd, target)
                    os._exit(0)
                except BaseException as e:
                    os.write(2, f"Error: attaching idmapped layers: {e}\n".encode())
                    os._exit(1)
            _, status = os.waitpid(helper, 0)
            if status != 0:
                raise ContainerStartError("cannot attach the idmapped layers")
        finally:
            for fd in (*fds, userns, mntns):
                os.close(fd)

    def _write_id_maps(self, pid: int, spec: Spec) -> None:
        for name, maps in (
            ("uid_map", spec.linux.uid_mappings),
            ("gid_map", spec.linux.gid_mappings),
        ):
            if not maps:
                raise InvalidSpec(f"a user namespace needs {name} entries")
            text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)

    def start(self, cid: str, timeout: float = 30.0) -> None:
        sdir = self._dir(cid)
        fifo = os.path.join(sdir, "exec.fifo")
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise StateError(f"container {cid} is not in the created state") from e
        try:
            deadline = time.monotonic() + timeout
            while True:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    with contextlib.suppress(BlockingIOError):
                        if os.read(fd, 1):
                            break
                if time.monotonic() > deadline or self.status(cid) == "stopped":
                    raise ContainerStartError(f"container {cid} did not start")
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fifo)

    def wait_exec(self, created: Created) -> None:
        """After start: return once execve succeeded, raise with the reason if it did not."""
        try:
            data = created.sock.recv(65536)
        finally:
            created.sock.close()
        if len(data) == 4:  # the exec stub's errno: its execve of the command failed
            from cove.runtime.execstub import exec_error

            err = exec_error(created.argv0, int.from_bytes(data, "little"))
            raise ContainerStartError(str(err), err.code)
        if data:
            msg = json.loads(data)
            raise ContainerStartError(msg.get("message", "exec failed"), int(msg.get("code", 126)))

    def state_doc(self, cid: str) -> dict[str, object]:
        try:
            with open(os.path.join(self._dir(cid), "state.json")) as f:
                doc: dict[str, object] = json.load(f)
        except FileNotFoundError as e:
            raise NotFound(f"container {cid} does not exist in the runtime") from e
        doc["status"] = self.status(cid, doc)
        return doc

    def status(self, cid: str, doc: dict[str, object] | None = None) -> str:
        if doc is None:
            try:
                with open(os.path.join(self._dir(cid), "state.json")) as f:
                    doc = json.load(f)
            except FileNotFoundError:
                return "creating"
        pid = int(str(doc["pid"]))
        alive = proc_start_time(pid) == doc.get("startTime") and not _zombie(pid)
        if not alive:
            return "stopped"
        return "created" if os.path.exists(os.path.join(self._dir(cid), "exec.fifo")) else "running"

    def kill(self, cid: str, sig: int = signal.SIGTERM) -> None:
        doc = self.state_doc(cid)
        if doc["status"] == "stopped":
            raise StateError(f"container {cid} is not running")
        os.kill(int(str(doc["pid"])), sig)

    def delete(self, cid: str, *, force: bool = False) -> None:
        sdir = self._dir(cid)
        try:
            doc = self.state_doc(cid)
        except NotFound:
            _remove_state_dir(sdir)
            return
        if doc["status"] != "stopped":
            if not force:
                raise StateError(f"container {cid} is {doc['status']}: stop it first or force")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(str(doc["pid"])), signal.SIGKILL)
        Cgroups(str(doc.get("cgroupsPath") or f"cove/{cid}")).destroy()
        _remove_state_dir(sdir)


def _remove_state_dir(sdir: str) -> None:
    """Remove a container's state directory, ignoring errors (as rmtree's ignore_errors).

    It holds plain files only (state.json, the exec fifo, cove-runc's config copy), so a
    listing and unlinks do; shutil (and the compression modules it imports) stays off the
    start path, loaded only for a directory that holds more."""
    try:
        names = os.listdir(sdir)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(sdir, name))
        except IsADirectoryError:
            import shutil

            shutil.rmtree(os.path.join(sdir, name), ignore_errors=True)
        except OSError:
            pass
    with contextlib.suppress(OSError):
        os.rmdir(sdir)


def _argv0(process: Process | None) -> str:
    return process.args[0] if process is not None and process.args else ""


def _pin_process(cid: str, pid: int, start_time: object) -> int:
    """An fd of /proc/PID for container ``cid``'s init, checked against its recorded start
    time after the open: from then on the fd names that process or nothing."""
    try:
        fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise StateError(f"container {cid} is not running") from e
    try:
        with open(os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd), "rb") as f:
            data = f.read()
        if int(data[data.rindex(b")") + 2 :].split()[19]) != start_time:
            raise StateError(f"container {cid} is not running")
    except OSError as e:
        os.close(fd)
        raise StateError(f"container {cid} is not running") from e
    except BaseException:
        os.close(fd)
        raise
    return fd


def _inner_pid(procfd: int, cid: str) -> int:
    """The init's pid in its own pid namespace (NSpid's last field): its number in the
    container's /proc."""
    with open(os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=procfd)) as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise ContainerStartError(f"container {cid}: no NSpid line in its init's status")


def host_root_ids(spec: Spec) -> tuple[int, int]:
    """The host uid and gid that the container's root maps to."""

    def lookup(maps: list[IDMapping]) -> int:
        for m in maps:
            if m.container_id <= 0 < m.container_id + m.size:
                return m.host_id - m.container_id
        raise InvalidSpec("the id maps do not map the container's root")

    return lookup(spec.linux.uid_mappings), lookup(spec.linux.gid_mappings)


def exit_status(status: int) -> int:
    """A waitpid status as a shell/Docker exit code (128+N for a signal)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
