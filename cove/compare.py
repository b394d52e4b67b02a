"""``cove compare``: one image, one command, run N times as a container and as a VM, the
VM both restored from its booted template (``vm``) and booted cold (``vm-cold``,
``COVE_VM_TEMPLATE=0``).

Each run is a real ``cove run --rm [--vm]`` child process, so what is measured is what a
user gets: time to the first byte of output (or to the exit, for a silent command), wall
time, the CPU time of cove and everything it started (``wait4`` rusage: QEMU and the
container are its descendants), the peak RSS of the largest of those processes (rusage)
and the peak PSS of all of them together (sampled from /proc every 10 ms). Isolation
facts come from inside: the kernel release the command sees, and which namespaces differ
from the host's.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cove.errors import HostToolFailed, Unsupported

MODES = ("container", "vm", "vm-cold")
_ENV = {"vm-cold": {"COVE_VM_TEMPLATE": "0"}}  # cove.vm.template.ENV: the cold path
_NS_PROBE = 'uname -r; for n in /proc/self/ns/*; do echo "$n $(readlink "$n")"; done'


@dataclass
class Sample:
    first_output_s: float
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    peak_pss_mib: float
    exit_code: int
    # a VM run split at the agent's first message: boot (launch of ``cove run`` to it) and
    # the command's own time (from it to the exit code's arrival); None for a container
    boot_s: float | None = None
    run_s: float | None = None


@dataclass
class ModeResult:
    mode: str
    samples: list[Sample] = field(default_factory=list)
    kernel: str = ""
    own_kernel: bool = False
    namespaces: list[str] = field(default_factory=list)
    accelerator: str = ""

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in self.samples))

    def split(self) -> tuple[float, float] | None:
        """Median boot and run time, when every sample has them."""
        if not self.samples or any(s.boot_s is None or s.run_s is None for s in self.samples):
            return None
        return self.median("boot_s"), self.median("run_s")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _one(
    argv: list[str], *, timed: bool = False, env_extra: dict[str, str] | None = None
) -> tuple[Sample, bytes]:
    """One run: output timed by a blocking reader, PSS sampled by a thread of its own (a
    /proc walk must not delay the first-output timestamp), rusage from wait4. ``timed``
    (a VM run): ``cove run --vm`` reports the agent's first message and the exit code's
    arrival on a pipe (COVE_TIMINGS_FD), which split the run into boot and run."""
    import tempfile
    import threading

    from cove.vm.run import TIMINGS_FD

    errf = tempfile.TemporaryFile()
    env = dict(os.environ) | (env_extra or {})
    events_r = events_w = -1
    if timed:
        events_r, events_w = os.pipe2(os.O_CLOEXEC)
        env[TIMINGS_FD] = str(events_w)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errf, env=env,
                                stdin=subprocess.DEVNULL,
                                pass_fds=(events_w,) if timed else ())  # fmt: skip
    finally:
        if events_w >= 0:
            os.close(events_w)
    assert proc.stdout is not None
    first: list[float] = []
    chunks: list[bytes] = []
    peak = [0]
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            if not first:
                first.append(time.monotonic() - t0)
            chunks.append(chunk)

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _descendants(proc.pid)))

    threads = [threading.Thread(target=read), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    done.set()
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    events: dict[str, float] = {}
    if events_r >= 0:
        with os.fdopen(events_r, "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                name, _, at = line.partition(" ")
                with contextlib.suppress(ValueError):
                    events.setdefault(name, float(at) - t0)
    out = b"".join(chunks)
    errf.seek(0)
    err = errf.read()
    errf.close()
    if proc.returncode and not out and err:
        sys.stderr.write(err.decode(errors="replace"))
    sample_ = Sample(
        first_output_s=min(first[0], wall) if first else wall,
        wall_s=wall,
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        peak_rss_mib=rusage.ru_maxrss / 1024,
        peak_pss_mib=peak[0] / 1024,
        exit_code=proc.returncode,
    )
    if "up" in events and "exit" in events:
        sample_.boot_s = events["up"]
        sample_.run_s = events["exit"] - events["up"]
    return sample_, out


def compare(
    root: str,
    image: str,
    command: list[str],
    n: int,
    *,
    vm_flags: list[str] | None = None,
    platform: str | None = None,
) -> list[ModeResult]:
    """Run ``command`` in ``image`` ``n`` times per isolation, interleaved. ``platform``:
    another architecture's image, emulated both ways (QEMU user mode, QEMU's TCG); such a
    VM always boots cold (templates are the host architecture's), so it has no vm-cold."""
    from cove.spec.image import Platform
    from cove.vm import arch

    guest = arch.for_goarch(Platform.parse(platform).architecture) if platform else arch.host()
    modes = ("container", "vm") if arch.foreign(guest) else MODES
    base = [sys.executable, "-m", "cove", "--root", root, "run", "--rm", "--pull", "never"]
    if platform:
        base += ["--platform", platform]
    vm = ["--vm", *(vm_flags or [])]
    flags = {"container": [], "vm": vm, "vm-cold": vm}
    results = {m: ModeResult(m) for m in modes}
    host_ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in os.listdir("/proc/self/ns")}
    for mode in modes:  # facts first: this also builds the vm's cached root once
        sample, out = _one([*base, *flags[mode], image, "sh", "-c", _NS_PROBE],
                           env_extra=_ENV.get(mode))  # fmt: skip
        if sample.exit_code != 0:
            raise HostToolFailed(
                f"the {mode} run of {image} failed (exit {sample.exit_code})",
                "cove run",
                sample.exit_code,
            )
        lines = out.decode(errors="replace").splitlines()
        r = results[mode]
        r.kernel = lines[0] if lines else ""
        r.own_kernel = r.kernel != os.uname().release
        inside = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
        names = sorted(os.path.basename(k) for k in inside)
        r.namespaces = [n for n in names if inside.get(f"/proc/self/ns/{n}") != host_ns.get(n)]
    from cove.vm import accel, kernel

    k = kernel.installed(kernel.kernels_dir(root))
    verdict = (
        "tcg"  # another architecture's guest: always QEMU's translator
        if arch.foreign(guest)
        else accel.choose("auto", root, k[-1].vmlinuz if k else None, "qemu-system-x86_64").accel
    )
    for mode in modes[1:]:
        results[mode].accelerator = verdict
    for _ in range(n):
        for mode in modes:
            sample, _out = _one([*base, *flags[mode], image, *command],
                                timed=mode != "container", env_extra=_ENV.get(mode))  # fmt: skip
            results[mode].samples.append(sample)
    return [results[m] for m in modes]


ROWS = (
    ("first output (s)", "first_output_s", "{:.3f}"),
    ("wall time (s)", "wall_s", "{:.3f}"),
    ("host cpu time (s)", "cpu_s", "{:.3f}"),
    ("peak rss, largest process (MiB)", "peak_rss_mib", "{:.1f}"),
    ("peak pss, all processes (MiB)", "peak_pss_mib", "{:.1f}"),
)


def table(results: list[ModeResult], n: int) -> str:
    head = ["", *(f"{r.mode} (median of {n})" for r in results)]
    rows = [head]
    for label, attr, fmt in ROWS:
        rows.append([label, *(fmt.format(r.median(attr)) for r in results)])
    for label, i in (("boot, to the agent (s)", 0), ("command's own run (s)", 1)):
        rows.append([label, *(f"{sp[i]:.3f}" if (sp := r.split()) else "-" for r in results)])
    rows.append(["own kernel", *("yes" if r.own_kernel else "no (shared)" for r in results)])
    rows.append(["uname -r inside", *(r.kernel for r in results)])
    rows.append(["namespaces unshared", *(",".join(r.namespaces) or "-" if not r.own_kernel
                                          else "n/a: own kernel" for r in results)])  # fmt: skip
    rows.append(["accelerator", *(r.accelerator or "-" for r in results)])
    rows.append(["exit codes", *(",".join(str(s.exit_code) for s in r.samples) for r in results)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)  # fmt: skip


def write_outputs(results: list[ModeResult], image: str, command: list[str], out_dir: str) -> None:
    """``results.json`` and ``compare.png`` (matplotlib, imported only here)."""
    os.makedirs(out_dir, exist_ok=True)
    doc: dict[str, Any] = {
        "image": image,
        "command": command,
        "host_kernel": os.uname().release,
        "results": [asdict(r) | {"median": _medians(r)} for r in results],
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(doc, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise Unsupported("the chart needs matplotlib: pip install 'cove[chart]'") from e
    fig = chart(results, image, command)
    title = fig.get_suptitle()
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig.savefig(os.path.join(out_dir, "compare.png"), dpi=110, metadata={"Title": title})
    plt.close(fig)


def _medians(r: ModeResult) -> dict[str, float]:
    out = {a: r.median(a) for _, a, _ in ROWS}
    if (sp := r.split()) is not None:
        out["boot_s"], out["run_s"] = sp
    return out


def chart(results: list[ModeResult], image: str, command: list[str]) -> Any:
    """The comparison as a matplotlib Figure: where the time goes (a VM's boot, its
    command's own run and the rest, beside the container's whole run), then one panel per
    measure. Every text is literal: a ``$`` of the command is no math (parse_math off,
    usetex off)."""
    import matplotlib.pyplot as plt

    # texts made while this holds (tick labels and legend entries too) are not math
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _chart(plt, results, image, command)


def _chart(plt: Any, results: list[ModeResult], image: str, command: list[str]) -> Any:
    literal = {"parse_math": False, "usetex": False}
    fig, axes = plt.subplots(1, len(ROWS) + 1, figsize=(4 * (len(ROWS) + 1), 4.4))
    colors = {"container": "#2a7ab9", "vm": "#d9822b", "vm-cold": "#8c564b"}
    names = [r.mode for r in results]
    ax = axes[0]
    for i, r in enumerate(results):
        wall = r.median("wall_s")
        sp = r.split()
        if sp is None:
            ax.bar(i, wall, color=colors[r.mode])
            ax.annotate(f"{wall:.3g}", (i, wall), ha="center", va="bottom", fontsize=9,
                        xytext=(0, 3), textcoords="offset points", **literal)  # fmt: skip
            continue
        boot, run = sp
        rest = max(wall - boot - run, 0.0)
        ax.bar(i, boot, color="#f2c08f", hatch="//", edgecolor="#d9822b", label="vm boot")
        ax.bar(i, run, bottom=boot, color=colors[r.mode], label="command")
        ax.bar(i, rest, bottom=boot + run, color="#bbbbbb", label="teardown")
        for y, v in ((boot / 2, boot), (boot + run / 2, run)):
            ax.annotate(f"{v:.3g}", (i, y), ha="center", va="center", fontsize=9, **literal)
        ax.annotate(f"{wall:.3g}", (i, wall), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 3), textcoords="offset points", **literal)  # fmt: skip
    ax.set_xticks(range(len(names)), names)
    ax.set_title("where the time goes (s)", fontsize=10, **literal)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left")
    for ax, (label, attr, _) in zip(axes[1:], ROWS, strict=True):
        names = [r.mode for r in results]
        meds = [r.median(attr) for r in results]
        spans = [[getattr(s, attr) for s in r.samples] for r in results]
        lows = [m - min(v) for m, v in zip(meds, spans, strict=True)]
        highs = [max(v) - m for m, v in zip(meds, spans, strict=True)]
        ax.bar(names, meds, color=[colors[nm] for nm in names], yerr=[lows, highs], capsize=6)
        ax.set_title(label, fontsize=10, **literal)
        for i, v in enumerate(meds):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=9,
                        xytext=(0, 3), textcoords="offset points", **literal)  # fmt: skip
    kernels = ", ".join(f"{r.mode}: {r.kernel}" + (f" ({r.accelerator})" if r.accelerator else "")
                        for r in results)  # fmt: skip
    fig.suptitle(f"cove compare {image} -- {' '.join(command)}\n{kernels}", fontsize=11,
                 **literal)  # fmt: skip
    fig.tight_layout()  # draws: every tick label exists from here on, made literal
    return fig
