"""cove's default seccomp profile against Docker's published default.json, syscall by syscall.

The reference is Docker 20.10.24's profile from the Debian package
golang-github-docker-docker-dev (scripts/test-deps.sh installs it); it is read here with an
evaluation of Docker's rules written independently of cove's. Every difference is listed
below and justified in docs/design.md ("Seccomp"): cove follows moby's current profile,
except unshare.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from cove.errors import InvalidSpec
from cove.runtime import seccomp
from cove.runtime.caps import CAPS
from cove.spec.runtime import DEFAULT_CAPS, Seccomp

DOCKER_JSON = Path("/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json")
ARCH, KERNEL = "amd64", (6, 1)

# Allowed by cove, not by Docker 20.10.24: syscalls of newer kernels that current moby allows
# (None), or allows with a capability; process_vm_readv/writev join ptrace from kernel 4.8 and
# name_to_handle_at leaves the CAP_SYS_ADMIN group, as in current moby.
ADDED: dict[str, str | None] = {
    "cachestat": None,
    "fchmodat2": None,
    "futex_requeue": None,
    "futex_wait": None,
    "futex_wake": None,
    "getxattrat": None,
    "listxattrat": None,
    "setxattrat": None,
    "removexattrat": None,
    "listmount": None,
    "statmount": None,
    "map_shadow_stack": None,
    "mseal": None,
    "uretprobe": None,
    "riscv_hwprobe": None,
    "pkey_alloc": None,
    "pkey_free": None,
    "pkey_mprotect": None,
    "name_to_handle_at": None,
    "process_vm_readv": None,
    "process_vm_writev": None,
    "lsm_get_self_attr": "CAP_SYS_ADMIN",
    "lsm_list_modules": "CAP_SYS_ADMIN",
    "lsm_set_self_attr": "CAP_SYS_ADMIN",
    "clock_settime64": "CAP_SYS_TIME",
    "set_mempolicy_home_node": "CAP_SYS_NICE",
    "bpf": "CAP_BPF",
    "perf_event_open": "CAP_PERFMON",
}
# Allowed by Docker 20.10.24, refused by cove (and current moby): io_uring bypasses seccomp.
REMOVED = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
# socket: Docker 20.10.24 allows every family; cove (and moby 23+) every family but AF_VSOCK.
SOCKET_RULE = ("socket", "SCMP_ACT_ALLOW", ((0, 40, "SCMP_CMP_NE", 0),), None)

CAP_SETS = {
    "docker-default": list(DEFAULT_CAPS),
    "sys-admin": [*DEFAULT_CAPS, "CAP_SYS_ADMIN"],
    "sys-ptrace": [*DEFAULT_CAPS, "CAP_SYS_PTRACE"],
    "all": list(CAPS),
}

Rule = tuple[str, str, tuple[tuple[int, int, str, int], ...], int | None]


def docker_doc() -> dict[str, Any]:
    if not DOCKER_JSON.is_file():
        pytest.fail(
            f"{DOCKER_JSON} is missing: install golang-github-docker-docker-dev "
            "(scripts/test-deps.sh does)"
        )
    doc: dict[str, Any] = json.loads(DOCKER_JSON.read_text())
    return doc


def docker_rules(doc: dict[str, Any], caps: list[str]) -> list[Rule]:
    """Docker's setupSeccomp (profiles/seccomp/seccomp_linux.go), restated for the test."""
    held, out = set(caps), []
    for s in doc["syscalls"]:
        inc, exc = s.get("includes") or {}, s.get("excludes") or {}
        if ARCH in (exc.get("arches") or []) or set(exc.get("caps") or []) & held:
            continue
        if exc.get("minKernel") and KERNEL >= tuple(map(int, exc["minKernel"].split("."))):
            continue
        if inc.get("arches") and ARCH not in inc["arches"]:
            continue
        if any(c not in held for c in inc.get("caps") or []):
            continue
        if inc.get("minKernel") and KERNEL < tuple(map(int, inc["minKernel"].split("."))):
            continue
        args = tuple(
            (a["index"], a["value"], a["op"], a.get("valueTwo", 0)) for a in s.get("args") or []
        )
        for name in s["names"]:
            out.append((name, s["action"], args, s.get("errnoRet")))
    return out


def cove_rules(profile: Seccomp) -> list[Rule]:
    return [
        (name, r.action, tuple((a.index, a.value, a.op, a.value_two) for a in r.args), r.errno_ret)
        for r in profile.syscalls
        for name in r.names
    ]


def split(rules: list[Rule]) -> tuple[set[str], set[Rule]]:
    """(names allowed outright, every other rule: argument filters and errno actions)."""
    allowed = {n for n, action, args, _ in rules if action == "SCMP_ACT_ALLOW" and not args}
    other = {r for r in rules if r[1] != "SCMP_ACT_ALLOW" or r[2]}
    return allowed, other


@pytest.mark.parametrize("caps", list(CAP_SETS.values()), ids=list(CAP_SETS))
def test_default_matches_docker_syscall_by_syscall(caps: list[str]) -> None:
    docker_allowed, docker_other = split(docker_rules(docker_doc(), caps))
    profile = seccomp.default_profile(caps, ARCH, KERNEL)
    allowed, other = split(cove_rules(profile))

    added = {n for n, cap in ADDED.items() if cap is None or cap in caps}
    want_allowed = (docker_allowed - REMOVED - {"socket"}) | added
    assert sorted(allowed - want_allowed) == [], "allowed by cove only"
    assert sorted(want_allowed - allowed) == [], "allowed by Docker only"
    assert other == docker_other | {SOCKET_RULE}
    assert profile.default_action == "SCMP_ACT_ERRNO" and profile.default_errno_ret == errno.EPERM
    assert profile.architectures == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_differences_are_real() -> None:
    """Each listed difference is one (a stale entry would hide nothing and mislead)."""
    for name, cap in ADDED.items():
        caps = [*DEFAULT_CAPS, *([cap] if cap else [])]
        docker_allowed, _ = split(docker_rules(docker_doc(), caps))
        allowed, _ = split(cove_rules(seccomp.default_profile(caps, ARCH, KERNEL)))
        assert name in allowed and name not in docker_allowed, name
    docker_allowed, _ = split(docker_rules(docker_doc(), list(DEFAULT_CAPS)))
    allowed, _ = split(cove_rules(seccomp.default_profile(list(DEFAULT_CAPS), ARCH, KERNEL)))
    assert REMOVED <= docker_allowed and not REMOVED & allowed
    assert "socket" in docker_allowed and "socket" not in allowed


def test_hostile_calls_need_their_capability() -> None:
    plain = split(cove_rules(seccomp.default_profile(list(DEFAULT_CAPS), ARCH, KERNEL)))[0]
    hostile = "unshare setns mount keyctl add_key bpf kcmp reboot init_module kexec_load"
    for name in [*hostile.split(), "io_uring_setup", "personality", "clone", "clone3"]:
        assert name not in plain, name
    admin_caps = [*DEFAULT_CAPS, "CAP_SYS_ADMIN"]
    admin = split(cove_rules(seccomp.default_profile(admin_caps, ARCH, KERNEL)))[0]
    assert {"unshare", "setns", "mount", "clone", "clone3"} <= admin


def test_from_docker_json_reads_docker_default_as_docker_does() -> None:
    doc = docker_doc()
    for caps in CAP_SETS.values():
        got = seccomp.from_docker_json(DOCKER_JSON.read_bytes(), caps, "default.json", ARCH,
                                       KERNEL)  # fmt: skip
        assert sorted(cove_rules(got), key=repr) == sorted(docker_rules(doc, caps), key=repr)
        assert got.default_action == "SCMP_ACT_ERRNO"
        assert got.architectures == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def _profile(syscalls: list[dict[str, Any]], **top: Any) -> bytes:
    return json.dumps({"defaultAction": "SCMP_ACT_ERRNO", **top, "syscalls": syscalls}).encode()


def test_from_docker_json_conditions_and_fields() -> None:
    allow = "SCMP_ACT_ALLOW"
    masked = {"index": 1, "value": 7, "valueTwo": 4, "op": "SCMP_CMP_MASKED_EQ"}
    syscalls = [
        {"names": ["a"], "action": allow, "includes": {"minKernel": "6.2"}},
        {"names": ["b"], "action": allow, "excludes": {"minKernel": "6.1"}},
        {"names": ["c"], "action": allow, "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}},
        {"names": ["d"], "action": allow, "includes": {"caps": ["CAP_BPF", "CAP_CHOWN"]}},
        {"names": ["e"], "action": allow, "includes": {"arches": ["arm64"]}},
        {"names": ["f"], "action": allow, "excludes": {"arches": ["amd64"]}},
        {"name": "g", "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "args": [masked]},
    ]
    arch_map = [
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
    ]
    data = _profile(syscalls, defaultErrnoRet=13, archMap=arch_map)
    got = seccomp.from_docker_json(data, ["CAP_BPF"], "t.json", ARCH, (6, 1))
    # a: kernel too old; b: kernel new enough to exclude; c: a listed cap held; d: not every
    # listed cap held; e: another arch; f: this arch excluded
    assert cove_rules(got) == [("g", "SCMP_ACT_ERRNO", ((1, 7, "SCMP_CMP_MASKED_EQ", 4),), 38)]
    assert got.default_errno_ret == 13
    assert got.architectures == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    got = seccomp.from_docker_json(data, ["CAP_BPF", "CAP_CHOWN"], "t.json", "arm64", (6, 2))
    assert [r[0] for r in cove_rules(got)] == ["a", "d", "e", "f", "g"]
    assert got.architectures == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


@pytest.mark.parametrize(
    "data",
    [
        _profile([], architectures=["SCMP_ARCH_X86_64"], archMap=[{"architecture": "x"}]),
        _profile([{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]),
        _profile([{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0}]}]),
        _profile([{"names": ["a"]}]),
        b"{}",
    ],
    ids=["arches-and-archmap", "name-and-names", "arg-without-value", "no-action", "empty"],
)
def test_from_docker_json_refuses_malformed(data: bytes) -> None:
    with pytest.raises(InvalidSpec, match=r"t\.json"):
        seccomp.from_docker_json(data, [], "t.json", ARCH, KERNEL)


def test_unknown_names_are_skipped_never_allowed() -> None:
    """A name libseccomp does not know compiles to the same program as its absence: the
    syscall keeps the default action (EPERM)."""
    pytest.importorskip("pyseccomp")
    base = seccomp.default_profile(list(DEFAULT_CAPS))
    with_unknown = seccomp.default_profile(list(DEFAULT_CAPS))
    with_unknown.syscalls[0].names.append("no_such_syscall_cove_test")
    assert seccomp.compile_bpf(with_unknown) == seccomp.compile_bpf(base)
