"""One scripted docker CLI (20.10) session, run against a dockerd this test starts and
against ``cove serve``: the outputs are equal once ids, times and sizes are normalised.

Every difference the comparison allows is in ``ALLOWED`` below, with why.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ALPINE_TAR, DOCKER_20, CoveRunner, Served, start_serve, stop_serve

DOCKERD = "/usr/sbin/dockerd"

# (what differs, why it is allowed, the pattern removed from both transcripts)
ALLOWED: list[tuple[str, str, str]] = [
    ("legacy builder intermediate containers",
     "dockerd commits every step through a container ('Running in', 'Removing intermediate "
     "container', ' ---> <id>'); cove's builder makes layers without per-step containers "
     "and reports a cached FROM silently",
     r"^( ---> .*|Removing intermediate container .*)$"),
    ("build context upload line",
     "the CLI prints 'Sending build context' only when the daemon does not send it itself; "
     "the count of bytes depends on the tar the CLI made",
     r"^Sending build context to Docker daemon.*$"),
    ("parent images deleted by rmi",
     "dockerd keeps one parent image per build step and deletes them with the last one; "
     "cove keeps no intermediate images, so one Deleted line stands for the chain",
     r"^(Deleted: <id>\n)+"),
    ("history of an imported image",
     "dockerd records no CREATED BY for `docker import`; cove records `cove import -`",
     r"^HISTORY .*$"),
]  # fmt: skip

# the events of the session's container: what happened and the attributes dockerd sets
EVENT_FORMAT = ("EVENT {{.Type}} {{.Action}} {{.Actor.Attributes.name}} "
                "{{.Actor.Attributes.exitCode}} {{.Actor.Attributes.signal}}")  # fmt: skip

SESSION = r"""
D=__DOCKER__
$D import --change 'CMD ["/bin/sh"]' __ALPINE__ alpine:3.20
$D images --format '{{.Repository}} {{.Tag}}'
$D tag alpine:3.20 example/copy:v1
$D image inspect -f '{{.RepoTags}} {{.Config.Cmd}} {{.Os}}/{{.Architecture}}' example/copy:v1
$D history --format 'HISTORY {{.CreatedBy}}' alpine:3.20
$D rmi example/copy:v1
$D rmi example/copy:v1
$D network create --label team=a --subnet 10.231.9.0/24 cmpfront
$D network ls --filter label=team=a --format '{{.Name}} {{.Driver}} {{.Scope}}'
$D network inspect -f '{{.Name}} {{.Labels}} {{range .IPAM.Config}}{{.Subnet}}{{end}}' cmpfront
$D network create cmpfront
$D network rm cmpfront
$D network rm cmpfront
$D volume create --label keep=yes data1
$D volume ls --format '{{.Driver}} {{.Name}}'
$D volume inspect -f '{{.Name}} {{.Driver}} {{.Labels}} {{.Scope}}' data1
$D volume rm data1
$D volume rm data1
$D build -t built:1 __CTX__
$D image inspect -f '{{.Config.Env}} {{.Config.Cmd}}' built:1
$D save -o __OUT__/saved.tar built:1
$D rmi built:1
$D load -i __OUT__/saved.tar
$D images --format '{{.Repository}}:{{.Tag}}' | sort
$D rmi nope
$D run -d --network none --name cmpbox alpine:3.20 sleep 60 >/dev/null
$D exec cmpbox sh -c 'exit 3'
$D pause cmpbox
$D unpause cmpbox
$D kill -s USR1 cmpbox
$D rm -f cmpbox
$D events --since 0 --until $(($(date +%s) + 1)) --filter container=cmpbox --format '__EVFMT__'
"""


def _normalise(text: str) -> str:
    text = re.sub(r"sha256:[0-9a-f]{64}", "<id>", text)
    text = re.sub(r"\b[0-9a-f]{64}\b", "<id>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)", "<time>", text)
    text = re.sub(r"\b\d+(\.\d+)?\s?[kMG]?B\b", "<size>", text)
    for _what, _why, pattern in ALLOWED:
        text = re.sub(pattern, "", text, flags=re.M)
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def _run_session(env: dict[str, str], ctx: Path, out: Path) -> str:
    script = (SESSION.replace("__DOCKER__", DOCKER_20).replace("__ALPINE__", str(ALPINE_TAR))
              .replace("__CTX__", str(ctx)).replace("__OUT__", str(out))
              .replace("__EVFMT__", EVENT_FORMAT))  # fmt: skip
    lines = []
    for cmd in script.strip().splitlines()[1:]:
        proc = subprocess.run(["bash", "-c", f"D={DOCKER_20}; {cmd}"], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        lines.append(f"$ {cmd.removeprefix('$D ')}\n{proc.stdout}{proc.stderr}rc={proc.returncode}")
    return "\n".join(lines).replace(str(out), "<out>")  # each side writes its own archive


@pytest.fixture
def dockerd() -> Iterator[dict[str, str]]:
    """A dockerd of this test's own: data, exec root and socket under tmp_path, no bridge,
    no iptables rules; stopped and its mounts gone afterwards, pass or fail."""
    if not os.path.exists(DOCKERD):
        pytest.fail(f"{DOCKERD} missing: scripts/test-deps.sh installs docker.io")
    # short: containerd's sockets under --exec-root must fit sun_path (104 bytes for it)
    where = Path(tempfile.mkdtemp(prefix="dockerd-", dir="/tmp"))
    sock = where / "docker.sock"
    log = open(where / "log", "wb")
    proc = subprocess.Popen(
        [DOCKERD, "--data-root", str(where / "data"), "--exec-root", str(where / "exec"),
         "-H", f"unix://{sock}", "--pidfile", str(where / "pid"), "--bridge=none",
         "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--userland-proxy=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(where),
           "DOCKER_CONFIG": str(where / "cli"), "DOCKER_HOST": f"unix://{sock}",
           "DOCKER_BUILDKIT": "0"}  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([DOCKER_20, "version"], env=env, capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (where / "log").read_text()[-3000:]
                raise AssertionError(f"dockerd did not start: {tail}")
            time.sleep(0.2)
        yield env
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        # its overlay and shm mounts, should a crash have left any
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(where)):
                subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def test_same_session_same_output(dockerd: dict[str, str], cove: CoveRunner,
                                  cove_root: Path, tmp_path: Path) -> None:  # fmt: skip
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text('FROM alpine:3.20\nENV A=1\nCOPY f /f\nCMD ["cat","/f"]\n')
    (ctx / "f").write_text("hi\n")
    out_d = tmp_path / "out-dockerd"
    out_c = tmp_path / "out-cove"
    out_d.mkdir()
    out_c.mkdir()
    reference = _run_session(dockerd, ctx, out_d)
    served: Served = start_serve(cove_root, tmp_path / "serve")
    try:
        ours = _run_session(served.env, ctx, out_c)
    finally:
        stop_serve(served)
    # the session did something on both sides (a comparison of two failures proves nothing)
    for transcript in (reference, ours):
        assert "Successfully tagged built:1" in transcript, transcript
        assert "Loaded image: built:1" in transcript, transcript
        assert "map[team:a] 10.231.9.0/24" in transcript, transcript
        assert "EVENT container exec_die cmpbox 3" in transcript, transcript
    assert _normalise(ours) == _normalise(reference), (
        f"--- dockerd\n{reference}\n--- cove serve\n{ours}"
    )
