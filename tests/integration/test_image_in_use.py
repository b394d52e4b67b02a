"""An image a container uses is never deleted: rmi refuses or only untags, prune and GC skip it.

Docker's semantics (moby daemon/images/image_delete.go): ``rmi NAME`` refuses while a
container, running or stopped, uses the image it names; ``rmi -f NAME`` only untags, and
the image stays, dangling, while a container needs it; ``image prune`` (with or without
``-a``) skips images containers use. Only after the last such container is removed does
``image prune -a`` delete the layers and blobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CoveRunner, cove_argv


def store_listing(root: Path) -> set[str]:
    """Every entry of the layer directory and the blob directory, by relative path."""
    out: set[str] = set()
    for sub in ("layers", "images/blobs/sha256"):
        d = root / sub
        if d.is_dir():
            out |= {f"{sub}/{p.name}" for p in d.iterdir()}
    return out


def image_content(cove: CoveRunner, root: Path, ref: str) -> set[str]:
    """The layer directories, layer metadata and blobs an image consists of."""
    info = json.loads(cove("image", "inspect", ref).stdout)[0]
    manifest_digest = info["Descriptor"]["digest"]
    blobs = root / "images" / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.split(":")[1]).read_text())
    digests = [manifest_digest, info["Id"], *(layer["digest"] for layer in manifest["layers"])]
    out = {f"images/blobs/sha256/{d.split(':')[1]}" for d in digests}
    for diff_id in info["RootFS"]["Layers"]:
        hexd = diff_id.split(":")[1]
        out |= {f"layers/{hexd}", f"layers/{hexd}.json"}
    return out


def image_rows(cove: CoveRunner) -> list[list[str]]:
    return [line.split()[:3] for line in cove("images", "-a").stdout.splitlines()[1:]]


def test_rmi_never_takes_a_running_containers_image(
    cove: CoveRunner, alpine: str, alpine_tar: Path, cove_root: Path
) -> None:
    # positive control: an image no container uses is removed as before
    spare = cove("import", "-c", "CMD spare", str(alpine_tar), "spare:1").stdout.strip()
    assert cove("rmi", "spare:1").stdout == f"Untagged: spare:1\nDeleted: {spare}\n"
    cid = cove("run", "-d", "--name", "keep", "alpine:3.20", "sleep", "600").stdout.strip()
    before = store_listing(cove_root)
    assert image_content(cove, cove_root, "alpine:3.20") <= before

    refused = cove("rmi", "alpine:3.20", check=False)
    assert refused.returncode == 1, refused
    assert refused.stderr == (
        'Error: conflict: unable to remove repository reference "alpine:3.20" (must force) - '
        f"container {cid[:12]} is using its referenced image {alpine[7:19]}\n"
    )
    # by id, a running container's image cannot even be forced (Docker's hard conflict)
    for args in (("rmi", alpine[7:19]), ("rmi", "-f", alpine[7:19])):
        proc = cove(*args, check=False)
        assert proc.returncode == 1 and proc.stderr == (
            f"Error: conflict: unable to delete {alpine[7:19]} (cannot be forced) - "
            f"image is being used by running container {cid[:12]}\n"
        ), proc
    assert cove("rmi", "-f", "alpine:3.20").stdout == "Untagged: alpine:3.20\n"
    assert cove("exec", "keep", "cat", "/etc/alpine-release").stdout == "3.20.3\n"
    assert image_rows(cove) == [["<none>", "<none>", alpine[7:19]]]
    # neither prune takes it while the container lives
    for args in (("image", "prune", "-f"), ("image", "prune", "-a", "-f")):
        assert "deleted" not in cove(*args).stdout
    assert image_rows(cove) == [["<none>", "<none>", alpine[7:19]]]
    assert store_listing(cove_root) == before
    assert cove("exec", "keep", "cat", "/etc/alpine-release").stdout == "3.20.3\n"
    # a dangling image in use: by id without -f is still refused, with the same conflict
    again = cove("rmi", alpine[7:19], check=False)
    assert again.returncode == 1 and "being used by running container" in again.stderr
    assert store_listing(cove_root) == before


def test_stopped_containers_image_stays_until_the_container_goes(
    cove: CoveRunner, alpine: str, cove_root: Path
) -> None:
    first = cove("run", "--name", "stopped", "alpine:3.20", "cat", "/etc/alpine-release")
    assert first.stdout == "3.20.3\n"
    cid = json.loads(cove("inspect", "stopped").stdout)[0]["Id"]
    content = image_content(cove, cove_root, "alpine:3.20")
    before = store_listing(cove_root)
    assert content <= before

    refused = cove("rmi", "alpine:3.20", check=False)
    assert refused.returncode == 1 and refused.stderr == (
        'Error: conflict: unable to remove repository reference "alpine:3.20" (must force) - '
        f"container {cid[:12]} is using its referenced image {alpine[7:19]}\n"
    ), refused
    by_id = cove("rmi", alpine[7:19], check=False)
    assert by_id.returncode == 1 and by_id.stderr == (
        f"Error: conflict: unable to delete {alpine[7:19]} (must be forced) - "
        f"image is being used by stopped container {cid[:12]}\n"
    ), by_id
    assert cove("rmi", "-f", "alpine:3.20").stdout == "Untagged: alpine:3.20\n"
    assert image_rows(cove) == [["<none>", "<none>", alpine[7:19]]]
    for args in (("image", "prune", "-f"), ("image", "prune", "-a", "-f")):
        assert "deleted" not in cove(*args).stdout
    # -f by id has no name left to take: it refuses rather than delete what the container uses
    forced = cove("rmi", "-f", alpine[7:19], check=False)
    assert forced.returncode == 1 and "being used by stopped container" in forced.stderr
    assert store_listing(cove_root) == before

    # started again, it runs from the same layers
    assert cove("start", "-a", "stopped").stdout == "3.20.3\n"

    cove("rm", "-f", "stopped")
    assert store_listing(cove_root) == before  # removing the container deletes no image
    out = cove("image", "prune", "-a", "-f").stdout
    assert out.startswith("Deleted Images:\ndeleted: sha256:"), out
    assert image_rows(cove) == []
    after = store_listing(cove_root)
    assert after == before - content and after == set(), (before, after)


def test_rmi_and_prune_racing_runs_never_strand_a_container(
    cove: CoveRunner, alpine: str, alpine_tar: Path, cove_root: Path
) -> None:
    for round_ in range(4):
        argv = [*cove_argv(cove_root, "run", "-d", "--pull", "never"), "--name"]
        runs = [
            subprocess.Popen(
                [*argv, f"r{round_}-{i}", "alpine:3.20", "sleep", "600"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        cove("rmi", "-f", "alpine:3.20", check=False)
        cove("image", "prune", "-a", "-f")
        for i, p in enumerate(runs):
            _, err = p.communicate(timeout=300)
            if p.returncode != 0:  # it lost the race before resolving its image: a clean refusal
                assert "no such image" in err and len(err.splitlines()) == 1, err
                continue
            name = f"r{round_}-{i}"
            got = cove("exec", name, "cat", "/etc/alpine-release", check=False)
            assert got.stdout == "3.20.3\n", (round_, name, got)
        # what a container in the root still uses is all there
        for line in cove("ps", "-aq", "--no-trunc").stdout.split():
            bundle = json.loads((cove_root / "containers" / line / "config.json").read_text())
            overlay = json.loads(bundle["annotations"]["io.cove.image.diff.overlay"])
            for layer in overlay["lower"]:
                assert (cove_root / "layers" / layer).is_dir(), (round_, line, layer)
        ids = cove("ps", "-aq").stdout.split()
        if ids:
            cove("rm", "-f", *ids)
        cove("image", "prune", "-a", "-f")
        assert store_listing(cove_root) == set()
        cove("import", "--change", 'CMD ["/bin/sh"]', str(alpine_tar), "alpine:3.20")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _waits_on_a_lock(pid: int) -> bool:
    """``pid`` is blocked in flock(2) (a "->" line of /proc/locks names its waiters)."""
    with open("/proc/locks") as f:
        return any("->" in line and str(pid) in line.split() for line in f)


@pytest.mark.parametrize(
    ("remover", "prints"),
    [
        (("rmi", "-f", "alpine:3.20"), "Untagged: alpine:3.20\n"),
        (("image", "prune", "-a", "-f"), "Total reclaimed space: 0B\n"),
    ],
)
def test_a_run_that_has_resolved_its_image_is_seen_by_rmi_and_prune(
    cove: CoveRunner, alpine: str, cove_root: Path, remover: tuple[str, ...], prints: str
) -> None:
    """The window between a run resolving its image and recording its container: a run is
    stopped there (COVE_STOP_AT), the remover starts, and the run goes on once the remover
    has either finished or is waiting for the run's pin of the image."""
    env = dict(os.environ, COVE_STOP_AT="create-image")
    run = subprocess.Popen(
        cove_argv(cove_root, "run", "-d", "--pull", "never", "--name", "late", "alpine:3.20",
                  "sleep", "600"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    remove: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 120
        while _state(run.pid) != "T":
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.02)
        remove = subprocess.Popen(
            cove_argv(cove_root, *remover), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        while remove.poll() is None and not _waits_on_a_lock(remove.pid):
            assert time.monotonic() < deadline, "the remover neither finished nor waited"
            time.sleep(0.02)
    finally:
        os.kill(run.pid, signal.SIGCONT)
        _, err = run.communicate(timeout=300)
        if remove is not None:
            removed, remove_err = remove.communicate(timeout=300)
    assert run.returncode == 0, err
    assert remove is not None and remove.returncode == 0, remove_err
    assert removed.endswith(prints), removed
    assert "Deleted" not in removed and "deleted" not in removed
    assert cove("exec", "late", "cat", "/etc/alpine-release").stdout == "3.20.3\n"
    assert alpine[7:19] in cove("images", "-q").stdout
