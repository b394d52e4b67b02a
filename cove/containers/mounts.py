"""-v, --mount, --volumes-from and the image's VOLUMEs, resolved at create."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cove.containers.record import config_of
from cove.sys import private

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def resolve_mounts(
    ce: ContainerEngine, opts: Any, image_cfg: dict[str, Any], top_first: list[str]
) -> tuple[list[Any], list[dict[str, Any]], list[tuple[str, str]]]:
    """-v, --mount, --volumes-from and the image's VOLUMEs as OCI mounts plus Docker's
    ``Mounts`` records, and the (image path, volume dir) pairs of new, empty volumes
    that get the image's content."""
    from cove import bundle as ctr
    from cove.spec import flags
    from cove.spec import runtime as rt

    reqs = [flags.parse_volume(v) for v in opts.volumes]
    reqs += [ctr.parse_mount(m) for m in opts.mounts]
    targets = {r.target.rstrip("/") or "/" for r in reqs}
    for ref in opts.volumes_from:
        name, _, mode = ref.partition(":")
        other = ce.get(name)
        for m in config_of(other).mounts:
            if m["Destination"] in targets:
                continue
            ro = (not m.get("RW", True)) if mode not in ("ro", "rw") else mode == "ro"
            src = m["Name"] if m["Type"] == "volume" else m["Source"]
            reqs.append(flags.MountRequest(m["Type"], src, m["Destination"], ro))
            targets.add(m["Destination"])
    for path in image_cfg.get("Volumes") or {}:
        if path.rstrip("/") not in targets:
            reqs.append(flags.MountRequest("volume", "", path))
    vols = ce.volumes()
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
