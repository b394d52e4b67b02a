"""cove.bundle.build_spec: run options and image config to an OCI spec, with Docker's
defaults (moby's oci/defaults.go and daemon/oci_linux.go as the reference). No root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cove.bundle import ResolvedUser, RunOptions, build_spec
from cove.errors import InvalidSpec
from cove.spec import runtime as rt

CID = "0123456789abcdef" * 4
ROOT = ResolvedUser(uid=0, gid=0, additional=[], home="/root", name="root")
NOBODY = ResolvedUser(uid=65534, gid=65534, additional=[7], home="/home/nobody", name="nobody")
IMAGE = {"Env": ["PATH=/image/bin", "LANG=C"], "Entrypoint": ["/ep"], "Cmd": ["default"],
         "WorkingDir": "/srv"}  # fmt: skip
SECCOMP = rt.Seccomp(default_action="SCMP_ACT_ERRNO")


def spec(opts: RunOptions | None = None, image: dict[str, Any] | None = None,
         user: ResolvedUser = ROOT, files: dict[str, str] | None = None) -> rt.Spec:  # fmt: skip
    return build_spec(opts or RunOptions(image="img:1"), IMAGE if image is None else image,
                      user, CID, files or {}, SECCOMP)  # fmt: skip


def env(s: rt.Spec) -> dict[str, str]:
    return dict(e.split("=", 1) for e in s.process.env)


def ns(s: rt.Spec) -> dict[str, str]:
    return {n.type: n.path for n in s.linux.namespaces}


def mount(s: rt.Spec, dest: str) -> rt.Mount:
    found = [m for m in s.mounts if m.destination == dest]
    assert len(found) == 1, (dest, found)
    return found[0]


def test_env_defaults_image_and_flags_in_docker_order(tmp_path: Path) -> None:
    envfile = tmp_path / "e.env"
    envfile.write_text("# comment\nFROM_FILE=1\nLANG=from-file\n")
    s = spec(RunOptions(image="img:1", env=["LANG=flag", "X=y"], env_files=[str(envfile)]))
    got = env(s)
    assert got["PATH"] == "/image/bin"  # the image's PATH wins over the default
    assert got["HOSTNAME"] == CID[:12] and got["HOME"] == "/root"
    assert got["LANG"] == "flag"  # -e beats --env-file beats the image
    assert got["FROM_FILE"] == "1" and got["X"] == "y"
    assert "TERM" not in got
    assert len(s.process.env) == len(got)  # no name twice
    bare = env(
        spec(RunOptions(image="img:1", tty=True, hostname="h1"), image={"Cmd": ["x"]}, user=NOBODY)
    )
    assert bare["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert (bare["TERM"], bare["HOSTNAME"], bare["HOME"]) == ("xterm", "h1", "/home/nobody")


@pytest.mark.parametrize(
    ("entrypoint", "command", "args"),
    [
        (None, [], ["/ep", "default"]),
        (None, ["x", "y"], ["/ep", "x", "y"]),  # a command replaces CMD only
        ("/other -v", [], ["/other", "-v"]),  # --entrypoint also drops the image's CMD
        ("", ["sh"], ["sh"]),  # --entrypoint "" resets it
    ],
)
def test_entrypoint_and_cmd(entrypoint: str | None, command: list[str], args: list[str]) -> None:
    s = spec(RunOptions(image="img:1", entrypoint=entrypoint, command=command))
    assert s.process.args == args


def test_no_command_at_all_is_refused() -> None:
    with pytest.raises(InvalidSpec):
        spec(image={})


def test_workdir_hostname_root_and_identity() -> None:
    s = spec()
    assert s.process.cwd == "/srv" and s.hostname == CID[:12]
    assert s.root == rt.Root("rootfs", False)
    assert s.linux.cgroups_path == f"cove/{CID}"
    assert s.annotations == {"io.cove.image": "img:1"}
    s = spec(RunOptions(image="img:1", workdir="/w", read_only=True), image={"Cmd": ["x"]},
             user=NOBODY)  # fmt: skip
    assert s.process.cwd == "/w" and s.root.readonly
    assert (s.process.user.uid, s.process.user.gid) == (65534, 65534)
    assert s.process.user.additional_gids == [7]
    assert spec(image={"Cmd": ["x"]}).process.cwd == "/"


def test_capabilities_for_root_and_for_a_user() -> None:
    caps = spec().process.capabilities
    assert caps is not None
    assert caps.bounding == rt.DEFAULT_CAPS == caps.effective == caps.permitted
    assert caps.inheritable == [] and caps.ambient == []
    # a non-root user keeps the bounding set but holds nothing (Docker's behaviour)
    caps = spec(user=NOBODY).process.capabilities
    assert caps is not None and caps.bounding == rt.DEFAULT_CAPS
    assert caps.effective == [] and caps.permitted == []
    opts = RunOptions(image="img:1", cap_add=["sys_admin"], cap_drop=["NET_RAW"])
    caps = spec(opts).process.capabilities
    assert caps is not None
    assert "CAP_SYS_ADMIN" in caps.bounding and "CAP_NET_RAW" not in caps.bounding
    opts = RunOptions(image="img:1", cap_drop=["ALL"], cap_add=["CHOWN"])
    caps = spec(opts).process.capabilities
    assert caps is not None and caps.bounding == ["CAP_CHOWN"]


def test_default_namespaces_and_host_modes() -> None:
    assert ns(spec()) == {"mount": "", "cgroup": "", "pid": "", "ipc": "", "uts": "",
                          "network": ""}  # fmt: skip
    s = spec(RunOptions(image="img:1", pid="host", ipc="host", uts="host", network="host"))
    assert set(ns(s)) == {"mount", "cgroup"}
    s = spec(RunOptions(image="img:1", network="container:/proc/42/ns/net"))
    assert ns(s)["network"] == "/proc/42/ns/net"


@pytest.mark.parametrize(("field", "value"), [("pid", "shared"), ("ipc", "container:x"),
                                              ("uts", "yes"), ("userns", "nomap")])  # fmt: skip
def test_bad_namespace_modes_are_refused(field: str, value: str) -> None:
    kw: dict[str, Any] = {field: value}
    with pytest.raises(InvalidSpec, match=f"invalid --{field} '{value}'"):
        spec(RunOptions(image="img:1", **kw))


def test_user_namespace_auto_and_explicit_maps() -> None:
    s = spec(RunOptions(image="img:1", userns="auto"))
    assert "user" in ns(s)
    (m,) = s.linux.uid_mappings
    assert m.container_id == 0 and m.size == 65536 and m.host_id >= 100_000
    assert (m.host_id - 100_000) % 65536 == 0 and s.linux.gid_mappings == [m]
    other = spec(RunOptions(image="img:1", userns="auto")).linux.uid_mappings
    assert other == [m]  # the same container id gets the same range again
    s = spec(RunOptions(image="img:1", uidmap=["0:200000:1000"], gidmap=["0:300000:10"]))
    assert s.linux.uid_mappings == [rt.IDMapping(0, 200000, 1000)]
    assert s.linux.gid_mappings == [rt.IDMapping(0, 300000, 10)]
    assert "user" not in ns(spec())
    with pytest.raises(InvalidSpec, match="want CONTAINER_ID:HOST_ID:SIZE"):
        spec(RunOptions(image="img:1", uidmap=["0:1"]))


def test_unprivileged_confinement_and_mounts() -> None:
    s = spec()
    assert s.linux.masked_paths == rt.DEFAULT_MASKED_PATHS
    assert s.linux.readonly_paths == rt.DEFAULT_READONLY_PATHS
    assert s.linux.seccomp is SECCOMP
    assert [m.destination for m in s.mounts][:8] == [
        "/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm",
    ][:8]  # fmt: skip
    assert mount(s, "/sys").type == "sysfs" and "ro" in mount(s, "/sys").options
    assert "ro" in mount(s, "/sys/fs/cgroup").options
    assert "size=67108864" in mount(s, "/dev/shm").options  # Docker's 64 MiB
    assert {"nosuid", "noexec", "nodev"} <= set(mount(s, "/proc").options)


def test_privileged_drops_the_confinement() -> None:
    s = spec(RunOptions(image="img:1", privileged=True))
    assert s.linux.masked_paths == [] and s.linux.readonly_paths == [] and s.linux.seccomp is None
    assert "ro" not in mount(s, "/sys").options
    assert "ro" not in mount(s, "/sys/fs/cgroup").options
    assert s.linux.resources is not None
    assert rt.DeviceRule(allow=True, type="a") in s.linux.resources.devices
    caps = s.process.capabilities
    assert caps is not None and set(rt.DEFAULT_CAPS) < set(caps.bounding)
    assert "CAP_SYS_ADMIN" in caps.bounding


def test_host_network_binds_the_hosts_sys_read_only() -> None:
    m = mount(spec(RunOptions(image="img:1", network="host")), "/sys")
    assert (m.type, m.source) == ("bind", "/sys")
    assert "rbind" in m.options and "ro" in m.options


def test_files_tmpfs_and_extra_mounts() -> None:
    extra = [rt.Mount("/data", "bind", "/var/lib/x", ["rbind"])]
    s = build_spec(RunOptions(image="img:1", tmpfs=["/run:size=1m"]), IMAGE, ROOT, CID,
                   {"/etc/hosts": "/state/hosts"}, SECCOMP, extra)  # fmt: skip
    assert mount(s, "/etc/hosts") == rt.Mount("/etc/hosts", "bind", "/state/hosts",
                                              ["rbind", "rprivate"])  # fmt: skip
    assert mount(s, "/data") == extra[0]
    run = mount(s, "/run")
    assert run.type == "tmpfs" and any(o.startswith("size=") for o in run.options)


def test_resources() -> None:
    s = spec(RunOptions(image="img:1", memory="64m", cpus="1.5", cpu_shares=512,
                        cpuset_cpus="0", pids_limit=10))  # fmt: skip
    res = s.linux.resources
    assert res is not None
    assert res.memory == rt.Memory(64 << 20, 128 << 20)  # swap twice the memory by default
    assert res.cpu == rt.CPU(shares=512, quota=150_000, period=100_000, cpus="0")
    assert res.pids == rt.Pids(10)
    res = spec(RunOptions(image="img:1", memory="64m", memory_swap="-1")).linux.resources
    assert res is not None and res.memory == rt.Memory(64 << 20, -1)
    none = spec().linux.resources
    assert none is not None and (none.memory, none.cpu, none.pids) == (None, None, None)
    assert spec(RunOptions(image="img:1", pids_limit=0)).linux.resources == none


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"memory": "64m", "memory_swap": "32m"}, "memoryswap limit should be larger"),
        ({"memory_swap": "64m"}, "always set the memory limit"),
        ({"cpus": "0"}, "must be positive"),
        ({"cpus": "lots"}, "invalid --cpus"),
        ({"ulimits": ["nofile=a"]}, "want NAME=SOFT"),
    ],
)
def test_bad_resources_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        spec(RunOptions(image="img:1", **kw))


def test_ulimits_and_no_new_privileges() -> None:
    s = spec(RunOptions(image="img:1", ulimits=["nofile=1024:2048", "nproc=50"],
                        security_opt=["no-new-privileges"]))  # fmt: skip
    assert s.process.rlimits == [rt.Rlimit("RLIMIT_NOFILE", 2048, 1024),
                                 rt.Rlimit("RLIMIT_NPROC", 50, 50)]  # fmt: skip
    assert s.process.no_new_privileges
    opts = RunOptions(image="img:1", security_opt=["no-new-privileges:true"])
    assert spec(opts).process.no_new_privileges
    assert not spec().process.no_new_privileges


def test_the_spec_round_trips_through_config_json() -> None:
    s = spec(RunOptions(image="img:1", userns="auto", memory="8m", tty=True))
    assert rt.Spec.parse(s.to_bytes()) == s
