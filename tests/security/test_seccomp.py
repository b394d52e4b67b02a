"""The default seccomp profile is an allowlist: hostile raw syscalls from inside a container.

Each probe is a hand-assembled static program (tests/helpers.py ``syscall_probe``) that makes
one syscall and exits with the errno it got, so the container's exit code is the verdict.
Under the old denylist, ``personality(PER_LINUX32_3GB)`` and a syscall number no kernel has
yet went through to the kernel; under the allowlist both fail with EPERM, as with Docker.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from helpers import CoveRunner, TarBuilder, alpine_variant, syscall_probe

DOCKER_JSON = Path("/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json")

PER_LINUX32_3GB = 0x0008 | 0x8000000  # PER_LINUX32 | ADDR_LIMIT_3GB
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
AF_INET, AF_VSOCK, SOCK_STREAM = 2, 40, 1
KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING = 0, -4

# name: (x86_64 syscall number, arguments)
PROBES: dict[str, tuple[int, tuple[int, ...]]] = {
    "personality_3gb": (135, (PER_LINUX32_3GB,)),
    "unshare_newuser": (272, (CLONE_NEWUSER,)),
    "clone_newuser": (56, (CLONE_NEWUSER | SIGCHLD, 0, 0, 0)),
    "socket_vsock": (41, (AF_VSOCK, SOCK_STREAM, 0)),
    "keyctl": (250, (KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)),
    "future_syscall": (1000, ()),  # a number no kernel has assigned yet
    # ordinary calls that must keep working
    "personality_query": (135, (0xFFFFFFFF,)),
    "clone_plain": (56, (SIGCHLD, 0, 0, 0)),
    "socket_inet": (41, (AF_INET, SOCK_STREAM, 0)),
}
HOSTILE = ["personality_3gb", "unshare_newuser", "clone_newuser", "socket_vsock", "keyctl",
           "future_syscall"]  # fmt: skip
ORDINARY = ["personality_query", "clone_plain", "socket_inet"]

# Docker 20.10.24's default.json allowed every socket family; moby 23 and cove refuse
# AF_VSOCK (docs/design.md, "Seccomp"). With that file the probe gets the kernel's answer.
DOCKER_2010_ALLOWS = {"socket_vsock"}


@pytest.fixture
def probes(cove: CoveRunner, alpine_tar: Path, tmp_path: Path) -> str:
    def add(tar: TarBuilder) -> None:
        tar.dir("probe")
        for name, (nr, args) in PROBES.items():
            tar.file(f"probe/{name}", syscall_probe(nr, *args), mode=0o755)

    return alpine_variant(cove, alpine_tar, "probes:1", tmp_path, add=add)


def docker_json() -> Path:
    if not DOCKER_JSON.is_file():
        pytest.fail(
            f"{DOCKER_JSON} is missing: install golang-github-docker-docker-dev "
            "(scripts/test-deps.sh)"
        )
    return DOCKER_JSON


def results(cove: CoveRunner, *opts: str) -> dict[str, int]:
    """Each probe's errno in a fresh container run with ``opts``."""
    out = {}
    for name in PROBES:
        proc = cove("run", "--rm", "--network", "none", *opts, "probes:1", f"/probe/{name}",
                    check=False)  # fmt: skip
        assert proc.returncode < 125, proc.stderr  # the container ran (not a cove error)
        out[name] = proc.returncode
    return out


def test_ordinary_container_works(cove: CoveRunner, probes: str) -> None:
    """Positive control: a normal shell, ls and a network socket under the default profile."""
    out = cove("run", "--rm", "probes:1", "sh", "-c", "echo ok; ls /probe | wc -l; "
               "wget -q -O - http://127.0.0.1:9/ 2>&1; echo wget=$?").stdout.split()  # fmt: skip
    assert out[:2] == ["ok", str(len(PROBES))]
    # a TCP socket and connect(2) reach the kernel: refused by the (empty) port, not by seccomp
    assert "refused" in " ".join(out) and out[-1] == "wget=1"


def test_default_profile_refuses_hostile_syscalls(cove: CoveRunner, probes: str) -> None:
    unconfined = results(cove, "--security-opt", "seccomp=unconfined")
    default = results(cove)
    # unconfined, the kernel itself allows every hostile call but the unassigned number
    assert unconfined["future_syscall"] == errno.ENOSYS
    for name in HOSTILE:
        if name not in ("future_syscall", "socket_vsock"):  # vsock: 0 or EAFNOSUPPORT
            assert unconfined[name] == 0, name
        assert unconfined[name] != errno.EPERM, name
        assert default[name] == errno.EPERM, name
    for name in ORDINARY:
        assert default[name] == 0 and unconfined[name] == 0, name


@pytest.mark.parametrize(
    "opts",
    [
        pytest.param(("--cap-add", "SYS_ADMIN"), id="cap-sys-admin"),
        pytest.param(("--cap-drop", "ALL"), id="no-caps"),
    ],
)
def test_capabilities_change_the_allowlist(
    cove: CoveRunner, probes: str, opts: tuple[str, ...]
) -> None:
    got = results(cove, *opts)
    admin = "SYS_ADMIN" in opts
    # CAP_SYS_ADMIN lifts the namespace filters (Docker's caps-dependent rules), nothing else
    want_ns = 0 if admin else errno.EPERM
    assert got["unshare_newuser"] == want_ns and got["clone_newuser"] == want_ns
    for name in ("personality_3gb", "socket_vsock", "keyctl", "future_syscall"):
        assert got[name] == errno.EPERM, name
    for name in ORDINARY:
        assert got[name] == 0, name


def test_docker_default_json_refuses_the_same(cove: CoveRunner, probes: str) -> None:
    """Docker's own default.json through --security-opt seccomp=FILE gives the built-in
    profile's results, except the listed differences (which get the kernel's answer)."""
    profile = docker_json()
    default = results(cove)
    unconfined = results(cove, "--security-opt", "seccomp=unconfined")
    docker = results(cove, "--security-opt", f"seccomp={profile}")
    for name in PROBES:
        want = unconfined[name] if name in DOCKER_2010_ALLOWS else default[name]
        assert docker[name] == want, name
    out = cove("run", "--rm", "--security-opt", f"seccomp={profile}", "probes:1", "sh", "-c",
               "echo ok; ls / | wc -l").stdout.split()  # fmt: skip
    assert out[0] == "ok" and int(out[1]) > 10
