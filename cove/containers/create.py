"""``docker create``: the record, the bundle (OCI spec, overlay layers, etc files) and the
volumes; no process yet. Names are in ``names``, the network options' checks in ``netopts``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from cove.containers import lifecycle, platforms
from cove.containers.lifecycle import crash_point, self_ids
from cove.containers.mounts import resolve_mounts
from cove.containers.names import check_name, container_name
from cove.containers.netopts import network_opts
from cove.containers.reconcile import purge
from cove.containers.record import docker_config, log_config
from cove.errors import InvalidSpec, NotFound, best_effort
from cove.state import OP_CREATE, Record, now
from cove.sys import private, trace

if TYPE_CHECKING:
    from cove.containers.engine import ContainerEngine


def create(ce: ContainerEngine, opts: Any, *, op: str = "", image: Any = None) -> str:
    """``docker create``: the record, the bundle and the volumes; no process yet."""
    # invariant: the image stays pinned from its resolution until the record naming it
    # is committed; rmi and garbage collection then see this container as its user
    with ce.engine.images.pin():
        return _create(ce, opts, op=op, image=image)


def _create(ce: ContainerEngine, opts: Any, *, op: str, image: Any) -> str:
    """``create``'s work, under the pin.

    With ``op`` the row stays marked as in flight (``run`` hands it on to ``start``; a
    build keeps it so: should the builder die, the next command removes the container).
    ``image`` is an unnamed store image (a build's intermediate state) to use as is.
    """
    from cove import bundle as ctr
    from cove.runtime.init import ANNOTATION_OVERLAY
    from cove.spec import flags

    img = image if image is not None else image_for_run(ce, opts)
    trace.mark("image")
    crash_point("create-image")  # resolved, not yet recorded: the window pin() covers
    # another CPU architecture runs through QEMU (binfmt_misc), registered here if missing;
    # a build's intermediate image (``image``) was asked for by its --platform: no warning
    if platforms.check(ce.engine.root, opts.image, img.config.platform, opts.platform,
                       warn=image is None):  # fmt: skip
        # an emulated pid 1 cannot die of a signal: QEMU re-raises the guest's fatal signals
        # at itself, and pid 1 of a namespace ignores those it has no handler for (it hangs);
        # a native init (tini, static) is pid 1 instead and reports the child's end
        opts.init = True
    restart = flags.parse_restart(opts.restart or "no")
    if restart["Name"] and opts.rm:
        raise InvalidSpec("conflicting options: cannot specify both --restart and --rm")
    log_cfg = log_config(opts.log_opts)
    opts, port_bindings = network_opts(ce, opts)
    stop_signal = opts.stop_signal or img.config.config.get("StopSignal") or "SIGTERM"
    flags.parse_signal(stop_signal)
    # secrets.token_hex's own source (os.urandom), without importing secrets: it loads hmac
    # and OpenSSL's libcrypto (~4 ms of the start path)
    cid = os.urandom(32).hex()
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
    if opts.name is not None:
        check_name(opts.name)
    ctr.check_etc_inputs(opts)  # before the row: a refused value leaves nothing behind
    lifecycle.add(ce.store, rec)
    trace.mark("record")
    crash_point("create-row")
    cdir = ce.cdir(cid)
    try:
        # containers/ is searchable (a user-namespaced root reaches its bundle by path);
        # the bundle is root's alone (0700, 0710 for the mapped root's group): config.json
        # holds the environment and upper/ whatever setuid files the container made
        private.make_dir(os.path.join(ce.root, "containers"), private.SHARED_MODE)
        private.make_dir(cdir, 0o700, parents=False)
        os.mkdir(os.path.join(cdir, "rootfs"), 0o700)
        for d in ("upper", "work"):
            # upper/ is the container's / (its mode shows as the root directory's)
            private.make_dir(os.path.join(cdir, d), 0o755, parents=False)
        crash_point("create-dirs")
        layers = ce.engine.unpack_image(img)
        top_first = list(reversed(layers))
        image_cfg = img.config.config
        keep = ctr.keep_id(opts)  # rootless --userns=keep-id: the user's ids inside
        if keep is not None and not opts.user:
            user = ctr.keep_id_user(keep, top_first)
        else:
            user = ctr.resolve_user(
                opts.user or image_cfg.get("User") or "", opts.group_add, top_first
            )
        hostname = opts.hostname or cid[:12]
        files = ctr.etc_files(cdir, hostname, opts.network, add_hosts=opts.add_hosts, dns=opts.dns)
        if keep is not None:
            from cove.containers import keepid

            files.update(keepid.etc_files(cdir, keep, top_first))
        mounts, docker_mounts, copy_up = resolve_mounts(ce, opts, image_cfg, top_first)
        oci = ctr.build_spec(opts, image_cfg, user, cid, files, None, mounts)
        if copy_up:
            from cove.image.diff import copy_merged
            from cove.runtime.api import host_root_ids

            shift = host_root_ids(oci) if oci.namespace("user") is not None else (0, 0)
            for rel, path in copy_up:
                copy_merged(top_first, rel, path, uid_shift=shift[0], gid_shift=shift[1])
        if not opts.privileged and oci.process.capabilities is not None:
            oci.linux.seccomp = _seccomp(ce, opts, oci.process.capabilities.bounding)
        if oci.namespace("user") is not None:
            _prepare_userns(ce, cdir, oci)
        if keep is not None:
            oci.annotations[ANNOTATION_OVERLAY] = keepid.overlay_annotation(
                ce, oci, top_first, cdir
            )
        else:
            oci.annotations[ANNOTATION_OVERLAY] = ctr.overlay_annotation(
                ce.engine.images.layers_dir,
                top_first,
                os.path.join(cdir, "upper"),
                os.path.join(cdir, "work"),
            )
        if opts.tty:
            from cove.sys.terminal import terminal_size

            size = terminal_size()
            if size:
                from cove.spec.runtime import Box

                oci.process.console_size = Box(*size)
        with open(os.path.join(cdir, "config.json"), "wb") as f:
            f.write(oci.to_bytes())
        trace.mark("bundle")
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
        config["LogPath"] = ce.log_path(cid)
        lifecycle.created(ce.store, cid, config, keep_op=bool(op))
    except BaseException:
        with best_effort(f"remove the half-made container {cid}", __name__):
            purge(ce, ce.store.get(cid))
        raise
    return cid


def image_for_run(ce: ContainerEngine, opts: Any) -> Any:
    """``--pull missing|always|never`` (Docker's default: missing)."""
    if opts.pull not in ("missing", "always", "never"):
        raise InvalidSpec(f"invalid --pull {opts.pull!r}: want missing, always or never")
    if opts.pull == "always":
        from cove.registry.dist import pull

        pull(ce.engine, opts.image, platform=opts.platform, tls_verify=opts.tls_verify)
    try:  # a multi-platform image: the manifest of the --platform asked for
        return ce.engine.images.resolve(opts.image, opts.platform)
    except NotFound:
        if opts.pull == "never":
            raise
    from cove.registry.dist import pull

    sys.stderr.write(f"Unable to find image '{opts.image}' locally\n")
    pull(ce.engine, opts.image, platform=opts.platform, tls_verify=opts.tls_verify)
    return ce.engine.images.resolve(opts.image, opts.platform)


def _prepare_userns(ce: ContainerEngine, cdir: str, oci: Any) -> None:
    """The mapped root must own its upper layer and reach the bundle by path."""
    from cove.runtime.api import host_root_ids

    uid, gid = host_root_ids(oci)
    for d in ("upper", "work"):
        os.chown(os.path.join(cdir, d), uid, gid)
    private.own_dir(cdir, gid)  # 0710: the mapped root's group may traverse, no one else
    path = os.path.dirname(cdir)
    while path != "/":
        st = os.stat(path)
        # a directory whose owner and group the map holds is the container root's to
        # search with CAP_DAC_READ_SEARCH (capabilities of a user namespace reach inodes
        # with mapped ids): rootless keep-id's, in the user's own home
        mapped = _maps(oci.linux.uid_mappings, st.st_uid) and _maps(
            oci.linux.gid_mappings, st.st_gid
        )
        if not st.st_mode & 0o001 and not mapped:
            raise InvalidSpec(
                f"a user namespace needs every directory above the bundle searchable by "
                f"others: {path} is not (chmod o+x, or use a state root elsewhere)"
            )
        path = os.path.dirname(path)


def _maps(maps: list[Any], host_id: int) -> bool:
    return any(m.host_id <= host_id < m.host_id + m.size for m in maps)


def _seccomp(ce: ContainerEngine, opts: Any, caps: list[str]) -> Any:
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
