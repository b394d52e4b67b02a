"""``cove run --vm`` and ``cove compare``: the same image as a container and as a VM (real
QEMU, the Debian cloud kernel, TCG here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import vmguest
from helpers import CoveRunner, cove_argv


@pytest.fixture
def vmrun(cove: CoveRunner, cove_root: Path, alpine: str) -> Iterator[CoveRunner]:
    """``cove`` with alpine:3.20 and the guest kernel where ``cove vm kernel fetch`` puts it;
    afterwards no QEMU, virtiofsd or tap of this root is left."""
    vmguest.install_kernel(cove_root)
    yield cove
    ids = cove("ps", "-aq", "--no-trunc").stdout.split()
    subprocess.run(cove_argv(cove_root, "system", "reset", "-f"), capture_output=True)
    assert vmguest.leftovers(ids, str(cove_root)) == []


def test_command_streams_exit_code_and_kernel(vmrun: CoveRunner) -> None:
    proc = vmrun("run", "--vm", "--rm", "alpine:3.20", "cat", "/etc/alpine-release")
    assert proc.stdout == "3.20.3\n" and proc.returncode == 0
    proc = vmrun("run", "--vm", "--rm", "alpine:3.20", "sh", "-c",
                 "echo out; echo err >&2; exit 42", check=False)  # fmt: skip
    assert proc.returncode == 42
    assert proc.stdout == "out\n"
    assert proc.stderr.strip().splitlines()[-1] == "err"
    vm_kernel = vmrun("run", "--vm", "--rm", "alpine:3.20", "uname", "-r").stdout.strip()
    assert vm_kernel == vmguest.test_kernel().release
    host = vmrun("run", "--rm", "alpine:3.20", "uname", "-r").stdout.strip()
    assert host == os.uname().release != vm_kernel
    missing = vmrun("run", "--vm", "--rm", "alpine:3.20", "no-such-cmd", check=False)
    assert missing.returncode == 127
    assert vmrun("ps", "-aq").stdout == ""  # --rm left nothing


def test_same_semantics_as_the_container_path(vmrun: CoveRunner, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        'FROM alpine:3.20\nENV GREETING=hi\nWORKDIR /srv\nENTRYPOINT ["echo", "ep"]\n'
        'CMD ["default"]\n'
    )
    vmrun("build", "-q", "-t", "epimg", str(ctx))
    cases = [
        ["epimg"],
        ["epimg", "given"],
        ["--entrypoint", "sh", "epimg", "-c", 'echo "$GREETING $(pwd)"'],
        ["-e", "GREETING=bye", "-w", "/tmp", "--entrypoint", "sh", "epimg", "-c",
         'echo "$GREETING $(pwd)"'],
        ["-u", "nobody", "alpine:3.20", "id"],
        ["-u", "1234:5678", "alpine:3.20", "sh", "-c", "id -u; id -g"],
        ["--hostname", "named", "alpine:3.20", "hostname"],
    ]  # fmt: skip
    for args in cases:
        as_ctr = vmrun("run", "--rm", *args).stdout
        as_vm = vmrun("run", "--vm", "--rm", *args).stdout
        assert as_vm == as_ctr, (args, as_ctr, as_vm)
    assert vmrun("run", "--vm", "--rm", "epimg").stdout == "ep default\n"
    # the image's programs, not the agent's busybox applets of the same name
    (ctx / "Dockerfile").write_text(
        "FROM alpine:3.20\nRUN printf '#!/bin/sh\\necho image-cat $1\\n' > "
        "/usr/local/bin/cat && chmod +x /usr/local/bin/cat\n"
    )
    vmrun("build", "-q", "-t", "catimg", str(ctx))
    for flags in ([], ["--vm"]):
        assert vmrun("run", *flags, "--rm", "catimg", "cat", "x").stdout == "image-cat x\n"


def test_volumes_ports_detach_logs_stop(vmrun: CoveRunner, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "in.txt").write_text("from-host\n")
    out = vmrun("run", "--vm", "--rm", "-v", f"{share}:/data", "alpine:3.20", "sh", "-c",
                "cat /data/in.txt; echo from-guest > /data/out.txt").stdout  # fmt: skip
    assert out == "from-host\n" and (share / "out.txt").read_text() == "from-guest\n"
    ro = vmrun("run", "--vm", "--rm", "-v", f"{share}:/data:ro", "alpine:3.20", "sh", "-c",
               "echo x > /data/ro.txt", check=False)  # fmt: skip
    assert ro.returncode != 0 and not (share / "ro.txt").exists()
    # root in the guest may remount; the host side stays read-only all the same
    vmrun("run", "--vm", "--rm", "-v", f"{share}:/data:ro", "alpine:3.20", "sh", "-c",
          "mount -o remount,rw /data; echo x > /data/ro2.txt", check=False)  # fmt: skip
    assert not (share / "ro2.txt").exists()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cid = vmrun("run", "--vm", "-d", "--name", "vweb", "-p", f"127.0.0.1:{port}:8080",
                "-v", "/bin:/opt/bb:ro", "alpine:3.20", "sh", "-c",
                "echo started; echo hello-vm > /tmp/index.html; "
                "exec /opt/bb/busybox httpd -f -p 8080 -h /tmp").stdout.strip()  # fmt: skip
    assert len(cid) == 64
    ps = vmrun("ps").stdout
    assert "vweb" in ps and ps.splitlines()[0].endswith("ISOLATION") and " vm" in ps
    assert f"127.0.0.1:{port}->8080/tcp" in ps
    deadline = time.monotonic() + 120
    while "started" not in vmrun("logs", "vweb").stdout:
        assert time.monotonic() < deadline, "no output from the vm"
        time.sleep(0.3)
    body = ""
    while time.monotonic() < deadline and "hello-vm" not in body:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as r:
                body = r.read().decode()
        except OSError:
            time.sleep(0.3)
    assert body == "hello-vm\n"
    for verb in (["exec", "vweb", "true"], ["pause", "vweb"], ["diff", "vweb"]):
        bad = vmrun(*verb, check=False)
        assert bad.returncode != 0 and "vm" in bad.stderr, verb
    bad = vmrun("restart", "vweb", check=False)
    assert bad.returncode != 0 and "vm" in bad.stderr
    assert " Up " in vmrun("ps").stdout  # refused before anything was stopped
    vmrun("stop", "vweb")
    assert "Exited (143)" in vmrun("ps", "-a").stdout  # SIGTERM reached the command
    boot = vmrun("logs", "--boot", "vweb").stdout
    assert "Linux version" in boot or "reboot: Power down" in boot  # the guest's console
    vmrun("rm", "vweb")


def test_cached_root_and_throwaway_runs(vmrun: CoveRunner, cove_root: Path) -> None:
    first = vmrun("run", "--vm", "--rm", "alpine:3.20", "sh", "-c", "echo x > /marker; ls /marker")
    assert first.stdout == "/marker\n" and "building the vm root" in first.stderr
    (rootfs,) = (cove_root / "vmroot").glob("*.ext4")
    before = rootfs.stat()
    second = vmrun("run", "--vm", "--rm", "alpine:3.20", "sh", "-c",
                   "test -e /marker && echo present || echo absent")  # fmt: skip
    assert second.stdout == "absent\n"
    assert "building the vm root" not in second.stderr
    after = rootfs.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)  # fmt: skip
    # the cache goes with its image
    vmrun("rmi", "alpine:3.20")
    assert not rootfs.exists()


def test_ctrl_c_stdin_and_network(vmrun: CoveRunner, cove_root: Path) -> None:
    proc = subprocess.Popen(
        cove_argv(cove_root, "run", "--vm", "--rm", "alpine:3.20", "sh", "-c",
                  'trap "echo got-int; exit 3" INT; echo ready; while :; do sleep 0.2; done'),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out == "got-int\n" and proc.returncode == 3
    piped = vmrun("run", "--vm", "--rm", "-i", "alpine:3.20", "sh", "-c", "cat; echo eof",
                  input="line1\nline2\n")  # fmt: skip
    assert piped.stdout == "line1\nline2\neof\n"
    vmrun("network", "create", "vmrunnet")
    vmrun("run", "-d", "--name", "nc1", "--network", "vmrunnet", "-v",
          "/bin/busybox:/opt/bb/busybox:ro", "alpine:3.20", "sh", "-c",
          "echo from-ctr > /tmp/i && /opt/bb/busybox httpd -f -p 8080 -h /tmp")  # fmt: skip
    got = vmrun("run", "--vm", "--rm", "--network", "vmrunnet", "alpine:3.20", "wget", "-qO-",
                "http://nc1:8080/i").stdout  # fmt: skip
    assert got == "from-ctr\n"
    vmrun("rm", "-f", "nc1")
    vmrun("network", "rm", "vmrunnet")
    bad = vmrun("run", "--vm", "-t", "--rm", "alpine:3.20", "true", check=False)
    assert bad.returncode == 125 and "-t" in bad.stderr


def test_compare(vmrun: CoveRunner, tmp_path: Path) -> None:
    out_dir = tmp_path / "cmp"
    proc = vmrun("compare", "alpine:3.20", "-n", "3", "--output", str(out_dir), "--", "true")
    table = proc.stdout
    assert "container (median of 3)" in table and "vm (median of 3)" in table
    assert "vm-cold (median of 3)" in table  # the cold boot beside the template's restore
    assert vmguest.test_kernel().release in table and os.uname().release in table
    doc = json.loads((out_dir / "results.json").read_text())
    modes = {r["mode"]: r for r in doc["results"]}
    assert set(modes) == {"container", "vm", "vm-cold"}
    for r in modes.values():
        assert len(r["samples"]) == 3 and all(s["exit_code"] == 0 for s in r["samples"])
        assert all(s["wall_s"] > 0 and s["cpu_s"] > 0 for s in r["samples"])
    assert modes["vm"]["own_kernel"] and not modes["container"]["own_kernel"]
    assert modes["vm-cold"]["own_kernel"] and modes["vm-cold"]["kernel"] == modes["vm"]["kernel"]
    assert "pid" in modes["container"]["namespaces"]
    assert modes["vm"]["median"]["peak_rss_mib"] > modes["container"]["median"]["peak_rss_mib"]
    png = (out_dir / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compare_splits_boot_from_the_command(vmrun: CoveRunner, tmp_path: Path) -> None:
    """The VM's run is split at the agent's first message: boot, then the command's own
    time; both in results.json, and the title keeps the command's $ literal (issue 23)."""
    out_dir = tmp_path / "cmp"
    script = "echo $((1+1)) $0"
    vmrun("compare", "alpine:3.20", "-n", "1", "--output", str(out_dir), "--", "sh", "-c", script)
    doc = json.loads((out_dir / "results.json").read_text())
    modes = {r["mode"]: r for r in doc["results"]}
    [vm] = modes["vm"]["samples"]
    assert vm["exit_code"] == 0 and vm["boot_s"] > 0 and vm["run_s"] > 0
    # boot + run end when the exit code reaches the host; the rest is the VM's teardown
    assert vm["boot_s"] + vm["run_s"] <= vm["wall_s"]
    assert vm["boot_s"] + vm["run_s"] >= 0.5 * vm["wall_s"]
    assert modes["vm"]["median"]["boot_s"] == vm["boot_s"]
    [ct] = modes["container"]["samples"]
    assert ct["boot_s"] is None and ct["run_s"] is None
    from PIL import Image

    with Image.open(out_dir / "compare.png") as im:
        assert im.info["Title"].splitlines()[0] == f"cove compare alpine:3.20 -- sh -c {script}"


def test_kill_signals_and_rm(vmrun: CoveRunner) -> None:
    vmrun("run", "--vm", "-d", "--name", "sig", "alpine:3.20", "sh", "-c",
          'trap "echo got-usr1" USR1; echo ready; while :; do sleep 0.2; done')  # fmt: skip
    deadline = time.monotonic() + 120
    while "ready" not in vmrun("logs", "sig").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    vmrun("kill", "-s", "USR1", "sig")  # relayed, not fatal to the vm
    while "got-usr1" not in vmrun("logs", "sig").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert " Up " in vmrun("ps").stdout
    vmrun("kill", "sig")
    deadline = time.monotonic() + 30
    while "Exited (137)" not in vmrun("ps", "-a").stdout:
        assert time.monotonic() < deadline, vmrun("ps", "-a").stdout
        time.sleep(0.2)
    vmrun("run", "--vm", "-d", "--name", "gone", "alpine:3.20", "sleep", "600")
    vmrun("rm", "-f", "gone", "sig")
    assert vmrun("ps", "-aq").stdout == ""
