"""Container verbs: the lifecycle (create, start, stop, kill, rm, pause, restart, wait),
the monitor hand-off for detached containers, and reconciliation with the kernel.

Kept apart from ``cove.engine`` so that image-only commands never import the runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from cove import private
from cove.containers import lifecycle
from cove.containers.jsonlog import Log
from cove.containers.lifecycle import alive, crash_point, self_ids
from cove.containers.netattach import network_down, network_up
from cove.containers.startup import prefork_start
from cove.engine import Engine
from cove.errors import Conflict, InvalidSpec, NotFound, StateError
from cove.spec import image as spec
from cove.state import OP_CREATE, OP_REMOVE, OP_START, Record, Status, Store, now

_ADJECTIVES = (
    "agile",
    "brave",
    "calm",
    "eager",
    "fond",
    "gentle",
    "happy",
    "keen",
    "lucid",
    "merry",
    "nifty",
    "proud",
    "quiet",
    "sharp",
    "tender",
    "vivid",
    "witty",
    "zen",
)
_NAMES = (
    "babbage",
    "curie",
    "darwin",
    "euler",
    "fermi",
    "gauss",
    "hopper",
    "kepler",
    "lovelace",
    "meitner",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "turing",
    "wirth",
)


def container_name(cid: str) -> str:
    n = int(cid[:8], 16)
    return f"{_ADJECTIVES[n % len(_ADJECTIVES)]}_{_NAMES[(n >> 8) % len(_NAMES)]}_{cid[:4]}"


class ContainerEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root = engine.root
        self.store = Store(engine.root)

    # -- plumbing -----------------------------------------------------------

    def runtime(self) -> Any:
        from cove.runtime.api import Runtime

        return Runtime(os.path.join(self.root, "runtime"), os.path.join(self.root, "cache"))

    def cdir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)

    def log_path(self, cid: str) -> str:
        return os.path.join(self.cdir(cid), f"{cid}-json.log")

    def volumes(self) -> Any:
        from cove.containers.volumes import Volumes

        return Volumes(self.root, self.store)

    def get(self, ref: str) -> Record:
        return self.reconcile(self.store.get(ref))

    def all(self) -> list[Record]:
        out = []
        for rec in self.store.all():
            with contextlib.suppress(NotFound):
                out.append(self.reconcile(rec))
        return out

    # -- reconciliation -------------------------------------------------------

    def reconcile(self, rec: Record, *, settle: float = 2.0) -> Record:
        """Make ``rec`` true to the kernel: finish or undo what a dead process left half-done,
        and notice containers whose process or monitor died. Raises NotFound if the
        container turns out never to have been finished."""
        if rec.op and not alive(rec.op_pid, rec.op_start):
            if rec.op == OP_CREATE:
                self._purge(rec)
                raise NotFound(f"no such container: {rec.id}")
            if rec.op == OP_REMOVE:
                self._purge(rec)
                raise NotFound(f"no such container: {rec.id}")
            if rec.op == OP_START:
                from cove.containers.sweep import destroy_runtime

                with contextlib.suppress(Exception):  # also a create killed before state.json
                    destroy_runtime(self.root, rec.id)
                network_down(self.root, self.store.db, rec.id)
                lifecycle.rollback_start(self.store, rec)
                return self.store.get(rec.id)
        if rec.op or not rec.status.can_kill():
            return rec
        running = rec.status != Status.RESTARTING and alive(rec.pid, rec.start_time)
        running = running and not _zombie(rec.pid)
        if alive(rec.monitor_pid, rec.monitor_start):
            if running or rec.status == Status.RESTARTING:
                return rec
            # the process is gone and its monitor is recording that
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline:
                fresh = self.store.get(rec.id)
                if fresh.status != rec.status or fresh.pid != rec.pid:
                    return fresh
                time.sleep(0.02)
            return self.store.get(rec.id)
        # the monitor died: no one reads the output, reaps, restarts or records any more.
        # A container is never left in that state: it is stopped and reported
        with contextlib.suppress(Exception):
            self.runtime().delete(rec.id, force=True)
        network_down(self.root, self.store.db, rec.id)
        if running:
            from cove.runtime.cgroups import Cgroups

            with contextlib.suppress(Exception):
                Cgroups(f"cove/{rec.id}").destroy()
        code = 137 if running else (rec.exit_code if rec.status == Status.RESTARTING else 255)
        lifecycle.monitor_died(self.store, rec, code)
        return self.store.get(rec.id)

    def _purge(self, rec: Record) -> None:
        """Remove every trace of a container: processes, cgroups, files, the row."""
        import shutil

        from cove.containers.sweep import destroy_runtime

        if alive(rec.monitor_pid, rec.monitor_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.monitor_pid, signal.SIGKILL)
        with contextlib.suppress(Exception):  # a failure keeps runtime/<id>: a sweep retries
            destroy_runtime(self.root, rec.id)
        if alive(rec.pid, rec.start_time):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        network_down(self.root, self.store.db, rec.id)
        shutil.rmtree(self.cdir(rec.id), ignore_errors=True)
        shutil.rmtree(f"/run/cove-vm/{rec.id[:20]}", ignore_errors=True)  # a vm run's sockets
        lifecycle.delete(self.store, rec.id)

    # -- create ---------------------------------------------------------------

    def create(self, opts: Any, *, op: str = "", image: Any = None) -> str:
        """``docker create``: the record, the bundle and the volumes; no process yet."""
        # invariant: the image stays pinned from its resolution until the record naming it
        # is committed; rmi and garbage collection then see this container as its user
        with self.engine.images.pin():
            return self._create(opts, op=op, image=image)

    def _create(self, opts: Any, *, op: str, image: Any) -> str:
        """``create``'s work, under the pin.

        With ``op`` the row stays marked as in flight (``run`` hands it on to ``start``; a
        build keeps it so: should the builder die, the next command removes the container).
        ``image`` is an unnamed store image (a build's intermediate state) to use as is.
        """
        from cove import container as ctr
        from cove.runtime.init import ANNOTATION_OVERLAY

        img = image if image is not None else self._image_for_run(opts)
        crash_point("create-image")  # resolved, not yet recorded: the window pin() covers
        host = spec.Platform.host()
        want = spec.Platform.parse(opts.platform) if opts.platform else None
        have = img.config.platform
        if want and (want.os, want.architecture) != (have.os, have.architecture):
            raise InvalidSpec(f"image {opts.image} is {have}, not the requested {want}")
        if (have.os, have.architecture) != (host.os, host.architecture):
            raise InvalidSpec(f"image {opts.image} is {have}; this host runs {host}")
        restart = ctr.parse_restart(opts.restart or "no")
        if restart["Name"] and opts.rm:
            raise InvalidSpec("conflicting options: cannot specify both --restart and --rm")
        log_cfg = log_config(opts.log_opts)
        opts, port_bindings = self._network_opts(opts)
        stop_signal = opts.stop_signal or img.config.config.get("StopSignal") or "SIGTERM"
        ctr.parse_signal(stop_signal)
        cid = secrets.token_hex(32)
        me, me_start = self_ids()
        if opts.name:
            opts.name = opts.name.removeprefix("/")
        rec = Record(
            cid,
            opts.name or container_name(cid),
            opts.image,
            img.id,
            now(),
            op=op or OP_CREATE,
            op_pid=me,
            op_start=me_start,
        )
        if opts.name is not None and not _valid_name(opts.name):
            raise InvalidSpec(
                f"invalid container name {json.dumps(opts.name)}, only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                "are allowed"
            )
        ctr.check_etc_inputs(opts)  # before the row: a refused value leaves nothing behind
        lifecycle.add(self.store, rec)
        crash_point("create-row")
        cdir = self.cdir(cid)
        try:
            # containers/ is searchable (a user-namespaced root reaches its bundle by path);
            # the bundle is root's alone (0700, 0710 for the mapped root's group): config.json
            # holds the environment and upper/ whatever setuid files the container made
            private.make_dir(os.path.join(self.root, "containers"), private.SHARED_MODE)
            private.make_dir(cdir, 0o700, parents=False)
            os.mkdir(os.path.join(cdir, "rootfs"), 0o700)
            for d in ("upper", "work"):
                # upper/ is the container's / (its mode shows as the root directory's)
                private.make_dir(os.path.join(cdir, d), 0o755, parents=False)
            crash_point("create-dirs")
            layers = self.engine.unpack_image(img)
            top_first = list(reversed(layers))
            image_cfg = img.config.config
            user = ctr.resolve_user(
                opts.user or image_cfg.get("User") or "", opts.group_add, top_first
            )
            hostname = opts.hostname or cid[:12]
            files = ctr.etc_files(
                cdir, hostname, opts.network, add_hosts=opts.add_hosts, dns=opts.dns
            )
            mounts, docker_mounts, copy_up = self._resolve_mounts(opts, image_cfg, top_first)
            oci = ctr.build_spec(opts, image_cfg, user, cid, files, None, mounts)
            if copy_up:
                from cove.rootfs import copy_merged
                from cove.runtime.api import host_root_ids

                shift = host_root_ids(oci) if oci.namespace("user") is not None else (0, 0)
                for rel, path in copy_up:
                    copy_merged(top_first, rel, path, uid_shift=shift[0], gid_shift=shift[1])
            if not opts.privileged and oci.process.capabilities is not None:
                oci.linux.seccomp = self._seccomp(opts, oci.process.capabilities.bounding)
            if oci.namespace("user") is not None:
                self._prepare_userns(cdir, oci)
            oci.annotations[ANNOTATION_OVERLAY] = ctr.overlay_annotation(
                self.engine.images.layers_dir,
                top_first,
                os.path.join(cdir, "upper"),
                os.path.join(cdir, "work"),
            )
            if opts.tty:
                from cove.engine_io import terminal_size

                size = terminal_size()
                if size:
                    from cove.spec.runtime import Box

                    oci.process.console_size = Box(*size)
            with open(os.path.join(cdir, "config.json"), "wb") as f:
                f.write(oci.to_bytes())
            crash_point("create-bundle")
            config = docker_config(opts, img, oci, hostname, restart, log_cfg, stop_signal)
            config["Mounts"] = docker_mounts
            host_cfg = config["HostConfig"]
            host_cfg["PortBindings"] = port_bindings
            host_cfg["PublishAllPorts"] = opts.publish_all
            host_cfg["Dns"] = list(opts.dns)
            host_cfg["ExtraHosts"] = list(opts.add_hosts) or None
            config["NetworkingConfig"] = {
                "Aliases": list(opts.network_aliases),
                "IPv4Address": opts.ip,
            }
            for key in port_bindings:
                config["Config"].setdefault("ExposedPorts", None)
                config["Config"]["ExposedPorts"] = {
                    **(config["Config"]["ExposedPorts"] or {}),
                    key: {},
                }
            config["LogPath"] = self.log_path(cid)
            lifecycle.created(self.store, cid, config, keep_op=bool(op))
        except BaseException:
            with contextlib.suppress(Exception):
                self._purge(self.store.get(cid))
            raise
        return cid

    def _image_for_run(self, opts: Any) -> Any:
        """``--pull missing|always|never`` (Docker's default: missing)."""
        if opts.pull not in ("missing", "always", "never"):
            raise InvalidSpec(f"invalid --pull {opts.pull!r}: want missing, always or never")
        if opts.pull == "always":
            from cove.registry.dist import pull

            pull(self.engine, opts.image, platform=opts.platform, tls_verify=opts.tls_verify)
        try:
            return self.engine.images.resolve(opts.image)
        except NotFound:
            if opts.pull == "never":
                raise
        from cove.registry.dist import pull

        sys.stderr.write(f"Unable to find image '{opts.image}' locally\n")
        pull(self.engine, opts.image, platform=opts.platform, tls_verify=opts.tls_verify)
        return self.engine.images.resolve(opts.image)

    def _network_opts(self, opts: Any) -> tuple[Any, dict[str, Any]]:
        """Check --network and -p; ``container:NAME`` becomes that container's netns path."""
        import dataclasses

        mode = opts.network or "bridge"
        bindings: dict[str, Any] = {}
        if mode.startswith("container:"):
            other = self.get(mode.partition(":")[2])
            if other.status != Status.RUNNING:
                raise Conflict(f"cannot join network of a non running container: {other.name}")
            opts = dataclasses.replace(opts, network=f"container:/proc/{other.pid}/ns/net")
        elif mode not in ("none", "host"):
            from cove.network.manager import DEFAULT, NetworkManager, parse_publish

            if mode != DEFAULT:
                NetworkManager(self.root, self.store.db).store.get(mode)
            for text in opts.publish:
                for p in parse_publish(text):
                    host_port = str(p.host_port or "")
                    if p.host_port_end:
                        host_port += f"-{p.host_port_end}"
                    bindings.setdefault(f"{p.container_port}/{p.proto}", []).append(
                        {"HostIp": p.host_ip, "HostPort": host_port}
                    )
        bridged = mode not in ("none", "host") and not mode.startswith("container:")
        if (opts.publish or opts.publish_all or opts.network_aliases or opts.ip) and not bridged:
            raise InvalidSpec(
                f"conflicting options: port publishing, aliases and --ip need a bridge "
                f"network, not {mode}"
            )
        return opts, bindings

    def _resolve_mounts(
        self, opts: Any, image_cfg: dict[str, Any], top_first: list[str]
    ) -> tuple[list[Any], list[dict[str, Any]], list[tuple[str, str]]]:
        """-v, --mount, --volumes-from and the image's VOLUMEs as OCI mounts plus Docker's
        ``Mounts`` records, and the (image path, volume dir) pairs of new, empty volumes
        that get the image's content."""
        from cove import container as ctr
        from cove.spec import runtime as rt

        reqs = [ctr.parse_volume(v) for v in opts.volumes]
        reqs += [ctr.parse_mount(m) for m in opts.mounts]
        targets = {r.target.rstrip("/") or "/" for r in reqs}
        for ref in opts.volumes_from:
            name, _, mode = ref.partition(":")
            other = self.get(name)
            for m in other.config.get("Mounts", []):
                if m["Destination"] in targets:
                    continue
                ro = (not m.get("RW", True)) if mode not in ("ro", "rw") else mode == "ro"
                src = m["Name"] if m["Type"] == "volume" else m["Source"]
                reqs.append(ctr.MountRequest(m["Type"], src, m["Destination"], ro))
                targets.add(m["Destination"])
        for path in image_cfg.get("Volumes") or {}:
            if path.rstrip("/") not in targets:
                reqs.append(ctr.MountRequest("volume", "", path))
        vols = self.volumes()
        copy_up: list[tuple[str, str]] = []
        mounts: list[Any] = []
        records: list[dict[str, Any]] = []
        for r in reqs:
            mode = "ro" if r.readonly else "rw"
            if r.type == "tmpfs":
                options = ["nosuid", "nodev", *(r.options or ["mode=1777"])]
                if r.readonly:
                    options.append("ro")
                mounts.append(rt.Mount(r.target, "tmpfs", "tmpfs", options))
                records.append(
                    {
                        "Type": "tmpfs",
                        "Source": "",
                        "Destination": r.target,
                        "Mode": "",
                        "RW": not r.readonly,
                        "Propagation": "",
                    }
                )
                continue
            if r.type == "bind":
                if not os.path.exists(r.source):
                    with private.content_umask():  # Docker's -v makes a missing host dir
                        os.makedirs(r.source, 0o755)
                mounts.append(rt.Mount(r.target, "bind", r.source, ["rbind", "rprivate", mode]))
                records.append(
                    {
                        "Type": "bind",
                        "Source": r.source,
                        "Destination": r.target,
                        "Mode": "",
                        "RW": not r.readonly,
                        "Propagation": "rprivate",
                    }
                )
                continue
            vol, made = vols.create(r.source or None)
            path = vols.path(vol.name)
            if made or not os.listdir(path):
                copy_up.append((r.target.strip("/"), path))
            mounts.append(rt.Mount(r.target, "bind", path, ["rbind", "rprivate", mode]))
            records.append(
                {
                    "Type": "volume",
                    "Name": vol.name,
                    "Source": path,
                    "Destination": r.target,
                    "Driver": "local",
                    "Mode": "z" if not r.readonly else "ro",
                    "RW": not r.readonly,
                    "Propagation": "",
                    "Anonymous": vol.anonymous,
                }
            )
        return mounts, records, copy_up

    def _prepare_userns(self, cdir: str, oci: Any) -> None:
        """The mapped root must own its upper layer and reach the bundle by path."""
        from cove.runtime.api import host_root_ids

        uid, gid = host_root_ids(oci)
        for d in ("upper", "work"):
            os.chown(os.path.join(cdir, d), uid, gid)
        private.own_dir(cdir, gid)  # 0710: the mapped root's group may traverse, no one else
        path = os.path.dirname(cdir)
        while path != "/":
            if not os.stat(path).st_mode & 0o001:
                raise InvalidSpec(
                    f"a user namespace needs every directory above the bundle searchable by "
                    f"others: {path} is not (chmod o+x, or use a state root elsewhere)"
                )
            path = os.path.dirname(path)

    def _seccomp(self, opts: Any, caps: list[str]) -> Any:
        from cove.runtime import seccomp

        for so in opts.security_opt:
            key, _, value = so.partition("=" if "=" in so else ":")
            if key != "seccomp":
                continue
            if value == "unconfined":
                return None
            try:
                with open(value, "rb") as f:
                    return seccomp.from_docker_json(f.read(), caps, value)
            except OSError as e:
                raise InvalidSpec(f"cannot read seccomp profile {value}: {e.strerror}") from e
        return seccomp.default_profile(caps)

    # -- start ------------------------------------------------------------------

    def start(self, ref: str, *, attach_fd: int = -1, op: str = OP_START) -> Record:
        """Hand the container to a new monitor and wait until its process runs.

        ``attach_fd`` (one end of a socketpair) is registered with the monitor before the
        process starts, so an attached client sees all of its output.
        """
        from cove.runtime.api import ContainerStartError, proc_start_time

        rec = self.get(ref) if op == OP_START else self.store.get(ref)
        container_only(rec, "start")
        if op == OP_START:
            if rec.status == Status.PAUSED:
                raise Conflict(f"cannot start a paused container {rec.name}, try unpause instead")
            if rec.status in (Status.RUNNING, Status.RESTARTING):
                return rec  # Docker: starting a running container is a no-op
            if not rec.status.can_start():
                raise StateError(f"container {rec.name} is {rec.status}: cannot start it")
            me, me_start = self_ids()
            lifecycle.begin_start(self.store, rec, me, me_start)
        cfg = rec.config
        hc = cfg.get("Config", {}).get("Healthcheck") or {}
        interval = hc.get("Interval") or 30_000_000_000
        args = {
            "root": self.root,
            "cid": rec.id,
            "log": self.log_path(rec.id),
            "max_size": str(cfg.get("HostConfig", {}).get("LogConfig", {}).get("MaxSize", 0)),
            "max_file": str(cfg.get("HostConfig", {}).get("LogConfig", {}).get("MaxFile", 1)),
            "tty": "1" if cfg.get("Config", {}).get("Tty") else "0",
            "stdin": "1" if cfg.get("Config", {}).get("OpenStdin") else "0",
            "stdin_once": "1" if cfg.get("Config", {}).get("StdinOnce") else "0",
            "health_interval": str(interval / 1e9 if hc else 0),
        }
        go_r, go_w = os.pipe()
        st_r, st_w = os.pipe()
        args["status"] = str(st_w)
        if attach_fd >= 0:
            args["attach"] = str(attach_fd)
        pid = os.fork()
        if pid == 0:  # the intermediate: a new session, then the monitor, then gone
            try:
                os.setsid()
                mpid = os.fork()
                if mpid == 0:
                    self._become_monitor(rec, args, go_r, (go_w, st_r))
                os.write(st_w, f"{mpid}\n".encode())
            finally:
                os._exit(0)
        os.close(go_r)
        os.close(st_w)
        os.waitpid(pid, 0)
        reader = os.fdopen(st_r, "rb")
        with reader:
            try:
                line = reader.readline()
                mpid = int(line)
                mstart = proc_start_time(mpid) or 0
                crash_point("start-before-handoff")
                lifecycle.hand_off(self.store, rec.id, mpid, mstart)
                crash_point("start-handoff")
                os.write(go_w, b"g")
            finally:
                os.close(go_w)
            crash_point("start-go")
            result = reader.readline().decode().strip()
        if result != "ok":
            code, _, msg = result.partition(" ")
            fresh = self.store.get(rec.id)
            if not result:
                self.reconcile(fresh)
                raise ContainerStartError(f"container {rec.name}: its monitor exited early")
            raise ContainerStartError(msg or "start failed", int(code) if code.isdigit() else 125)
        return self.store.get(rec.id)

    def _become_monitor(
        self, rec: Record, args: dict[str, str], go_r: int, close: tuple[int, int]
    ) -> None:
        """In the monitor-to-be: fork the first start's helper while this process still has
        cove imported (it waits for the launcher's go), then exec the lean monitor."""
        try:
            from cove import syscalls as sc

            for fd in close:
                os.close(fd)
            # invariant: the container's pid 1 is reparented to us when the helper that made
            # it exits; the flag survives execve
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
            keep = [int(args["status"]), int(args.get("attach", "-1"))]
            first = prefork_start(
                self.root, rec.id, go_r, args["tty"] == "1", args["stdin"] == "1", keep
            )
            os.close(go_r)
            args["first"] = ",".join(str(x) for x in first)
            wanted = sorted({0, 1, 2, *(fd for fd in (*keep, *first[:4]) if fd >= 0)})
            for fd in wanted[3:]:
                os.set_inheritable(fd, True)
            # nothing else of the launcher's (its caller's pipes) may live as long as the monitor
            prev = -1
            for fd in [*wanted, 1 << 20]:
                if fd > prev + 1:  # closerange(a, a) would close everything from a on
                    os.closerange(prev + 1, fd)
                prev = fd
            os.execv(sys.executable, _monitor_argv(args))
        except BaseException as e:
            os.write(2, f"Error: cannot start the monitor: {e}\n".encode())
        os._exit(1)

    def run_foreground(self, opts: Any) -> int:
        """``docker run`` without -d: this process is the container's parent and monitor
        (the lean path: no monitor process, output straight to our stdio)."""
        from cove.engine_io import forward_signals, proxy_tty, pump
        from cove.runtime.api import ContainerStartError, exit_status

        cid = self.create(opts)
        runtime = self.runtime()
        code = 125

        log_cfg = self.store.get(cid).config.get("HostConfig", {}).get("LogConfig", {})
        log = Log(
            self.log_path(cid), int(log_cfg.get("MaxSize", 0)), int(log_cfg.get("MaxFile", 1))
        )
        outputs: dict[int, int] = {}
        stdin_w = -1
        try:
            stdio = None
            devnull = -1
            ends: list[int] = []
            if not opts.tty:
                # the output goes through us, to our stdio and to the json-file log (``logs``);
                # -i input too: the container never holds our fds (our terminal)
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                outputs = {out_r: 0, err_r: 1}
                ends = [out_w, err_w]
                if opts.interactive:
                    devnull, stdin_w = os.pipe2(os.O_CLOEXEC)
                else:
                    devnull = os.open(os.devnull, os.O_RDONLY)
                stdio = (devnull, out_w, err_w)
            try:
                created = self._create_here(runtime, cid, stdio)
            finally:
                for fd in (devnull, *ends):
                    if fd >= 0:
                        os.close(fd)
            with forward_signals(created.pid):
                _start_exec(runtime, cid, created)
                if created.pty_master is not None:
                    status = proxy_tty(
                        created.pty_master,
                        created.pid,
                        opts.interactive,
                        lambda data: log.feed(0, data),
                    )
                    log.flush(0)
                else:
                    feed, stdin_w = stdin_w, -1  # pump owns it from here
                    status = pump(outputs, created.pid, log, stdin=feed)
            code = exit_status(status)
            oom = created.cgroups.oom_killed()
            if oom:
                code = 137
            lifecycle.exited(self.store, cid, code, oom=oom)
            return code
        except BaseException as e:
            code = e.exit_code if isinstance(e, ContainerStartError) else 125
            with contextlib.suppress(Exception):
                lifecycle.run_failed(self.store, cid, code, str(e))
            raise
        finally:
            for fd in (*outputs, stdin_w):
                if fd >= 0:
                    os.close(fd)
            os.close(log.fd)
            with contextlib.suppress(Exception):
                runtime.delete(cid, force=True)
            network_down(self.root, self.store.db, cid)
            if opts.rm:
                with contextlib.suppress(Exception):
                    self.discard(self.store.get(cid), volumes=True)

    def _create_here(self, runtime: Any, cid: str, stdio: Any) -> Any:
        """Create the container as this process's child, attach its networks and record it
        running with this process as its monitor (the foreground paths)."""
        from cove.runtime.api import proc_start_time

        created = runtime.create(cid, self.cdir(cid), stdio=stdio)
        rec = self.store.get(cid)
        rec.config["NetworkSettings"] = network_up(self.root, self.store.db, rec, created.pid)
        lifecycle.running_here(
            self.store,
            cid,
            pid=created.pid,
            start_time=proc_start_time(created.pid) or 0,
            config=rec.config,
        )
        return created

    def run_captured(self, cid: str, echo: Callable[[int, bytes], None]) -> int:
        """Run a created container to its exit with stdin closed, its output to
        ``echo(stream, data)`` and no log (a build's RUN step); its exit code.

        The row keeps the caller's ``op``: the caller removes the container, or, should it
        die, the next command does. An interrupt (Ctrl-C) kills the process on the way out.
        """
        from cove.engine_io import NO_LOG, pump
        from cove.runtime.api import exit_status

        runtime = self.runtime()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        outputs = {out_r: 0, err_r: 1}
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            try:
                created = self._create_here(runtime, cid, (devnull, out_w, err_w))
            finally:
                for fd in (devnull, out_w, err_w):
                    os.close(fd)
            _start_exec(runtime, cid, created)
            status = pump(outputs, created.pid, NO_LOG, echo)
            code = 137 if created.cgroups.oom_killed() else exit_status(status)
            lifecycle.exited(self.store, cid, code)
            return code
        finally:
            for fd in outputs:
                os.close(fd)
            with contextlib.suppress(Exception):
                runtime.delete(cid, force=True)
            network_down(self.root, self.store.db, cid)

    def run_detached(self, opts: Any) -> str:
        from cove.runtime.api import ContainerStartError

        cid = self.create(opts, op=OP_CREATE)
        try:
            self.start(cid, op=OP_CREATE)
        except ContainerStartError:
            if opts.rm:
                with contextlib.suppress(Exception):
                    self._purge(self.store.get(cid))
            raise
        return cid

    def run_attached(self, opts: Any) -> int:
        """Foreground run through a monitor (restart policies, health checks): attach, then
        return the first run's exit code, as ``docker run`` does."""
        import socket

        cid = self.create(opts, op=OP_CREATE)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.start(cid, attach_fd=theirs.fileno(), op=OP_CREATE)
        finally:
            theirs.close()
        started = self.store.get(cid).started_at
        with forward_signals_to(self, cid):
            attach_stream(mine, opts.interactive, opts.tty)
        return self.wait(cid, after=started)

    # -- stop, kill, wait, restart, pause ----------------------------------------

    def _signal_monitor(self, rec: Record) -> None:
        if alive(rec.monitor_pid, rec.monitor_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.monitor_pid, signal.SIGUSR1)

    def stop(self, ref: str, *, timeout: float | None = None, sig: int | None = None) -> Record:
        from cove import container as ctr

        rec = self.get(ref)
        if not rec.status.can_kill():
            return rec
        lifecycle.stop_requested(self.store, rec.id)
        if rec.status == Status.RESTARTING:
            self._signal_monitor(rec)
            return self._await_exit(rec, 10)
        cfg = rec.config.get("Config", {})
        if sig is None:
            sig = ctr.parse_signal(cfg.get("StopSignal") or "SIGTERM")
        if timeout is None:
            timeout = cfg.get("StopTimeout")
            timeout = 10 if timeout is None else timeout
        pidfd = _pidfd(rec.pid)
        try:
            with contextlib.suppress(ProcessLookupError):
                # a vm run's supervisor passes the signal to the command in the guest
                os.kill(rec.monitor_pid if _is_vm(rec) else rec.pid, sig)
            if rec.status == Status.PAUSED:
                self._freeze(rec, False)
            if pidfd is not None and not _wait_fd(pidfd, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)
                _wait_fd(pidfd, 10)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return self._await_exit(rec, 10)

    def _await_exit(self, rec: Record, timeout: float) -> Record:
        deadline = time.monotonic() + timeout
        while True:
            fresh = self.reconcile(self.store.get(rec.id), settle=0.0)
            if fresh.manual_stop and fresh.status == Status.RUNNING and fresh.pid != rec.pid:
                # a restart that raced with the stop: the stop wins
                with contextlib.suppress(ProcessLookupError):
                    os.kill(fresh.pid, signal.SIGKILL)
                rec = fresh
                continue
            if fresh.status not in (Status.RUNNING, Status.PAUSED) or fresh.pid != rec.pid:
                if fresh.status != Status.RESTARTING or not fresh.manual_stop:
                    return fresh
            if time.monotonic() > deadline:
                return fresh
            time.sleep(0.02)

    def kill(self, ref: str, sig: int = signal.SIGKILL) -> Record:
        from cove import container as ctr

        rec = self.get(ref)
        if rec.status == Status.RESTARTING:  # Docker: a kill ends the restart loop
            lifecycle.stop_requested(self.store, rec.id)
            self._signal_monitor(rec)
            return self._await_exit(rec, 10)
        if rec.status not in (Status.RUNNING, Status.PAUSED):
            raise Conflict(f"cannot kill container: {ref}: container {rec.id} is not running")
        stop_sig = ctr.parse_signal(rec.config.get("Config", {}).get("StopSignal") or "SIGTERM")
        if sig in (signal.SIGKILL, stop_sig):
            lifecycle.stop_requested(self.store, rec.id)
        # a vm run: SIGKILL ends its QEMU; other signals go to the command through the monitor
        os.kill(rec.monitor_pid if _is_vm(rec) and sig != signal.SIGKILL else rec.pid, sig)
        if sig == signal.SIGKILL:
            if rec.status == Status.PAUSED:
                self._freeze(rec, False)
            return self._await_exit(rec, 10)
        return rec

    def wait(self, ref: str, *, after: float = 0.0) -> int:
        """Block until the container is not running; its exit code (``docker wait``): the
        first exit after the call, also one that a restart policy follows."""
        rec = self.store.get(ref)
        after = after or time.time()
        while True:
            try:
                fresh = self.reconcile(self.store.get(rec.id), settle=0.0)
            except NotFound:
                return rec.exit_code
            if fresh.finished_at >= after:
                return fresh.exit_code
            if fresh.status in (Status.EXITED, Status.DEAD, Status.CREATED) and not fresh.op:
                return fresh.exit_code
            time.sleep(0.05)

    def restart(self, ref: str, *, timeout: float | None = None) -> Record:
        container_only(self.get(ref), "restart")
        rec = self.get(ref)
        if rec.status.can_kill():
            self.stop(rec.id, timeout=timeout)
        return self.start(rec.id)

    def _freeze(self, rec: Record, frozen: bool) -> None:
        from cove.runtime.cgroups import Cgroups

        Cgroups(f"cove/{rec.id}").freeze(frozen)

    def pause(self, ref: str) -> Record:
        rec = self.get(ref)
        container_only(rec, "pause")
        if rec.status == Status.PAUSED:
            raise Conflict(f"container {rec.id} is already paused")
        if not rec.status.can_pause():
            raise Conflict(f"container {rec.id} is not running")
        self._freeze(rec, True)
        lifecycle.paused(self.store, rec.id, True)
        return self.store.get(rec.id)

    def unpause(self, ref: str) -> Record:
        rec = self.get(ref)
        container_only(rec, "unpause")
        if not rec.status.can_unpause():
            raise Conflict(f"container {rec.id} is not paused")
        self._freeze(rec, False)
        lifecycle.paused(self.store, rec.id, False)
        return self.store.get(rec.id)

    # -- remove -----------------------------------------------------------------

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> str:
        rec = self.get(ref)
        running = rec.status.can_kill()
        if running and not force:
            state = "paused" if rec.status == Status.PAUSED else "running"
            raise Conflict(
                f"cannot remove container {rec.name}: container is {state}: "
                f"stop the container before removing or force remove"
            )
        if rec.op and alive(rec.op_pid, rec.op_start) and force:
            rec = self._await_op(rec)
        if rec.op and alive(rec.op_pid, rec.op_start):
            raise Conflict(f"container {rec.name} is being changed by another command")
        me, me_start = self_ids()
        lifecycle.begin_remove(self.store, rec.id, me, me_start)
        crash_point("remove-marked")
        if running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            if rec.status == Status.PAUSED:
                with contextlib.suppress(OSError):
                    self._freeze(rec, False)
            self._signal_monitor(rec)
        # let the monitor finish writing its log and exit: it holds files in the bundle
        deadline = time.monotonic() + 5
        while alive(rec.monitor_pid, rec.monitor_start) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.discard(rec, volumes=volumes)
        return rec.id

    def _await_op(self, rec: Record, timeout: float = 10.0) -> Record:
        """``rm -f`` of a container another command is changing: wait for that command to
        finish. A start still owned by the container's own monitor after that is stuck (a
        monitor only owns the start between the launcher's hand-off and its helper's
        report): the monitor is killed, which makes the start roll back."""
        deadline = time.monotonic() + timeout
        while rec.op and alive(rec.op_pid, rec.op_start) and time.monotonic() < deadline:
            time.sleep(0.05)
            rec = self.get(rec.id)
        if (rec.op == OP_START and rec.op_pid == rec.monitor_pid
                and alive(rec.op_pid, rec.op_start)):  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.op_pid, signal.SIGKILL)
            while alive(rec.op_pid, rec.op_start) and time.monotonic() < deadline + 5:
                time.sleep(0.02)
            rec = self.get(rec.id)
        return rec

    def discard(self, rec: Record, *, volumes: bool) -> None:
        """Purge a stopped container, and with ``volumes`` its anonymous volumes."""
        self._purge(rec)
        if volumes:
            vols = self.volumes()
            for m in rec.config.get("Mounts", []):
                if m.get("Type") == "volume" and m.get("Anonymous"):
                    with contextlib.suppress(NotFound, Conflict):
                        vols.remove(m["Name"])

    def prune(self) -> list[str]:
        out = []
        for rec in self.all():
            if rec.status in (Status.EXITED, Status.CREATED, Status.DEAD) and not rec.op:
                with contextlib.suppress(Conflict, NotFound):
                    out.append(self.remove(rec.id))
        return out

    def rename(self, ref: str, new: str) -> None:
        rec = self.get(ref)
        new = new.removeprefix("/")
        if not _valid_name(new):
            raise InvalidSpec(
                f"invalid container name {json.dumps(new)}, only [a-zA-Z0-9][a-zA-Z0-9_.-] are "
                "allowed"
            )
        if new == rec.name:
            raise InvalidSpec("renaming a container with the same name as its current name")
        lifecycle.rename(self.store, rec.id, new)
        if rec.status in (Status.RUNNING, Status.PAUSED):
            with contextlib.suppress(Exception):
                self.networks().rename(rec.id, new)

    # -- networks -----------------------------------------------------------------

    def networks(self) -> Any:
        from cove.network.manager import NetworkManager

        return NetworkManager(self.root, self.store.db)

    def connect(self, net_ref: str, ref: str, *, aliases: list[str], ip: str | None = None) -> None:
        """Add a network: hot-plugged as the next ``ethN`` when running, and remembered, so
        every later start attaches it again (also for a stopped container)."""
        from cove import container as ctr
        from cove.network.manager import settings

        for alias in aliases:  # written into the network's hosts file, one line per name
            ctr.check_etc_value("--alias", alias)
        rec = self.get(ref)
        container_only(rec, "network connect")
        mode = rec.config.get("HostConfig", {}).get("NetworkMode") or "none"
        if mode in ("none", "host") or mode.startswith("container:"):
            raise Conflict(f"container {rec.name} uses network mode {mode}: cannot connect it")
        nm = self.networks()
        n = nm.get(net_ref)
        ncfg = rec.config.setdefault("NetworkingConfig", {})
        extra = ncfg.setdefault("Extra", [])
        primary_off = bool(ncfg.get("PrimaryDetached"))
        if (n.name == mode and not primary_off) or any(e["Network"] == n.name for e in extra):
            raise Conflict(f"container {rec.name} is already connected to network {n.name}")
        cfg = rec.config
        if rec.status == Status.RUNNING:
            held = nm.store.leases(container=rec.id)
            used = {lease.iface for lease in held}
            iface = next(f"eth{i}" for i in range(64) if f"eth{i}" not in used)
            n, lease = nm.attach(rec.id, rec.name, rec.pid, n.id, iface=iface, aliases=aliases,
                                 ip=ip, default_route=False)  # fmt: skip
            current = cfg.get("NetworkSettings") or {}
            current.setdefault("Networks", {}).update(settings([(n, lease)], [])["Networks"])
            cfg["NetworkSettings"] = current
        if n.name == mode:
            ncfg["PrimaryDetached"] = False
        else:
            extra.append({"Network": n.name, "Aliases": list(aliases), "IPv4Address": ip})
        lifecycle.set_config(self.store, rec.id, cfg)

    def disconnect(self, net_ref: str, ref: str) -> None:
        rec = self.get(ref)
        container_only(rec, "network disconnect")
        nm = self.networks()
        n = nm.get(net_ref)
        cfg = rec.config
        ncfg = cfg.setdefault("NetworkingConfig", {})
        extra = ncfg.get("Extra") or []
        mode = cfg.get("HostConfig", {}).get("NetworkMode") or "none"
        leased = any(x.network == n.id for x in nm.store.leases(container=rec.id))
        remembered = any(e["Network"] == n.name for e in extra)
        if not leased and not remembered and n.name != mode:
            raise Conflict(f"container {rec.id} is not connected to network {n.name}")
        nm.detach(rec.id, n.id, pid=rec.pid if rec.status == Status.RUNNING else 0)
        ncfg["Extra"] = [e for e in extra if e["Network"] != n.name]
        if n.name == mode:  # the run's own network: gone for later starts too (as Docker)
            ncfg["PrimaryDetached"] = True
        ns = cfg.get("NetworkSettings") or {}
        gone = ns.get("Networks", {}).pop(n.name, None)
        if gone and ns.get("IPAddress") == gone.get("IPAddress"):
            for key in ("IPAddress", "Gateway", "MacAddress"):
                ns[key] = ""
            ns["IPPrefixLen"] = 0
        ns["Ports"] = {
            k: v for k, v in (ns.get("Ports") or {}).items()
            if any(p.container_port == int(k.split("/")[0]) for p in nm.store.ports(rec.id))
        }  # fmt: skip
        cfg["NetworkSettings"] = ns
        lifecycle.set_config(self.store, rec.id, cfg)

    def network_users(self) -> dict[str, str]:
        return {r.id: r.name for r in self.store.all()}

    # -- inspect ------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        rec = self.get(ref)
        return self.inspect_record(rec)

    def inspect_record(self, rec: Record) -> dict[str, Any]:
        running = rec.status in (Status.RUNNING, Status.PAUSED)
        cfg = rec.config
        state: dict[str, Any] = {
            "Status": rec.status.value,
            "Running": running or rec.status == Status.RESTARTING,  # as Docker says
            "Paused": rec.status == Status.PAUSED,
            "Restarting": rec.status == Status.RESTARTING,
            "OOMKilled": rec.oom_killed,
            "Dead": rec.status == Status.DEAD,
            "Pid": rec.pid if running else 0,
            "ExitCode": rec.exit_code,
            "Error": rec.error,
            "StartedAt": _ts(rec.started_at),
            "FinishedAt": _ts(rec.finished_at),
        }
        if cfg.get("Config", {}).get("Healthcheck"):
            state["Health"] = rec.health or {"Status": "starting", "FailingStreak": 0, "Log": []}
        return {
            "Id": rec.id,
            "Created": _ts(rec.created),
            "Path": cfg.get("Path", ""),
            "Args": cfg.get("Args", []),
            "State": state,
            "Image": rec.image_id,
            "ResolvConfPath": os.path.join(self.cdir(rec.id), "resolv.conf"),
            "HostnamePath": os.path.join(self.cdir(rec.id), "hostname"),
            "HostsPath": os.path.join(self.cdir(rec.id), "hosts"),
            "LogPath": self.log_path(rec.id),
            "Name": "/" + rec.name,
            "RestartCount": rec.restart_count,
            "Driver": "overlay",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "HostConfig": cfg.get("HostConfig", {}),
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "UpperDir": os.path.join(self.cdir(rec.id), "upper"),
                    "WorkDir": os.path.join(self.cdir(rec.id), "work"),
                },
            },
            "Mounts": [
                {k: v for k, v in m.items() if k != "Anonymous"} for m in cfg.get("Mounts", [])
            ],
            "Config": cfg.get("Config", {"Image": rec.image}),
            "NetworkSettings": cfg.get(
                "NetworkSettings",
                {"Networks": {}, "Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""},
            ),
        }

    # -- helpers shared with exec and the file verbs -------------------------------------

    def oci_spec(self, rec: Record) -> Any:
        from cove.spec.runtime import Spec

        with open(os.path.join(self.cdir(rec.id), "config.json"), "rb") as f:
            return Spec.parse(f.read())

    def layers_top_first(self, rec: Record) -> list[str]:
        """The container's upper dir, then the image's layers, top first."""
        from cove.runtime.init import ANNOTATION_OVERLAY

        oci = self.oci_spec(rec)
        overlay = json.loads(oci.annotations[ANNOTATION_OVERLAY])
        lowers = [os.path.join(overlay["layers_dir"], p) for p in overlay["lower"]]
        return [overlay["upper"], *lowers]

    def id_shift(self, rec: Record) -> tuple[int, int]:
        from cove.runtime.api import host_root_ids

        oci = self.oci_spec(rec)
        if oci.namespace("user") is None:
            return 0, 0
        return host_root_ids(oci)


def _start_exec(runtime: Any, cid: str, created: Any) -> None:
    """Let a created container exec its process; reap it should the exec fail."""
    runtime.start(cid)
    try:
        runtime.wait_exec(created)
    except Exception:
        os.waitpid(created.pid, 0)
        raise


def _is_vm(rec: Record) -> bool:
    return bool(rec.config.get("HostConfig", {}).get("Isolation") == "vm")


def container_only(rec: Record, verb: str) -> None:
    """Verbs that work on namespaces, cgroups or the upper directory have none of those to
    work on in a ``run --vm``: its process is a QEMU."""
    if rec.config.get("HostConfig", {}).get("Isolation") == "vm":
        from cove.errors import Unsupported

        raise Unsupported(f"{verb} does not apply to {rec.name}: it runs in a vm (--vm)")


def _valid_name(name: str) -> bool:
    import re

    # fullmatch: "$" alone also matches before a trailing newline ("name\n")
    return bool(re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name))


def _ts(t: float) -> str:
    import datetime

    if not t:
        return "0001-01-01T00:00:00Z"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def _zombie(pid: int) -> bool:
    from cove.sys.proc import zombie as z

    return z(pid)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


def _wait_fd(fd: int, timeout: float) -> bool:
    import select

    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(ready)


def log_config(opts: list[str]) -> dict[str, Any]:
    from cove import container as ctr

    cfg: dict[str, str] = {}
    out: dict[str, Any] = {"Type": "json-file", "Config": cfg, "MaxSize": 0, "MaxFile": 1}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq:
            raise InvalidSpec(f"invalid log option {o!r}: want KEY=VALUE")
        if key == "max-size":
            out["MaxSize"] = ctr.parse_size(value, "max-size")
        elif key == "max-file":
            if not value.isdigit() or int(value) < 1:
                raise InvalidSpec(f"invalid max-file {value!r}: want a positive number")
            out["MaxFile"] = int(value)
        else:
            raise InvalidSpec(f"unknown log opt '{key}' for json-file log driver")
        cfg[key] = value
    return out


def docker_config(
    opts: Any,
    img: Any,
    oci: Any,
    hostname: str,
    restart: dict[str, Any],
    log_cfg: dict[str, Any],
    stop_signal: str,
) -> dict[str, Any]:
    from cove import container as ctr

    image_cfg = img.config.config
    labels = dict(image_cfg.get("Labels") or {})
    for label in opts.labels:
        k, _, v = label.partition("=")
        labels[k] = v
    exposed = dict(image_cfg.get("ExposedPorts") or {})
    for e in opts.expose:
        exposed[e if "/" in e else f"{e}/tcp"] = {}
    args = list(oci.process.args)
    entrypoint = (
        (opts.entrypoint.split() if opts.entrypoint else [])
        if opts.entrypoint is not None
        else image_cfg.get("Entrypoint")
    )
    cmd = list(opts.command) if opts.command else image_cfg.get("Cmd")
    hc = ctr.healthcheck(opts, image_cfg)
    res = oci.linux.resources
    config = {
        "Hostname": hostname,
        "Domainname": "",
        "User": opts.user or image_cfg.get("User") or "",
        "AttachStdin": opts.interactive and not opts.detach,
        "AttachStdout": not opts.detach,
        "AttachStderr": not opts.detach,
        "ExposedPorts": exposed or None,
        "Tty": opts.tty,
        "OpenStdin": opts.interactive,
        "StdinOnce": opts.interactive and not opts.detach,
        "Env": oci.process.env,
        "Cmd": cmd,
        "Image": opts.image,
        "Volumes": image_cfg.get("Volumes"),
        "WorkingDir": oci.process.cwd if oci.process.cwd != "/" else "",
        "Entrypoint": entrypoint,
        "Labels": labels,
        "StopSignal": stop_signal,
    }
    if opts.stop_timeout is not None:
        config["StopTimeout"] = opts.stop_timeout
    if hc:
        config["Healthcheck"] = hc
    host = {
        "Binds": list(opts.volumes) or None,
        "LogConfig": log_cfg,
        "NetworkMode": opts.network,
        "PortBindings": {},
        "RestartPolicy": restart,
        "AutoRemove": opts.rm,
        "VolumesFrom": list(opts.volumes_from) or None,
        "CapAdd": list(opts.cap_add) or None,
        "CapDrop": list(opts.cap_drop) or None,
        "Init": opts.init,
        "Privileged": opts.privileged,
        "ReadonlyRootfs": opts.read_only,
        "SecurityOpt": list(opts.security_opt) or None,
        "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in opts.tmpfs} or None,
        "Memory": res.memory.limit if res and res.memory and res.memory.limit else 0,
        "NanoCpus": int(float(opts.cpus) * 1e9) if opts.cpus else 0,
        "PidsLimit": opts.pids_limit,
        "Mounts": list(opts.mounts) or None,
    }
    return {
        "Config": config,
        "HostConfig": host,
        "Path": args[0],
        "Args": args[1:],
    }


def _monitor_argv(args: dict[str, str]) -> list[str]:
    """A fresh interpreter without site (-I -S): the monitor's memory is every container's
    cost. Our sys.path is handed over so it finds cove and, in its helpers, the deps.

    The command line names ``cove.monitor`` (a shim over ``cove.containers.monitor``), as
    it always has: ps/pgrep users find monitors by it."""
    import cove

    here = os.path.dirname(os.path.dirname(os.path.abspath(cove.__file__)))
    path = [here, *(p for p in sys.path if p and os.path.isdir(p) and p != here)]
    code = f"import sys; sys.path[:0] = {path!r}; from cove.monitor import main; main()"
    return [sys.executable, "-I", "-S", "-c", code, *(f"{k}={v}" for k, v in args.items())]


def forward_signals_to(ce: ContainerEngine, cid: str) -> Any:
    """Signals to whatever process the container runs now (it may have restarted)."""
    from cove.engine_io import forward_signals

    def current() -> int:
        rec = ce.store.get(cid)
        return rec.pid if alive(rec.pid, rec.start_time) else 0

    return forward_signals(current)


def attach_stream(sock: Any, interactive: bool, tty: bool) -> None:
    """Copy a monitor's framed output to our stdout/stderr, our stdin to it, until it ends."""
    import select

    stdin = 0
    saved = None
    if tty and interactive and os.isatty(stdin):
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(stdin)
        ttymod.setraw(stdin)
    buf = b""
    fds = [sock.fileno()] + ([stdin] if interactive else [])
    try:
        while True:
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 8:
                    size = int.from_bytes(buf[4:8], "big")
                    if len(buf) < 8 + size:
                        break
                    out = 2 if buf[0] == 2 else 1
                    os.write(out, buf[8 : 8 + size])
                    buf = buf[8 + size :]
            if interactive and stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    fds.remove(stdin)
                    import socket

                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()


def connect_attach(ce: ContainerEngine, rec: Record) -> Any:
    import socket

    dfd = os.open(ce.cdir(rec.id), os.O_PATH | os.O_DIRECTORY)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(f"/proc/self/fd/{dfd}/attach.sock")
    except OSError as e:
        s.close()
        raise Conflict(f"cannot attach to container {rec.name}: its monitor is gone") from e
    finally:
        os.close(dfd)
    return s
