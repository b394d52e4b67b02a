"""The pure parts of ``run --vm`` templates: the key, the QEMU command lines of a template's
boot and of a restore, the freshness program and the message a restored agent reads."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from cove.errors import Unsupported
from cove.spec.vm import PortForward
from cove.vm import agent, fresh
from cove.vm import qemu as qcmd
from cove.vm import template as tmpl


def shape(tmp_path: Path, **changes: object) -> tmpl.Shape:
    base = dict(arch="x86_64", accel="tcg", memory_mib=512, cpus=1, network="user",
                kernel=str(tmp_path / "vmlinuz"),
                initrd=str(tmp_path / "agent.cpio.gz"))  # fmt: skip
    base.update(changes)
    return tmpl.Shape(**base)  # type: ignore[arg-type]


def test_key_covers_shape_and_file_identities(tmp_path: Path) -> None:
    s = shape(tmp_path)
    ids = {"kernel": "k:1", "initrd": "a:1", "qemu": "q:1"}
    assert tmpl.key(s, ids) == tmpl.key(shape(tmp_path), dict(ids))  # stable
    others = [
        tmpl.key(shape(tmp_path, memory_mib=1024), ids),
        tmpl.key(shape(tmp_path, cpus=2), ids),
        tmpl.key(shape(tmp_path, accel="kvm"), ids),
        tmpl.key(shape(tmp_path, network="none"), ids),
        tmpl.key(s, {**ids, "kernel": "k:2"}),  # the kernel file changed
        tmpl.key(s, {**ids, "initrd": "a:2"}),  # the agent changed
        tmpl.key(s, ids, append=tmpl.cmdline() + " x=1"),  # the kernel command line changed
    ]
    assert len({tmpl.key(s, ids), *others}) == len(others) + 1


def test_identities_change_with_the_file(tmp_path: Path) -> None:
    s = shape(tmp_path)
    Path(s.kernel).write_bytes(b"kernel")
    Path(s.initrd).write_bytes(b"agent")
    before = tmpl.identities(s)
    assert before == tmpl.identities(s)
    os.unlink(s.kernel)
    Path(s.kernel).write_bytes(b"kernel, new")
    assert tmpl.identities(s)["kernel"] != before["kernel"]
    assert tmpl.identities(s)["initrd"] == before["initrd"]


def test_stale(tmp_path: Path) -> None:
    s = shape(tmp_path)
    Path(s.kernel).write_bytes(b"kernel")
    Path(s.initrd).write_bytes(b"agent")
    from dataclasses import asdict

    meta = {"format": tmpl.FORMAT, "shape": asdict(s), "identities": tmpl.identities(s)}
    assert not tmpl.stale(meta)  # positive control
    assert not tmpl.stale(meta, shape(tmp_path, memory_mib=1024))  # another machine: kept
    assert tmpl.stale(meta, shape(tmp_path, initrd=str(tmp_path / "agent2")))  # new agent
    assert tmpl.stale({**meta, "format": tmpl.FORMAT + 1})
    assert tmpl.stale({"shape": {"bogus": 1}})
    Path(s.kernel).unlink()  # the kernel went away
    assert tmpl.stale(meta)


def test_template_and_restore_commands_have_the_same_devices(tmp_path: Path) -> None:
    s = shape(tmp_path)
    boot_files = qcmd.RunFiles("/t/work", "/run/cove-vm/tpl")
    run_files = qcmd.RunFiles("/c/abc", "/run/cove-vm/abc")
    boot = tmpl.command(s, boot_files, memory_file="/t/ram", restore=False)
    ports = (PortForward.parse("127.0.0.1:8080:80"),)
    run = tmpl.command(s, run_files, memory_file="/t/ram", restore=True, ports=ports,
                       mac="52:54:00:aa:bb:cc")  # fmt: skip

    def opt(argv: list[str], flag: str) -> list[str]:
        return [argv[i + 1] for i, a in enumerate(argv) if a == flag]

    # the same devices, the same kernel, initramfs and command line (migration needs them)
    assert [d.split(",mac=")[0] for d in opt(boot, "-device")] == [
        d.split(",mac=")[0] for d in opt(run, "-device")
    ]
    for flag in ("-kernel", "-initrd", "-append", "-machine", "-m", "-smp", "-cpu"):
        assert opt(boot, flag) == opt(run, flag), flag
    assert opt(boot, "-initrd") == [s.initrd]  # the agent's: no run's config baked in
    assert "cove.template" in opt(boot, "-append")[0].split()
    assert opt(boot, "-machine") == ["q35,accel=tcg,memory-backend=mem"]
    # the template's memory is written to its file; a restore maps it privately
    (bobj,) = opt(boot, "-object")
    (robj,) = opt(run, "-object")
    assert "mem-path=/t/ram" in bobj and bobj.endswith("share=on")
    assert "mem-path=/t/ram" in robj and robj.endswith("share=off")
    assert opt(run, "-incoming") == ["defer"] and opt(boot, "-incoming") == []
    # the backends are the run's own
    assert any("/c/abc/root.qcow2" in d for d in opt(run, "-drive"))
    assert all("/t/work" not in a for a in run)
    assert opt(run, "-qmp") == ["unix:/run/cove-vm/abc/qmp.sock,server=on,wait=off"]
    assert opt(run, "-sandbox") == [qcmd.SANDBOX]  # spawn=deny: no exec: migration
    assert any("mac=52:54:00:aa:bb:cc" in d for d in opt(run, "-device"))
    assert opt(run, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"]
    assert opt(boot, "-netdev") == ["user,id=net0"]
    none = tmpl.command(shape(tmp_path, network="none"), run_files, memory_file="/t/ram",
                        restore=True)  # fmt: skip
    assert opt(none, "-netdev") == [] and not any("virtio-net" in d for d in opt(none, "-device"))


def test_fresh_program_and_payload() -> None:
    elf = fresh.program()
    assert elf[:4] == b"\x7fELF" and len(elf) < 300
    assert elf == fresh.program()  # no run's data in it
    # one PT_LOAD, RWX, with BUF_SIZE bytes of memory past the file for its input
    p_type, p_flags, _, _, _, filesz, memsz, _ = struct.unpack_from("<IIQQQQQQ", elf, 64)
    assert (p_type, p_flags, filesz, memsz) == (1, 7, len(elf), len(elf) + fresh.BUF_SIZE)
    seed = bytes(range(64))
    data = fresh.payload(1_700_000_000_123_456_789, seed)
    assert struct.unpack_from("<qqii", data) == (1_700_000_000, 123_456_789, 512, 64)
    assert data[24:] == seed and len(data) <= fresh.BUF_SIZE


def test_run_message_is_a_header_and_a_cpio() -> None:
    cfg = agent.RunConfig(["true"], ["PATH=/bin"], "/", 0, 0, "host1", mac="52:54:00:01:02:03")
    msg = agent.run_message(cfg, 1_700_000_000_000_000_000, b"\1" * 64, arch="x86_64")
    header, _, body = msg.partition(b"\n")
    word, size = header.split()
    assert word == b"cove-run" and int(size) == len(body)
    names = []
    at = 0
    while True:  # newc: 110-byte header, name, data, each padded to 4
        namesize = int(body[at + 94 : at + 102], 16)
        filesize = int(body[at + 54 : at + 62], 16)
        name = body[at + 110 : at + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.append(name)
        at += 110 + namesize
        at += -at % 4
        if name == "cove/config":
            config = body[at : at + filesize].decode()
        at += filesize + (-filesize % 4)
    assert {"cove/config", "cove/setids", "cove/fresh", "cove/fresh.in"} <= set(names)
    assert "COVE_MAC=52:54:00:01:02:03" in config and "COVE_STDIN=0" in config


def test_agent_parks_only_as_a_template() -> None:
    # the cold path never waits: only the template's command line has the word
    assert "cove.template" not in agent.cmdline().split()
    assert "cove.template" in tmpl.cmdline().split()
    assert "grep -qw cove.template /proc/cmdline" in agent.INIT


def test_templates_only_where_the_freshness_program_runs() -> None:
    # an arm64 host's own guests are not foreign, yet fresh.program() is x86-64 code
    assert tmpl.supported("x86_64")
    assert not tmpl.supported("aarch64")
    assert not tmpl.supported("riscv64")


def test_run_message_refuses_a_guest_it_has_no_program_for() -> None:
    cfg = agent.RunConfig(["true"], ["PATH=/bin"], "/", 0, 0, "host1")
    with pytest.raises(Unsupported, match="aarch64"):
        agent.run_message(cfg, 1_700_000_000_000_000_000, b"\1" * 64, arch="aarch64")
    # control: the same config for an x86-64 guest carries the program
    assert fresh.program() in agent.run_message(cfg, 1_700_000_000_000_000_000, b"\1" * 64,
                                                arch="x86_64")  # fmt: skip
