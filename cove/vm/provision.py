"""Making a ``cove vm``: its disk (an overlay on a base image, or a new one), its lease on a
cove network and its cloud-init seed; and the disk checks every start repeats."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from cove.errors import InvalidSpec, NotFound
from cove.spec.vm import VMSpec
from cove.vm.vmstore import VMRecord, VMStore


def create(store: VMStore, spec: VMSpec, undo: Callable[[VMRecord], None]) -> VMRecord:
    """A new VM's row and files; on any failure ``undo`` removes every trace of it."""
    from cove.vm import disks

    spec.validate()
    for f in (spec.iso, spec.kernel, spec.initrd, spec.disk_image, spec.cloud_init,
              spec.ssh_key):  # fmt: skip
        if f and not os.path.isfile(f):
            raise NotFound(f"no such file: {f}")
    for attr in ("iso", "kernel", "initrd", "disk_image", "cloud_init", "ssh_key"):
        value = getattr(spec, attr)
        if value:
            setattr(spec, attr, os.path.abspath(value))
    spec.allow_backing = [os.path.abspath(p) for p in spec.allow_backing]
    if spec.disk_image:
        check_base(spec, store.dir)
    rec = VMRecord(secrets.token_hex(32), spec.name, spec, created=time.time())
    rec.mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
    paths = store.paths(rec)
    os.makedirs(paths.dir, mode=0o700)
    try:
        if spec.disk_image:
            assert spec.disk_format is not None  # set by check_base
            disks.overlay(paths.disk, spec.disk_image, spec.disk_format)
            if spec.disk_size and spec.disk_size > disks.virtual_size(paths.disk):
                disks.resize(paths.disk, spec.disk_size)
        elif spec.disk_size:
            disks.create(paths.disk, spec.disk_size)
        store.insert(rec)  # the name is taken from here on (UNIQUE)
        if spec.network not in ("user", "none"):
            from cove.sys.userns import rootless

            if rootless():  # a tap on a bridge needs CAP_NET_ADMIN on the host
                raise InvalidSpec(
                    f"vm {spec.name}: network {spec.network} needs root (a tap on its "
                    "bridge); rootless VMs use --network user, with -p for ports"
                )
            lease(store, rec)
        seed(store, rec)
        store.save(rec)
    except BaseException:
        undo(rec)
        raise
    return rec


def check_base(spec: VMSpec, own: str) -> None:
    """Settle the base image's format (declared, or probed once here and recorded so it
    is never probed again) and refuse a backing chain that reaches files nobody named."""
    from cove.vm import disks

    assert spec.disk_image
    declared = spec.disk_format is not None
    fmt = spec.disk_format or disks.fmt(spec.disk_image)
    try:
        disks.check_chain(spec.disk_image, fmt, allowed=spec.allow_backing, own=own)
    except InvalidSpec as e:
        if declared:
            raise
        raise InvalidSpec(f"{e}; its format was probed as {fmt}: --disk-format if it is not") from e
    spec.disk_format = fmt


def check_disk(store: VMStore, rec: VMRecord) -> None:
    """At each start, the VM's disk chain again: a base image is the user's file and its
    header (its backing file) may have changed since create."""
    from cove.vm import disks

    allowed = [rec.spec.disk_image] if rec.spec.disk_image else []
    disks.check_chain(store.paths(rec).disk, "qcow2",
                      allowed=[*allowed, *rec.spec.allow_backing], own=store.dir)  # fmt: skip


def networks(store: VMStore) -> Any:
    from cove.network.manager import NetworkManager

    return NetworkManager(store.root, store.db)


def lease(store: VMStore, rec: VMRecord) -> None:
    rec.tap = "ctap" + rec.id[:10]
    n, got = networks(store).lease_vm(rec.id, rec.name, rec.spec.network, rec.tap)
    rec.network_id, rec.address, rec.mac = n.id, got.address, got.mac


def seed(store: VMStore, rec: VMRecord) -> None:
    """The NoCloud seed: the user's user-data as given, the hostname, the user and key,
    and, on a cove network, the static address cove leased."""
    spec = rec.spec
    net_cfg: bytes | None = None
    if rec.address:
        import ipaddress

        n = networks(store).store.get(rec.network_id)
        prefix = ipaddress.IPv4Network(n.subnet).prefixlen
        net_cfg = (
            "version: 2\nethernets:\n  eth0:\n    match:\n"
            f'      macaddress: "{rec.mac}"\n    set-name: eth0\n'
            f'    addresses: ["{rec.address}/{prefix}"]\n'
            f'    routes: [{{to: "0.0.0.0/0", via: "{n.gateway}"}}]\n'
            f'    nameservers: {{addresses: ["{n.gateway}"]}}\n'
        ).encode()
    if not (spec.cloud_init or spec.ssh_key or spec.user or net_cfg):
        return
    from cove.vm import cloudinit

    keys: list[str] = []
    if spec.ssh_key:
        with open(spec.ssh_key) as f:
            keys = [ln.strip() for ln in f if ln.strip()]
    user_data = None
    if spec.cloud_init:
        with open(spec.cloud_init, "rb") as f:
            user_data = f.read()
    cloudinit.build_seed(
        store.paths(rec).seed,
        instance_id=f"cove-{rec.id[:12]}",
        hostname=rec.name,
        user=spec.user or ("cove" if keys and not user_data else None),
        ssh_keys=keys,
        user_data=user_data,
        network_config=net_cfg,
    )
