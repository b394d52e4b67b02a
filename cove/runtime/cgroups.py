"""cgroups for one container on cgroup v1, pure v2, or the hybrid layout (v1 controllers plus a
cgroup2 mount at /sys/fs/cgroup/unified), which crun refuses and cove supports.

The hierarchy layout is read from /proc/self/mountinfo; tests point ``mountinfo`` and
``base`` at a fake tree to check the files and values written for a layout this host lacks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

from cove.errors import InvalidSpec, Unsupported
from cove.runtime import devices_bpf
from cove.spec.runtime import Resources
from cove.sys.userns import rootless

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
CFS_PERIOD = 100_000


class Layout:
    """Where each hierarchy is mounted. ``unified`` is the cgroup2 mount, if any. (A plain
    class: a dataclass costs ~0.3 ms to create at import, on every start.)"""

    __slots__ = ("unified", "v1")

    def __init__(self, v1: dict[str, str] | None = None, unified: str | None = None) -> None:
        self.v1: dict[str, str] = {} if v1 is None else v1  # controller (or name=x) -> mount
        self.unified = unified

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layout):
            return NotImplemented
        return (self.v1, self.unified) == (other.v1, other.unified)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"Layout(v1={self.v1!r}, unified={self.unified!r})"

    @property
    def pure_v2(self) -> bool:
        return not self.v1 and self.unified is not None


def read_layout(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    layout = Layout()
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            fstype, _, opts = [*right.split(), "", "", ""][:3]
            mountpoint = fields[4]
            if fstype == "cgroup2" and layout.unified is None:
                layout.unified = mountpoint
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in V1_CONTROLLERS or opt.startswith("name="):
                        layout.v1.setdefault(opt, mountpoint)
    if mountinfo == "/proc/self/mountinfo" and rootless():
        from cove.runtime.rootless import delegated_layout

        return delegated_layout(layout)  # only what the host delegated to the user
    return layout


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {value!r}: {e.strerror}", path) from e


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def v2_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), as runc and crun convert."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


class Cgroups:
    """The cgroup directories of one container (``path`` is relative, e.g. ``cove/<id>``)."""

    def __init__(self, path: str, layout: Layout | None = None) -> None:
        # an OCI linux.cgroupsPath may be absolute: relative to each hierarchy's root, which
        # is where cove puts relative paths too (runc's cgroupfs rule for both)
        path = path.lstrip("/")
        if not path or ".." in path.split("/"):
            raise InvalidSpec(f"invalid cgroups path {path!r}")
        self.path = path
        self.layout = layout or read_layout()

    def dirs(self) -> dict[str, str]:
        """controller -> directory; '' for the unified (v2) directory."""
        out = {}
        seen = set()
        for ctrl, mnt in self.layout.v1.items():
            if mnt not in seen:
                seen.add(mnt)
                out[ctrl] = os.path.join(mnt, self.path)
        if self.layout.unified:
            out[""] = os.path.join(self.layout.unified, self.path)
        return out

    def _v1(self, ctrl: str) -> str | None:
        mnt = self.layout.v1.get(ctrl)
        return os.path.join(mnt, self.path) if mnt else None

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs().values()]

    def create(self, resources: Resources | None, *, privileged: bool = False) -> list[str]:
        """Make the directories and write the limits; returns warnings for limits not applied."""
        warnings: list[str] = []
        if not self.dirs():  # rootless without a delegated cgroup v2 tree: nothing to write
            from cove.runtime.rootless import ignored_limits

            return ignored_limits(resources)
        if self.layout.pure_v2:
            self._enable_v2_controllers()
        for ctrl, d in self.dirs().items():
            if ctrl == "cpuset":
                self._init_cpuset(d)
            os.makedirs(d, exist_ok=True)
        if self.layout.pure_v2:
            self._apply_v2(resources, warnings)
        else:
            self._apply_v1(resources, warnings, privileged=privileged)
        if not privileged:
            self._attach_device_filter(resources, warnings)
        return warnings

    def _attach_device_filter(self, res: Resources | None, warnings: list[str]) -> None:
        """The eBPF device allowlist on the cgroup2 directory: the only device control of a
        pure v2 host; on the hybrid layout it runs before the v1 controller's check, and both
        must allow. exec'd processes join this directory too, so they are covered."""
        unified = self.dirs().get("")
        if not unified:
            return
        rules = devices_bpf.effective_rules(res.devices if res else [])
        if devices_bpf.allows_all(rules):  # an "a *:* rwm" last: no program, as runc
            return
        try:
            devices_bpf.attach(unified, rules)
        except OSError as e:
            if self.layout.pure_v2 or not self._v1("devices"):
                # no other device control would apply: refuse to run the container
                raise Unsupported(
                    f"cannot attach the device filter to {unified}: {e.strerror}"
                ) from e
            warnings.append(
                f"device filter not attached to {unified} ({e.strerror}): "
                "the v1 devices controller still applies"
            )

    def _enable_v2_controllers(self) -> None:
        assert self.layout.unified
        base = self.layout.unified
        wanted = set(_read(os.path.join(base, "cgroup.controllers")).split())
        wanted &= {"cpu", "cpuset", "memory", "pids", "io"}
        parts = self.path.split("/")[:-1]
        cur = base
        for part in ["", *parts]:
            cur = os.path.join(cur, part) if part else cur
            os.makedirs(cur, exist_ok=True)
            have = set(_read(os.path.join(cur, "cgroup.subtree_control")).split())
            missing = wanted - have
            if missing:
                _write(
                    os.path.join(cur, "cgroup.subtree_control"),
                    " ".join(f"+{c}" for c in sorted(missing)),
                )

    def _init_cpuset(self, d: str) -> None:
        """v1 cpuset children start empty: copy cpus and mems down from the nearest parent."""
        mnt = self.layout.v1["cpuset"]
        cur = mnt
        for part in self.path.split("/"):
            parent, cur = cur, os.path.join(cur, part)
            if not os.path.isdir(cur):
                os.makedirs(cur, exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                mine = os.path.join(cur, name)
                if os.path.exists(mine) and not _read(mine):
                    _write(mine, _read(os.path.join(parent, name)))

    def _apply_v1(self, res: Resources | None, warnings: list[str], *, privileged: bool) -> None:
        devices = self._v1("devices")
        if devices and not privileged:
            _write(os.path.join(devices, "devices.deny"), "a")
            for rule in _default_device_rules():
                _write(os.path.join(devices, "devices.allow"), rule)
            # the spec's rules (--device) after the defaults: a later rule overrides
            for r in res.devices if res else []:
                name = "devices.allow" if r.allow else "devices.deny"
                _write(os.path.join(devices, name), devices_bpf.v1_line(r))
        if res is None:
            return
        mem = self._v1("memory")
        if res.memory and mem:
            if res.memory.limit is not None:
                _write(os.path.join(mem, "memory.limit_in_bytes"), str(res.memory.limit))
            if res.memory.swap is not None:
                memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _write(memsw, str(res.memory.swap))
                else:
                    warnings.append("kernel has no swap limit support: --memory-swap ignored")
        cpu = self._v1("cpu")
        if res.cpu and cpu:
            if res.cpu.shares is not None:
                _write(os.path.join(cpu, "cpu.shares"), str(res.cpu.shares))
            if res.cpu.quota is not None:
                _write(os.path.join(cpu, "cpu.cfs_period_us"), str(res.cpu.period or CFS_PERIOD))
                _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(res.cpu.quota))
        cpuset = self._v1("cpuset")
        if res.cpu and res.cpu.cpus and cpuset:
            _write(os.path.join(cpuset, "cpuset.cpus"), res.cpu.cpus)
        pids = self._v1("pids")
        if res.pids and res.pids.limit and pids:
            _write(os.path.join(pids, "pids.max"), str(res.pids.limit))

    def _apply_v2(self, res: Resources | None, warnings: list[str]) -> None:
        if res is None:
            return
        d = self.dirs()[""]
        if res.memory and res.memory.limit is not None:
            _write(os.path.join(d, "memory.max"), str(res.memory.limit))
            if res.memory.swap is not None:
                swap = res.memory.swap
                value = "max" if swap < 0 else str(max(swap - res.memory.limit, 0))
                _write(os.path.join(d, "memory.swap.max"), value)
        if res.cpu:
            if res.cpu.shares is not None:
                _write(os.path.join(d, "cpu.weight"), str(v2_weight(res.cpu.shares)))
            if res.cpu.quota is not None:
                _write(
                    os.path.join(d, "cpu.max"), f"{res.cpu.quota} {res.cpu.period or CFS_PERIOD}"
                )
            if res.cpu.cpus:
                _write(os.path.join(d, "cpuset.cpus"), res.cpu.cpus)
        if res.pids and res.pids.limit:
            _write(os.path.join(d, "pids.max"), str(res.pids.limit))

    def update(self, res: Resources) -> list[str]:
        """Write new limits to a live container's cgroups (runc update); returns warnings.
        The device rules are not part of an update: they stay as create wrote them."""
        warnings: list[str] = []
        if self.layout.pure_v2:
            self._apply_v2(res, warnings)
        else:
            self._apply_v1(res, warnings, privileged=True)  # True: skip the device rules
        return warnings

    def frozen(self) -> bool:
        """Is the container paused (v1 freezer FROZEN, or v2 cgroup.freeze set)?"""
        freezer = self._v1("freezer")
        try:
            if freezer and not self.layout.pure_v2:
                return _read(os.path.join(freezer, "freezer.state")) != "THAWED"
            unified = self.dirs().get("")
            return bool(unified) and _read(os.path.join(str(unified), "cgroup.freeze")) == "1"
        except OSError:
            return False

    def oom_killed(self) -> bool:
        if self.layout.pure_v2:
            path = os.path.join(self.dirs()[""], "memory.events")
        else:
            mem = self._v1("memory")
            path = os.path.join(mem, "memory.oom_control") if mem else ""
        try:
            for line in _read(path).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def freeze(self, frozen: bool) -> None:
        """Freeze or thaw every task (v1 freezer or v2 cgroup.freeze) and wait until done."""
        freezer = self._v1("freezer")
        if freezer and not self.layout.pure_v2:
            path, want = os.path.join(freezer, "freezer.state"), "FROZEN" if frozen else "THAWED"
            for _ in range(1000):
                _write(path, want)
                if _read(path).strip() == want:
                    return
                time.sleep(0.01)
            raise OSError(errno.EBUSY, f"cgroup did not reach {want}", path)
        unified = self.dirs().get("")
        if not unified:
            raise OSError(errno.ENOTSUP, "no freezer cgroup for this container", self.path)
        _write(os.path.join(unified, "cgroup.freeze"), "1" if frozen else "0")
        events = os.path.join(unified, "cgroup.events")
        for _ in range(1000):
            if f"frozen {int(frozen)}" in _read(events):
                return
            time.sleep(0.01)
        raise OSError(errno.EBUSY, "cgroup did not freeze", events)

    def stats(self) -> dict[str, int]:
        """Raw counters: cpu_ns, mem_usage, mem_limit, io_read, io_write, pids."""
        out = {"cpu_ns": 0, "mem_usage": 0, "mem_limit": 0, "io_read": 0, "io_write": 0, "pids": 0}
        unified = self.dirs().get("") if self.layout.pure_v2 else None

        def num(path: str) -> int:
            try:
                text = _read(path).strip()
            except OSError:
                return 0
            return int(text) if text.isdigit() else 0

        if unified:
            with contextlib.suppress(OSError):
                for line in _read(os.path.join(unified, "cpu.stat")).splitlines():
                    if line.startswith("usage_usec "):
                        out["cpu_ns"] = int(line.split()[1]) * 1000
            usage = num(os.path.join(unified, "memory.current"))
            inactive = 0
            with contextlib.suppress(OSError):
                for line in _read(os.path.join(unified, "memory.stat")).splitlines():
                    if line.startswith("inactive_file "):
                        inactive = int(line.split()[1])
            out["mem_usage"] = max(0, usage - inactive)
            out["mem_limit"] = num(os.path.join(unified, "memory.max"))
            with contextlib.suppress(OSError):
                for line in _read(os.path.join(unified, "io.stat")).splitlines():
                    for item in line.split()[1:]:
                        k, _, v = item.partition("=")
                        if k == "rbytes":
                            out["io_read"] += int(v)
                        elif k == "wbytes":
                            out["io_write"] += int(v)
            out["pids"] = num(os.path.join(unified, "pids.current"))
            return out
        cpuacct = self._v1("cpuacct")
        if cpuacct:
            out["cpu_ns"] = num(os.path.join(cpuacct, "cpuacct.usage"))
        mem = self._v1("memory")
        if mem:
            usage = num(os.path.join(mem, "memory.usage_in_bytes"))
            inactive = 0
            with contextlib.suppress(OSError):
                for line in _read(os.path.join(mem, "memory.stat")).splitlines():
                    if line.startswith("total_inactive_file "):
                        inactive = int(line.split()[1])
            out["mem_usage"] = max(0, usage - inactive)
            out["mem_limit"] = num(os.path.join(mem, "memory.limit_in_bytes"))
        blkio = self._v1("blkio")
        if blkio:
            with contextlib.suppress(OSError):
                path = os.path.join(blkio, "blkio.throttle.io_service_bytes")
                for line in _read(path).splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[1] == "Read":
                        out["io_read"] += int(parts[2])
                    elif len(parts) == 3 and parts[1] == "Write":
                        out["io_write"] += int(parts[2])
        pids = self._v1("pids")
        if pids:
            out["pids"] = num(os.path.join(pids, "pids.current"))
        return out

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files():
            with contextlib.suppress(OSError):
                out.update(int(p) for p in _read(f).split())
        return sorted(out)

    def kill_all(self) -> None:
        # a frozen task cannot take SIGKILL: thaw first (a paused container being removed)
        with contextlib.suppress(OSError):
            freezer = self._v1("freezer")
            if freezer and os.path.exists(os.path.join(freezer, "freezer.state")):
                _write(os.path.join(freezer, "freezer.state"), "THAWED")
            unified = self.dirs().get("")
            if unified and os.path.exists(os.path.join(unified, "cgroup.freeze")):
                _write(os.path.join(unified, "cgroup.freeze"), "0")
        if self.layout.unified and self.layout.pure_v2:
            kill = os.path.join(self.dirs()[""], "cgroup.kill")
            if os.path.exists(kill):
                with contextlib.suppress(OSError):
                    _write(kill, "1")
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def destroy(self) -> None:
        """Kill what is left and remove every directory (EBUSY retried while tasks exit)."""
        self.kill_all()
        for d in self.dirs().values():
            for attempt in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or attempt == 99:
                        raise
                    time.sleep(0.01)


def _default_device_rules() -> list[str]:
    """Docker's default device allowlist: mknod anything, use only the standard nodes."""
    return [devices_bpf.v1_line(r) for r in devices_bpf.DOCKER_DEFAULT_RULES]
