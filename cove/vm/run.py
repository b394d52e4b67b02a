"""``cove run --vm``: one OCI image's command in its own virtual machine.

The same image, the same semantics as the container path (ENTRYPOINT/CMD, env, user,
workdir come from ``cove.bundle.build_spec``), a different isolation: the guest has
its own kernel. The image's layers are flattened once per image id into an ext4 file
(``mkfs.ext4 -d``, no mount of the result needed), and every run boots on a qcow2
overlay of it that is thrown away, so runs never change it. The run is a row in the
containers table (``ps`` shows ISOLATION vm), its supervisor is this process (or, with
``-d``, a daemon forked from it) and its QEMU a child that dies with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cove.errors import CoveError, HostFailure, HostToolFailed, InvalidSpec, NotFound, VMFailed
from cove.spec import image as spec
from cove.sys import private
from cove.sys.syscalls import die_with_parent
from cove.sys.userns import rootless
from cove.vm import arch, debarch
from cove.vm import qemu as qcmd
from cove.vm.vmstore import run_dir

RUN_DIR = "/run/cove-vm"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
USER_NET = ("10.0.2.15/24", "10.0.2.2", "10.0.2.3")  # QEMU's user-mode network, fixed


@dataclass
class VMRunOptions:
    memory_mib: int = 512
    cpus: int = 1
    kernel: str | None = None

    @classmethod
    def of(cls, opts: Any) -> VMRunOptions:
        """A vm's size and kernel from run options (``--memory``, ``--cpus``, ``--kernel``)."""
        import math

        from cove.spec.vm import parse_bytes

        return cls(
            memory_mib=parse_bytes(opts.memory, default_unit="m") >> 20 if opts.memory else 512,
            cpus=max(1, math.ceil(float(opts.cpus))) if opts.cpus else 1,
            kernel=opts.kernel,
        )


def _readonly_source(host: str) -> Callable[[], None]:
    """virtiofsd of a ``:ro`` volume sees its source read-only: a bind remounted read-only in
    a mount namespace of its own (the guest's ``ro`` alone, a guest root could remount)."""

    def pre() -> None:
        from cove.sys import syscalls as sc

        die_with_parent()
        # invariant: a private mount namespace, so the read-only bind reaches no one else
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount(host, host, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, host, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
        # the remount made only the top read-only; a submount of the directory would stay
        # writable to virtiofsd (whose own MS_REC bind keeps each mount's flags): all of it
        try:
            sc.mount_setattr(host, sc.MOUNT_ATTR_RDONLY, recursive=True)
        except OSError as e:
            if e.errno != errno.ENOSYS:  # kernel < 5.12: the top only, as Docker falls back
                raise

    return pre


VIRTIOFSD_PIDDIR = "/run/virtiofsd"  # QEMU 7.2's virtiofsd: <localstatedir>/run/virtiofsd


def _virtiofsd_pre(host: str, ro: bool) -> Callable[[], None]:
    """virtiofsd's preexec: the read-only bind of a ``:ro`` volume; rootless, also the
    user's own directory over VIRTIOFSD_PIDDIR (root's), where virtiofsd writes a pidfile it
    cannot be told to put elsewhere, in virtiofsd's private mount namespace."""
    readonly = _readonly_source(host) if ro else None
    if not rootless():
        return readonly or die_with_parent
    from cove.sys import syscalls as sc
    from cove.sys.userns import runtime_dir

    piddir = os.path.join(runtime_dir(), "virtiofsd")
    os.makedirs(piddir, 0o700, exist_ok=True)
    if not os.path.isdir(VIRTIOFSD_PIDDIR):
        raise CoveError(
            f"rootless --vm volumes need {VIRTIOFSD_PIDDIR} (virtiofsd's pidfiles; "
            f"scripts/install.sh makes it): as root, mkdir -m 0700 {VIRTIOFSD_PIDDIR}"
        )

    def pre() -> None:
        if readonly is not None:
            readonly()  # in a private mount namespace from here
        else:
            die_with_parent()
            # invariant: a private mount namespace, so the bind below reaches no one else
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount(piddir, VIRTIOFSD_PIDDIR, None, sc.MS_BIND)

    return pre


# -- the pieces, each cached --------------------------------------------------------------


def guest_arch(opts: Any, have: spec.Platform) -> arch.Arch:
    """The guest architecture of a ``run --vm``: the image's (a foreign one emulated by
    QEMU's TCG); a ``--platform`` the image is not is refused."""
    want = spec.Platform.parse(opts.platform) if opts.platform else None
    if want and (want.os, want.architecture) != (have.os, have.architecture):
        raise InvalidSpec(f"image {opts.image} is {have}, not the requested {want}")
    if have.os != "linux":
        raise InvalidSpec(f"image {opts.image} is {have}: --vm boots linux images only")
    return arch.for_goarch(have.architecture)


def guest_kernel(root: str, explicit: str | None) -> Any:
    """The kernel to boot (with its modules beside it, cove's kernel layout)."""
    from cove.vm import kernel as kmod

    if explicit:
        path = os.path.abspath(explicit)
        if os.path.isdir(path):
            path = os.path.join(path, "vmlinuz")
        if not os.path.isfile(path):
            raise NotFound(f"no such kernel: {explicit}")
        k = kmod.Kernel(os.path.basename(os.path.dirname(path)), os.path.dirname(path))
        if not os.path.isdir(k.modules):
            raise InvalidSpec(f"kernel {explicit}: no modules/{k.release}/ beside it "
                              "(use a kernel from `cove vm kernel fetch`)")  # fmt: skip
        return k
    have = kmod.installed(kmod.kernels_dir(root))
    if have:
        return have[-1]
    sys.stderr.write("no guest kernel yet: fetching Debian's cloud kernel (cove vm kernel fetch)\n")
    return kmod.fetch(kmod.kernels_dir(root))


def rootfs_image(engine: Any, img: Any, *, note: Callable[[str], None] | None = None) -> str:
    """The image's root file system as an ext4 file, built once per image id."""
    from cove.sys.syscalls import flocked

    cache = os.path.join(engine.root, "vmroot")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    path = os.path.join(cache, img.id.removeprefix("sha256:") + ".ext4")
    if os.path.exists(path):
        return path
    with flocked(path + ".lock"):
        if os.path.exists(path):
            return path
        if note:
            note(f"building the vm root file system of {img.id[:19]} (once per image)")
        layers = engine.unpack_image(img)
        size = sum(engine.images.layer_size(d) or 0 for d in img.config.diff_ids)
        # room for what runs write (they go to a throw-away overlay, not into this file)
        total = max(size * 2, size + (256 << 20), 64 << 20)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            _mkfs_from_layers(list(reversed(layers)), tmp, total)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return path


def _mkfs_from_layers(top_first: list[str], dest: str, size: int) -> None:
    """``mkfs.ext4 -d`` of the layers' merged view, mounted read-only in a child's private
    mount namespace (so the mount vanishes with it, whatever happens)."""
    from cove.sys import overlay

    with open(dest, "wb") as f:
        f.truncate(size)
    mnt = tempfile.mkdtemp(prefix="cove-vmroot-")
    empty = tempfile.mkdtemp(prefix="cove-vmroot-empty-")

    def mounted() -> None:
        # overlay semantics even for one layer (its whiteouts hidden): an empty lower below
        lowers = top_first if len(top_first) > 1 else [*top_first, empty]
        overlay.mount(overlay.Layers(lowers), mnt)
        proc = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-L", "cove-root",
             "-E", "root_owner=0:0", "-d", mnt, dest],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise HostToolFailed(
                (proc.stderr.strip().splitlines() or ["mkfs.ext4 failed"])[-1], "mkfs.ext4"
            )

    try:
        overlay.in_private_mount_ns(mounted)
    except CoveError as e:
        raise HostFailure(f"cannot build the vm root file system: {e}") from e
    finally:
        os.rmdir(mnt)
        os.rmdir(empty)


# -- the run --------------------------------------------------------------------------------


def _bind_volumes(opts: Any) -> list[tuple[str, str, bool]]:
    """``-v HOST:CTR[:ro]`` for a VM: host directories, shared over virtiofs."""
    out = []
    for v in opts.volumes:
        parts = v.split(":")
        if len(parts) not in (2, 3) or not parts[0].startswith("/"):
            raise InvalidSpec(f"--vm takes -v HOST_DIR:CONTAINER_DIR[:ro], not {v!r}")
        host, target = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise InvalidSpec(f"invalid volume mode {mode!r} in {v!r}")
        if not target.startswith("/"):
            raise InvalidSpec(f"invalid volume target {target!r}: must be absolute")
        if not os.path.lexists(host):
            with private.content_umask():  # Docker's -v rule: a missing host dir is made
                os.makedirs(host)
        if not os.path.isdir(host):
            raise InvalidSpec(f"--vm shares directories: {host} is not one")
        out.append((os.path.realpath(host), target, mode == "ro"))
    if opts.mounts or opts.tmpfs or opts.volumes_from:
        raise InvalidSpec("--vm takes volumes as -v HOST_DIR:CONTAINER_DIR[:ro] only")
    return out


class VMRun:
    """One ``run --vm`` from creation of its record to its end."""

    def __init__(self, ce: Any, opts: Any, vm: VMRunOptions) -> None:
        self.ce = ce
        self.opts = opts
        self.vm = vm
        self.procs: list[subprocess.Popen[bytes]] = []
        self.qemu: subprocess.Popen[bytes] | None = None
        self.cid = ""
        self.tap = ""
        self.template: Any = None  # template.Template when this run restores one
        self.ctl: Any = None  # the control socket, connected before the relay starts

    # -- create -----------------------------------------------------------------------------

    def create(self) -> str:
        # invariant: as ContainerEngine.create, the image (and the VM root built from it)
        # stays pinned until the record naming it is committed
        with self.ce.engine.images.pin():
            return self._create()

    def _create(self) -> str:
        from cove import bundle as ctr
        from cove.containers import lifecycle
        from cove.containers.engine import container_name, docker_config, log_config
        from cove.containers.lifecycle import self_ids
        from cove.spec.vm import PortForward
        from cove.state import OP_CREATE, Record, now
        from cove.vm import accel, agent

        opts = self.opts
        if opts.tty:
            raise InvalidSpec("--vm does not give the command a terminal yet: drop -t")
        if opts.restart and opts.restart != "no":
            raise InvalidSpec("--vm runs do not take --restart")
        ignored = [flag for flag, used in (
            ("--read-only", opts.read_only), ("-P", opts.publish_all), ("--dns", opts.dns),
            ("--add-host", opts.add_hosts), ("--ip", opts.ip),
            ("--network-alias", opts.network_aliases), ("--cap-add", opts.cap_add),
            ("--cap-drop", opts.cap_drop), ("--privileged", opts.privileged),
            ("--security-opt", opts.security_opt), ("--init", opts.init),
            ("--health-cmd", opts.health_cmd), ("--ulimit", opts.ulimits),
            ("--pids-limit", opts.pids_limit), ("--device", getattr(opts, "devices", None)),
        ) if used]  # fmt: skip
        if ignored:
            raise InvalidSpec(f"{', '.join(ignored)}: not supported with --vm")
        ce = self.ce
        img = ce.image_for_run(opts)
        self.arch = guest_arch(opts, img.config.platform)
        self.volumes = _bind_volumes(opts)
        self.ports = tuple(PortForward.parse(p) for p in opts.publish)
        if opts.network in ("bridge", "default"):
            opts.network = "user"  # a VM's default network is QEMU's own (slirp)
        if self.ports and opts.network != "user":
            raise InvalidSpec("--vm publishes ports (-p) on its user-mode network only")
        if opts.network.startswith("container:") or opts.network == "host":
            raise InvalidSpec(f"--vm cannot share a network namespace (--network {opts.network})")
        if opts.network not in ("user", "none") and rootless():
            raise InvalidSpec(
                f"--vm --network {opts.network} needs root (a tap on its bridge); "
                "rootless, --vm uses QEMU's user network, with -p for ports"
            )
        if arch.foreign(self.arch) and not self.vm.kernel:  # that architecture's kernel
            kernel = debarch.guest_kernel(ce.engine.root, self.arch)
        else:
            kernel = guest_kernel(ce.engine.root, self.vm.kernel)
        self.kernel = kernel
        if arch.foreign(self.arch):  # KVM runs only the host's architecture
            arch.check_installed(self.arch)
            self.verdict = accel.Verdict("tcg", f"{self.arch.name} guest: tcg emulation")
        else:
            self.verdict = accel.choose("auto", ce.engine.root, kernel.vmlinuz, qcmd.QEMU)

        def note(message: str) -> None:
            sys.stderr.write(message + "\n")

        rootfs = rootfs_image(ce.engine, img, note=note)
        self.base_initrd = agent.base_initrd(
            agent.initrd_dir(ce.engine.root), kernel,
            debarch.busybox(ce.engine.root, self.arch) if arch.foreign(self.arch) else None,
        )  # fmt: skip
        layers = list(reversed(ce.engine.unpack_image(img)))
        image_cfg = img.config.config
        user = ctr.resolve_user(opts.user or image_cfg.get("User") or "", opts.group_add, layers)
        cid = secrets.token_hex(32)
        hostname = opts.hostname or cid[:12]
        opts.hostname = hostname
        oci = ctr.build_spec(opts, image_cfg, user, cid, {}, None, [])
        me, me_start = self_ids()
        name = (opts.name or container_name(cid)).removeprefix("/")
        rec = Record(cid, name, opts.image, img.id, now(), op=OP_CREATE, op_pid=me,
                     op_start=me_start)  # fmt: skip
        lifecycle.add(ce.store, rec)
        self.cid = cid
        try:
            cdir = ce.cdir(cid)
            private.make_dir(os.path.dirname(cdir), private.SHARED_MODE)
            os.mkdir(cdir, 0o700)
            self.files = qcmd.RunFiles(cdir, os.path.join(run_dir(), cid[:20]))
            from cove.vm import disks
            from cove.vm import template as tmpl

            self.template = self._template(rootfs, note)
            # a template's guest read its disk's size at boot: every run's is that size
            size = tmpl.DISK_SIZE if self.template else None
            disks.overlay(self.files.disk, rootfs, "raw", size)  # cove's own ext4: never probed
            log_cfg = log_config(opts.log_opts)
            stop_signal = opts.stop_signal or image_cfg.get("StopSignal") or "SIGTERM"
            config = docker_config(opts, img, oci, hostname, {"Name": "", "MaximumRetryCount": 0},
                                    log_cfg, stop_signal)  # fmt: skip
            host_cfg = config["HostConfig"]
            host_cfg["Isolation"] = "vm"
            host_cfg["NetworkMode"] = opts.network
            host_cfg["Binds"] = [f"{h}:{t}{':ro' if ro else ''}" for h, t, ro in self.volumes]
            host_cfg["PortBindings"] = {
                f"{p.guest_port}/{p.proto}": [{"HostIp": p.host_ip, "HostPort": str(p.host_port)}]
                for p in self.ports
            }
            config["LogPath"] = ce.log_path(cid)
            config["NetworkSettings"] = {"Ports": host_cfg["PortBindings"] or None}
            config["VM"] = {
                "Kernel": kernel.vmlinuz,
                "KernelRelease": kernel.release,
                "Accelerator": self.verdict.accel,
                "AcceleratorReason": self.verdict.reason,
                "RootFS": rootfs,
                "Memory": self.vm.memory_mib << 20,
                "Cpus": self.vm.cpus,
                "ConsoleLog": self.files.console_log,
                "Template": self.template.dir if self.template else "",
            }
            address, gateway, dns = USER_NET if opts.network == "user" else ("", "", "")
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
            if opts.network not in ("user", "none"):
                import ipaddress

                from cove.network.manager import NetworkManager

                self.tap = tap_name(cid)
                nets = NetworkManager(ce.engine.root, ce.store.db)
                n, lease = nets.lease_vm(cid, name, opts.network, self.tap)
                prefix = ipaddress.IPv4Network(n.subnet).prefixlen
                address, gateway, dns = f"{lease.address}/{prefix}", n.gateway, n.gateway
                mac = lease.mac
                config["NetworkSettings"]["Networks"] = {n.name: {
                    "NetworkID": n.id, "IPAddress": lease.address, "Gateway": n.gateway,
                    "IPPrefixLen": prefix, "MacAddress": mac}}  # fmt: skip
            self.mac = mac
            run_cfg = agent.RunConfig(
                args=list(oci.process.args),
                env=list(oci.process.env),
                cwd=oci.process.cwd,
                uid=oci.process.user.uid,
                gid=oci.process.user.gid,
                groups=list(oci.process.user.additional_gids or []),
                hostname=hostname,
                address=address,
                gateway=gateway,
                dns=dns,
                volumes=[(f"cove{i}", t, ro) for i, (_, t, ro) in enumerate(self.volumes)],
                mac=mac,
                stdin=bool(opts.interactive),
            )
            self.run_cfg = run_cfg
            if not self.template:
                self._write_initrd()
            lifecycle.created(ce.store, cid, config, keep_op=False)
        except BaseException:
            with contextlib.suppress(Exception):
                self.cleanup(remove=True)
            raise
        return cid

    def _template(self, rootfs: str, note: Callable[[str], None]) -> Any:
        """The booted template this run restores (built the first time), or None: a run
        the template cannot be (see cove.vm.template), or one that failed to build."""
        from cove.vm import template as tmpl

        if not tmpl.enabled() or self.volumes or self.opts.network not in tmpl.NETWORKS:
            return None
        if arch.foreign(self.arch) or not tmpl.supported(self.arch.name):
            return None  # an arm64 host's own guests too: no freshness program for them
        if os.path.getsize(rootfs) > tmpl.DISK_SIZE:
            return None
        shape = tmpl.Shape(self.arch.name, self.verdict.accel, self.vm.memory_mib, self.vm.cpus,
                           self.opts.network, self.kernel.vmlinuz, self.base_initrd)  # fmt: skip
        try:
            return tmpl.ensure(self.ce.engine.root, shape, note)
        except CoveError as e:
            _warn(f"cannot build the vm template ({e}): booting cold")
            return None

    def _write_initrd(self) -> None:
        from cove.vm import agent

        agent.run_initrd(self.base_initrd, self.run_cfg, self.files.initrd,
                         aarch64=self.arch == arch.AARCH64)  # fmt: skip

    # -- start and supervise -------------------------------------------------------------------

    def argv(self) -> list[str]:
        from cove.vm import agent

        argv = qcmd.run_command(
            accel=self.verdict.accel,
            cpus=self.vm.cpus,
            memory_mib=self.vm.memory_mib,
            kernel=self.kernel.vmlinuz,
            append=agent.cmdline(),
            files=self.files,
            volumes=len(self.volumes),
            interactive=self.opts.interactive,
            network=self.opts.network,
            ports=self.ports,
            tap=self.tap or None,
            mac=self.mac,
        )
        return arch.adapt(argv, self.arch)  # an aarch64 guest: virt, TCG, ttyAMA0

    def launch(self) -> None:
        """virtiofsd for each volume, the tap, then QEMU (children of this process)."""
        files = self.files
        shutil.rmtree(files.run, ignore_errors=True)
        os.makedirs(files.run, mode=0o700)
        for path in (files.stdout, files.stderr, files.exit, files.console_log):
            with open(path, "wb"):
                pass
        for i, (host, _, ro) in enumerate(self.volumes):
            argv = [VIRTIOFSD, f"--socket-path={files.fs(i)}", "-o", f"source={host}",
                    "-o", "cache=none", "-o", "no_posix_lock"]  # fmt: skip
            try:
                self.procs.append(subprocess.Popen(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=_virtiofsd_pre(host, ro),
                ))  # fmt: skip
            except OSError as e:
                raise HostToolFailed(f"cannot start {VIRTIOFSD}: {e.strerror}", VIRTIOFSD) from e
            deadline = time.monotonic() + 10
            while not os.path.exists(files.fs(i)):
                if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                    raise HostToolFailed(f"virtiofsd did not start for volume {host}", VIRTIOFSD)
                time.sleep(0.01)
        if self.tap:
            from cove.network.manager import NetworkManager

            nets = NetworkManager(self.ce.engine.root, self.ce.store.db)
            lease = nets.store.leases(container=self.cid)[0]
            nets.plug_tap(nets.store.get(lease.network), self.tap)
        if self.template:
            try:
                self._restore()
                return
            except (CoveError, OSError) as e:  # any failure of the copy: boot cold instead
                if self.qemu is not None:
                    self.qemu.kill()
                    self.qemu.wait()
                    self.qemu = None
                if self.ctl is not None:
                    self.ctl.close()
                    self.ctl = None
                _warn(f"cannot restore the vm template {os.path.basename(self.template.dir)} "
                      f"({e}): booting cold")  # fmt: skip
                self.template = None
                # the cold boot gets fresh ports and the run's own initramfs
                for path in (files.stdout, files.stderr, files.exit, files.console_log):
                    with open(path, "wb"):
                        pass
                self._write_initrd()
        self.qemu = self._popen(self.argv())
        time.sleep(0.05)
        if self.qemu.poll() is not None:
            raise VMFailed(f"qemu failed (exit {self.qemu.returncode}): {_last(files.qemu_log)}")

    def _popen(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        with open(self.files.qemu_log, "ab") as qlog:
            try:
                return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                        preexec_fn=_qemu_preexec, start_new_session=True,
                                        pass_fds=pass_fds)  # fmt: skip
            except OSError as e:
                raise VMFailed(f"cannot start {qcmd.QEMU}: {e.strerror}") from e

    def _restore(self) -> None:
        """QEMU restoring the template, running; then the run's config, clock and entropy
        sent to the parked agent (the moment the copy runs, so the clock is right)."""
        from cove.vm import agent
        from cove.vm import template as tmpl

        tpl = self.template
        shape_argv = tmpl.command(
            _shape_of(tpl), self.files, memory_file=tpl.memory, restore=True,
            ports=self.ports, mac=self.mac,
        )  # fmt: skip
        try:
            fd = os.open(tpl.state, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise VMFailed(f"template state {tpl.state}: {e.strerror}") from e
        try:
            self.qemu = self._popen(shape_argv, (fd,))
            tmpl.restore(tpl, self.qemu, self.files, fd)
        finally:
            os.close(fd)
        from cove.vm.relay import connect_ctl

        self.ctl = connect_ctl(self.files.ctl)
        if self.ctl is None:
            raise VMFailed(f"vm run {self.cid[:12]}: cannot connect to its restored vm's control "
                           f"port {self.files.ctl}")  # fmt: skip
        msg = agent.run_message(self.run_cfg, time.time_ns(), secrets.token_bytes(64),
                                arch=self.arch.name)  # fmt: skip
        try:
            self.ctl.sendall(msg)
        except OSError as e:
            raise VMFailed(f"cannot send the run to the restored vm: {e.strerror}") from e

    def supervise(
        self,
        echo: Callable[[int, bytes], None] | None,
        log: Any,
        event: Callable[[str], None] | None = None,
    ) -> int:
        """Relay the command's output until QEMU exits (``relay.Relay``); its exit code."""
        from cove.vm.relay import Relay

        assert self.qemu is not None
        relay = Relay(self.files, self.qemu, self.opts.interactive, ctl=self.ctl)
        return relay.run(echo, log, event)

    def cleanup(self, *, remove: bool) -> None:
        """End QEMU and virtiofsd, release the tap, sockets and lease (a vm run is never
        started again), and with ``remove`` every trace of the run."""
        for p in ([self.qemu] if self.qemu else []) + self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.cid:
            release(self.ce, self.cid, self.tap)
            if remove:
                with contextlib.suppress(Exception):
                    self.ce.purge(self.ce.store.get(self.cid))

    # -- the two ways to run: this process the supervisor, or a daemon forked from it ----------

    def foreground(self) -> int:
        """Launch and supervise the created run here, its output to our stdout and stderr;
        the command's exit code."""
        ce, opts = self.ce, self.opts
        code = 125
        log: Any = None
        try:
            log = _log(ce, self.cid)
            self.launch()
            assert self.qemu is not None
            _record_start(ce, self.cid, self.qemu.pid)

            def echo(stream: int, data: bytes) -> None:
                with contextlib.suppress(BrokenPipeError):
                    os.write(1 + stream, data)

            code = self.supervise(echo, log, _timings_reporter())
            if code == 255 and not _exit_reported(self):
                tail = _tail(self.files.console_log)
                raise VMFailed(f"the vm ended without the command's exit code{tail}")
            return code
        finally:
            if log is not None:
                os.close(log.fd)
            _record_exit(ce, self, code)
            self.cleanup(remove=opts.rm)

    def detach(self) -> None:
        """Fork a supervisor daemon that runs the created run and writes the json-file log;
        return once QEMU runs."""
        ce, opts, cid = self.ce, self.opts, self.cid
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the daemon reports through the pipe
            os.close(r)
            code = 125
            try:
                os.setsid()
                if os.fork():
                    os._exit(0)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                ce.store.db.close()  # the parent's connection is not the daemon's
                from cove.state import Store

                ce.store = Store(ce.engine.root)
                log = _log(ce, cid)
                self.launch()
                assert self.qemu is not None
                _record_start(ce, cid, self.qemu.pid)
                os.write(w, b"ok")
                os.close(w)
                code = self.supervise(None, log)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.write(w, f"error {e}".encode()[:2000])
            finally:
                _record_exit(ce, self, code)
                self.cleanup(remove=opts.rm)
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode(errors="replace")
        os.waitpid(pid, 0)
        if msg != "ok":
            raise VMFailed(f"vm run {cid[:12]} did not start: {msg.removeprefix('error ')}")


def release(ce: Any, cid: str, tap: str | None = None) -> None:
    """What a vm run holds outside its directory and row: its tap, its sockets under
    RUN_DIR and its network lease. Idempotent (the supervisor's exit, ``rm`` and
    reconciliation of a dead supervisor all call it)."""
    from cove.network import links

    if tap is None:
        mode = ce.store.get(cid).config.get("HostConfig", {}).get("NetworkMode") or "user"
        tap = "" if mode in ("user", "none") else tap_name(cid)
    if tap:
        links.delete(tap)
    shutil.rmtree(os.path.join(run_dir(), cid[:20]), ignore_errors=True)
    with contextlib.suppress(Exception):
        from cove.network.manager import NetworkManager

        NetworkManager(ce.engine.root, ce.store.db).detach(cid)


def _warn(message: str) -> None:
    sys.stderr.write(f"cove: warning: {message}\n")


def _shape_of(tpl: Any) -> Any:
    """The shape a template was built with (its meta.json)."""
    import json

    from cove.vm import template as tmpl

    try:
        with open(tpl.meta) as f:
            return tmpl.Shape(**json.load(f)["shape"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VMFailed(f"template {tpl.dir}: unreadable meta.json") from e


def _qemu_preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
    die_with_parent()
    if rootless():  # QEMU as the user with no capability in its namespace (no -runas)
        from cove.vm.process import qemu_nocaps

        qemu_nocaps()


def tap_name(cid: str) -> str:
    return "ctap" + cid[:10]


def _record_start(ce: Any, cid: str, qemu: int) -> None:
    """QEMU is the run's process (``kill`` ends it); this supervisor is its monitor (``stop``
    and ``kill -s`` reach the command through it)."""
    from cove.containers import lifecycle
    from cove.runtime.api import proc_start_time

    lifecycle.running_here(ce.store, cid, pid=qemu, start_time=proc_start_time(qemu) or 0)


def _record_exit(ce: Any, run: VMRun, code: int) -> None:
    from cove.containers import lifecycle

    with contextlib.suppress(Exception):
        lifecycle.exited(ce.store, run.cid, code, clear_pid=True)


def _log(ce: Any, cid: str) -> Any:
    from cove.containers.jsonlog import Log

    cfg = ce.store.get(cid).config.get("HostConfig", {}).get("LogConfig", {})
    return Log(ce.log_path(cid), int(cfg.get("MaxSize", 0)), int(cfg.get("MaxFile", 1)))


TIMINGS_FD = "COVE_TIMINGS_FD"


def _timings_reporter() -> Callable[[str], None] | None:
    """``cove compare``'s hook: with COVE_TIMINGS_FD set (a pipe it passed us), each
    supervise event is written there as ``NAME MONOTONIC`` (CLOCK_MONOTONIC is one clock for
    every process), so the comparison can split a run into boot and the command's time."""
    value = os.environ.pop(TIMINGS_FD, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        os.set_inheritable(fd, False)  # QEMU and virtiofsd never hold it
    except OSError:
        return None

    def report(name: str) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, f"{name} {time.monotonic():.6f}\n".encode())

    return report


def _last(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def _exit_reported(run: VMRun) -> bool:
    try:
        with open(run.files.exit) as f:
            lines = f.read().split()
    except OSError:
        return False
    return bool(lines) and lines[-1] != "up"  # the agent says "up" before the exit code


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f"; the console's last line: {lines[-1]}" if lines else ""


__all__ = ["RUN_DIR", "VMRun", "VMRunOptions", "guest_kernel", "release", "rootfs_image"]
