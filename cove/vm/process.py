"""The QEMU process of a ``cove vm``: launching it detached and sandboxed, asking it over
QMP, stopping or killing it, and reconciling the row with the kernel (a QEMU killed by hand
or a guest powered off from inside shows as stopped). Either a start leaves a running,
recorded VM, or nothing of the launch stays.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from cove.errors import CoveError, StateError, VMFailed
from cove.sys.userns import rootless
from cove.vm import provision, qmp
from cove.vm import qemu as qcmd
from cove.vm.vmstore import VMRecord, VMStatus, VMStore, run_dir


def _proc_start(pid: int) -> int:
    from cove.runtime.api import proc_start_time

    return proc_start_time(pid) or 0


def _alive(pid: int, start: int) -> bool:
    """Still the QEMU we started (not a recycled pid), and not a zombie."""
    from cove.sys.proc import alive

    return alive(pid, start)


def qemu_nocaps() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Rootless QEMU's stand-in for -runas: it stays the user (uid 0 of the user's
    namespace, owner of its files) but execs with no capability in that namespace and
    cannot regain any (securebits NOROOT, locked), so a guest that takes QEMU over holds
    the user's own file access and not the namespace's root powers (chown over the
    subordinate ids, mounts in cove's mount namespace)."""
    from cove.sys import syscalls as sc

    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        sc.prctl(sc.PR_CAPBSET_DROP, cap)
    # SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS_LOCKED and their locks
    sc.prctl(PR_SET_SECUREBITS, 0x2F)
    sc.capset(0, 0, 0)


PR_SET_SECUREBITS = 28


class QemuProcess:
    """The QEMU processes of the VMs in ``store`` (``qemu`` is the binary to run)."""

    def __init__(self, store: VMStore, qemu: str) -> None:
        self.store = store
        self.qemu = qemu

    def cmd(self, rec: VMRecord, name: str, *, timeout: float = qmp.QMP_TIMEOUT,
            **args: Any) -> Any:  # fmt: skip
        return qmp.command(rec, self.store.paths(rec).qmp, name, timeout=timeout, **args)

    def hmp(self, rec: VMRecord, line: str) -> None:
        qmp.hmp(rec, self.store.paths(rec).qmp, line)

    def reconcile(self, rec: VMRecord) -> VMRecord:
        """A VM whose QEMU is gone (killed, or the guest powered off) is stopped."""
        if rec.status in (VMStatus.RUNNING, VMStatus.PAUSED) and not _alive(rec.pid, rec.pid_start):
            self.after_exit(rec)
        return rec

    def after_exit(self, rec: VMRecord, error: str = "") -> None:
        """Record that QEMU ``rec.pid`` is gone, and clean up after it; only if the row
        still names that QEMU (a parallel command may have started a new one)."""
        from cove.network import links

        if self.store.stopped(rec, error):
            if rec.tap:
                links.delete(rec.tap)
            shutil.rmtree(self.store.paths(rec).run, ignore_errors=True)
        fresh = self.store.get(rec.id)
        rec.status, rec.pid, rec.pid_start = fresh.status, fresh.pid, fresh.pid_start
        rec.finished_at, rec.error = fresh.finished_at, fresh.error

    def start(self, rec: VMRecord) -> VMRecord:
        """Launch QEMU; either the VM runs and is recorded, or nothing of the launch stays
        (no QEMU, tap or runtime directory), even on Ctrl-C."""
        from cove.vm import accel

        if not rec.status.can_start():
            raise StateError(f"vm {rec.name} is {rec.status.value}: cannot start it")
        spec = rec.spec
        paths = self.store.paths(rec)
        prev = rec.status
        self.kill_orphan(rec)
        from cove.errors import Unsupported
        from cove.vm import arch as varch

        guest = varch.parse(spec.arch) if spec.arch else varch.host()
        if varch.foreign(guest):  # KVM runs only the host's architecture: QEMU's TCG
            varch.check_installed(guest)
            if spec.accel == "kvm":
                raise Unsupported(f"vm {rec.name}: --accel kvm cannot run an {guest.name} guest")
            verdict = accel.Verdict("tcg", f"{guest.name} guest: tcg emulation")
        else:
            verdict = accel.choose(spec.accel, self.store.root, spec.kernel, self.qemu)
        try:
            rec.accel, rec.accel_reason = verdict.accel, verdict.reason
            append_extra = ""
            if rec.address:
                import ipaddress

                nets = provision.networks(self.store)
                n = nets.store.get(rec.network_id)
                prefix = ipaddress.IPv4Network(n.subnet).prefixlen
                nets.plug_tap(n, rec.tap)
                append_extra = f"cove.ip={rec.address}/{prefix} cove.gw={n.gateway}"
            if os.path.exists(paths.disk):
                provision.check_disk(self.store, rec)
            from cove.sys.userns import rootless
            from cove.vm import qemuuser

            # rootless: no -runas (no other user to become); QEMU runs as the user with
            # no capability in the user's namespace (qemu_nocaps)
            user = None if rootless() else qemuuser.ensure()
            launch = qcmd.Launch(
                verdict.accel,
                rec.mac,
                tap=rec.tap or None,
                append_extra=append_extra,
                has_disk=os.path.exists(paths.disk),
                has_seed=os.path.exists(paths.seed),
                runas=user.name if user else None,
            )
            argv = qcmd.command(spec, paths, launch, qemu=self.qemu)
            # another architecture: its QEMU and machine (UEFI firmware unless a kernel boots)
            argv = varch.adapt(argv, guest, firmware=not spec.kernel)
            shutil.rmtree(paths.run, ignore_errors=True)
            # /run/cove-vm itself: traversable (0711) but not listable, whatever the umask
            # (cove's is 077), or QEMU, no longer root, could not reach its own directory
            os.makedirs(run_dir(), mode=0o711, exist_ok=True)
            os.chmod(run_dir(), 0o711)
            os.mkdir(paths.run, 0o700)
            os.mkdir(paths.screen_dir, 0o700)
            if user is not None:
                # screendump is the one file QEMU creates after it dropped root: in a
                # directory of its own, read back by cove without following links (see
                # screenshot). The runtime directory lets QEMU's group through (0710), to
                # reach it, and nothing more: the sockets in it are QEMU's anyway.
                os.chown(paths.run, 0, user.gid)
                os.chmod(paths.run, 0o710)
                os.chown(paths.screen_dir, user.uid, user.gid)
            with open(paths.serial_log, "ab") as log:
                log.write(f"\n--- cove: vm {rec.name} started {time.ctime()} ---\n".encode())
            proc = self._launch(rec, argv)
            rec.pid, rec.pid_start = proc.pid, _proc_start(proc.pid)
            rec.status, rec.started_at, rec.error = VMStatus.RUNNING, time.time(), ""
            self.store.save(rec)
            try:
                status = self.cmd(rec, "query-status").get("status")
            except CoveError as e:
                if proc.poll() is not None:  # QEMU's own reason beats "cannot reach"
                    raise VMFailed(self._qemu_failed(rec, proc.returncode)) from e
                raise
            if status not in ("running", "prelaunch"):
                raise VMFailed(f"vm {rec.name}: qemu started but the vm is {status}")
        except BaseException:
            self._abort_start(rec, prev)
            raise
        return rec

    def _launch(self, rec: VMRecord, argv: list[str]) -> subprocess.Popen[bytes]:
        """QEMU detached by cove (its sandbox forbids -daemonize's fork and setsid): its own
        session, output to qemu.log; returns once its pidfile and QMP socket exist (QMP
        then answers when the machine is built) or fails with QEMU's last error line."""
        paths = self.store.paths(rec)
        with open(paths.qemu_log, "ab") as log:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True,
                                        preexec_fn=qemu_nocaps if rootless() else None)  # fmt: skip
            except OSError as e:
                raise VMFailed(f"vm {rec.name}: qemu did not start: {e}") from e
        deadline = time.monotonic() + 60
        while not (os.path.exists(paths.pidfile) and os.path.exists(paths.qmp)):
            if proc.poll() is not None:
                raise VMFailed(self._qemu_failed(rec, proc.returncode))
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise VMFailed(f"vm {rec.name}: qemu did not start in 60 s; see {paths.qemu_log}")
            time.sleep(0.02)
        return proc

    def _qemu_failed(self, rec: VMRecord, code: int | None) -> str:
        try:
            with open(self.store.paths(rec).qemu_log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            tail = ""
        lines = [ln for ln in tail.strip().splitlines() if ln.strip()]
        return f"vm {rec.name}: qemu failed (exit {code}): " + (lines[-1] if lines else "no output")

    def _pidfile_pid(self, rec: VMRecord) -> int:
        try:
            with open(self.store.paths(rec).pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 0

    def kill_orphan(self, rec: VMRecord) -> None:
        """A QEMU that a killed cove launched but never recorded: its pidfile names it, its
        command line names this VM's runtime directory."""
        pid = self._pidfile_pid(rec)
        if not pid or (pid == rec.pid and _alive(rec.pid, rec.pid_start)):
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                mine = self.store.paths(rec).run.encode() in f.read()
        except OSError:
            return
        if mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _abort_start(self, rec: VMRecord, prev: VMStatus) -> None:
        from cove.network import links

        if _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        self.kill_orphan(rec)
        if rec.tap:
            links.delete(rec.tap)
        shutil.rmtree(self.store.paths(rec).run, ignore_errors=True)
        rec.status, rec.pid, rec.pid_start = prev, 0, 0
        rec.accel = rec.accel_reason = ""
        self.store.save(rec)

    def stop(self, rec: VMRecord, timeout: float) -> bool:
        if not rec.status.can_stop():
            raise StateError(f"vm {rec.name} is {rec.status.value}: cannot stop it")
        clean = False
        with contextlib.suppress(CoveError):
            if rec.status == VMStatus.PAUSED:
                self.cmd(rec, "cont")  # a paused guest cannot see the button
            self.cmd(rec, "system_powerdown")
            clean = self.wait_exit(rec, timeout)
        if not clean:
            self._terminate(rec)
        self.after_exit(rec, "" if clean else f"forced off after {timeout:g} s")
        return clean

    def wait_exit(self, rec: VMRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(rec.pid, rec.pid_start):
                return True
            time.sleep(0.1)
        return not _alive(rec.pid, rec.pid_start)

    def _terminate(self, rec: VMRecord) -> None:
        with contextlib.suppress(CoveError, StateError):
            self.cmd(rec, "quit", timeout=5)
        if not self.wait_exit(rec, 5) and _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            self.wait_exit(rec, 5)

    def kill(self, rec: VMRecord) -> None:
        if not rec.status.can_stop():
            raise StateError(f"vm {rec.name} is {rec.status.value}: cannot kill it")
        if _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        self.wait_exit(rec, 5)
        self.after_exit(rec, "killed")

    def purge(self, rec: VMRecord) -> None:
        from cove.network import links

        if _alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            self.wait_exit(rec, 5)
        self.kill_orphan(rec)
        if rec.tap:
            links.delete(rec.tap)
        with contextlib.suppress(Exception):
            provision.networks(self.store).detach(rec.id)
        shutil.rmtree(self.store.paths(rec).dir, ignore_errors=True)
        shutil.rmtree(self.store.paths(rec).run, ignore_errors=True)
        self.store.delete(rec)

    # -- the row, reconciled -------------------------------------------------------------

    def get(self, ref: str) -> VMRecord:
        return self.reconcile(self.store.get(ref))

    @contextlib.contextmanager
    def locked(self, ref: str) -> Iterator[VMRecord]:
        """The VM, fresh from the database, with its lifecycle lock held: two cove
        commands never start, stop or remove one VM at once."""
        rec = self.store.get(ref)
        with self.store.locked(rec.id):
            yield self.reconcile(self.store.get(rec.id))
