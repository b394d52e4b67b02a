"""Rootless ``--userns=keep-id`` (Podman's): the bundle pieces a keep-id container adds.

The container gets a user namespace of its own inside rootless cove's, mapping the user
(id 0 there) to the kept ids; the process runs as them, with the user's name and home in
/etc/passwd; its lower layers are copies with the owners shifted through the same map
(:mod:`cove.image.idshift`: no idmapped mounts of host file systems outside the initial
user namespace).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from cove import bundle as ctr
from cove.sys.userns import KeepId

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def etc_files(cdir: str, keep: KeepId, layers_top_first: list[str]) -> dict[str, str]:
    """The image's /etc/passwd and /etc/group with the user's entries, written into the
    bundle and bind-mounted over the image's (dest -> source)."""
    from cove.sys.userns import keep_id_map, map_id, ns_size

    # owned by the container's root, as the image's files are (not by the kept user)
    uid = map_id(keep_id_map(keep.uid, ns_size()), 0)
    gid = map_id(keep_id_map(keep.gid, ns_size("/proc/self/gid_map")), 0)
    out = {}
    for name, text in ctr.keep_id_passwd(keep, layers_top_first).items():
        path = os.path.join(cdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chown(path, uid if uid is not None else 0, gid if gid is not None else 0)
        os.chmod(path, 0o644)  # readable by every user of the container, as the image's
        out[f"/etc/{name}"] = path
    return out


def overlay_annotation(ce: ContainerEngine, oci: Any, layers_top_first: list[str],
                       cdir: str) -> str:  # fmt: skip
    """The overlay annotation over shifted copies of the layers, marked so the runtime
    stacks them as they are (no idmapped mounts)."""
    from cove.image.idshift import shifted_layers

    def rows(maps: list[Any]) -> list[tuple[int, int, int]]:
        return [(m.container_id, m.host_id, m.size) for m in maps]

    top, lowers = shifted_layers(
        ce.engine.images, layers_top_first, rows(oci.linux.uid_mappings),
        rows(oci.linux.gid_mappings),
    )  # fmt: skip
    cfg = json.loads(
        ctr.overlay_annotation(top, lowers, os.path.join(cdir, "upper"), os.path.join(cdir, "work"))
    )
    cfg["shifted"] = True
    return json.dumps(cfg)
