"""``cove build`` end to end: real Dockerfiles, real RUN containers, the store, the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from helpers import ALPINE_DIR, CoveRunner, cove_argv


def build(cove: CoveRunner, ctx: Path | str, *flags: str, check: bool = True,
          input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return cove("build", "--progress", "plain", *flags, str(ctx), check=check, input=input)


@pytest.fixture
def base(cove: CoveRunner, alpine_tar: Path) -> str:
    """alpine:3.20 built from the shared upstream Dockerfile (FROM scratch, ADD, CMD)."""
    return build(cove, ALPINE_DIR, "-t", "alpine:3.20", "-q").stdout.strip()


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def inspect(cove: CoveRunner, ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(cove("image", "inspect", ref).stdout)[0]  # type: ignore[no-any-return]


def test_upstream_alpine_dockerfile(cove: CoveRunner, base: str) -> None:
    assert base.startswith("sha256:")
    assert cove("run", "--rm", "alpine:3.20", "cat", "/etc/alpine-release").stdout == "3.20.3\n"
    # the default CMD is the shell: with stdin closed it exits 0
    assert cove("run", "--rm", "alpine:3.20").returncode == 0
    info = inspect(cove, "alpine:3.20")
    assert info["Config"]["Cmd"] == ["/bin/sh"]
    assert len(info["RootFS"]["Layers"]) == 1  # ADD made one layer, CMD none
    hist = cove("history", "--no-trunc", "alpine:3.20").stdout
    assert "ADD alpine-minirootfs-3.20.3-x86_64.tar.gz /" in hist
    assert 'CMD ["/bin/sh"]' in hist


APP_FILES = {
    "app/bin/hello.sh": (
        "#!/bin/sh\n"
        'echo "$GREETING_USED $1 from $(pwd) as $(id -un) version=$VERSION_SEEN"\n'
        "cat /opt/app/built.txt\n"
        ". /opt/app/lib/util.sh\n"
        "util\n"
    ),
    "app/lib/util.sh": "util() { echo util-v1; }\n",
    "app/data/scratch.tmp": "ignored\n",
    "app/data/keep.tmp": "kept\n",
    ".dockerignore": "# build junk\n**/*.tmp\n!app/data/keep.tmp\n",
    "Dockerfile": """\
# syntax=docker/dockerfile:1
FROM alpine:3.20
ARG GREETING=hello
ARG VERSION
ENV APP_HOME=/opt/app \\
    GREETING_USED=${GREETING}
# a comment between instructions
ENV VERSION_SEEN=${VERSION:-none} MARK=${VERSION:+set}
WORKDIR $APP_HOME
COPY --chmod=755 app/ ./
RUN addgroup -S -g 1500 appgrp && adduser -S -D -u 1500 -G appgrp appuser \\
    && echo "built as $(id -u) with ${GREETING}" > /opt/app/built.txt \\
    && rm /etc/motd
COPY --chown=appuser:appgrp <<EOF /opt/app/config.ini
greeting=${GREETING}
EOF
USER appuser
ENTRYPOINT ["/opt/app/bin/hello.sh"]
CMD ["world"]
""",
}
APP_STEPS = 12  # FROM + 11 instructions


def test_app_image_effects(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", APP_FILES)
    proc = build(cove, ctx, "-t", "app:1", "--build-arg", "VERSION=2.0")
    assert "syntax directive" in proc.stderr  # noted, not obeyed
    out = cove("run", "--rm", "app:1").stdout.splitlines()
    assert out[0] == "hello world from /opt/app as appuser version=2.0"
    assert out[1] == "built as 0 with hello"
    assert out[2] == "util-v1"
    assert cove("run", "--rm", "app:1", "there").stdout.startswith("hello there ")

    def sh(script: str) -> str:
        return cove("run", "--rm", "--entrypoint", "/bin/sh", "app:1", "-c", script).stdout

    assert sh("stat -c '%U:%G %a' /opt/app/config.ini; cat /opt/app/config.ini") == (
        "appuser:appgrp 644\ngreeting=hello\n"
    )
    assert sh("stat -c '%U %a' /opt/app/bin/hello.sh /opt/app/lib") == "root 755\nroot 755\n"
    # .dockerignore: the excluded file never reached the image, the exception did
    assert sh("ls /opt/app/data") == "keep.tmp\n"
    # the RUN deleted a file of the base image: a whiteout hides it
    assert sh("test -e /etc/motd && echo present || echo absent") == "absent\n"
    assert sh("echo $GREETING-$VERSION-$MARK") == "--set\n"  # ARGs are not in the image
    info = inspect(cove, "app:1")
    cfg = info["Config"]
    assert cfg["User"] == "appuser" and cfg["WorkingDir"] == "/opt/app"
    assert cfg["Entrypoint"] == ["/opt/app/bin/hello.sh"] and cfg["Cmd"] == ["world"]
    assert "GREETING_USED=hello" in cfg["Env"] and "VERSION_SEEN=2.0" in cfg["Env"]
    assert not any(e.startswith("GREETING=") for e in cfg["Env"])
    # layers: the base's, WORKDIR's new directory, COPY, RUN, COPY heredoc
    assert len(info["RootFS"]["Layers"]) == 5
    hist = cove("history", "--no-trunc", "app:1").stdout
    for step in ("WORKDIR /opt/app", "COPY --chmod=755 app/ ./", "RUN |2 GREETING=hello "
                 "VERSION=2.0 /bin/sh -c addgroup", 'ENTRYPOINT ["/opt/app/bin/hello.sh"]',
                 "USER appuser", "ADD alpine-minirootfs"):  # fmt: skip
        assert step in hist, (step, hist)
    # without the build arg: the default applies and ${VERSION:-none} says so
    build(cove, ctx, "-t", "app:2")
    assert cove("run", "--rm", "app:2").stdout.startswith("hello world from /opt/app as "
                                                          "appuser version=none")  # fmt: skip


def test_cache_hits_and_invalidation(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", APP_FILES)
    first = build(cove, ctx, "-t", "app:1")
    assert "CACHED" not in first.stderr.replace("[1/12] CACHED", "")
    t0 = time.monotonic()
    again = build(cove, ctx, "-t", "app:1")
    elapsed = time.monotonic() - t0
    steps = [ln for ln in again.stderr.splitlines() if ln.startswith("[") and ln.endswith("CACHED")]
    assert len(steps) == APP_STEPS, again.stderr
    assert "DONE" not in again.stderr
    assert again.stdout == first.stdout  # the very same image id
    print(f"fully cached rebuild: {elapsed:.2f}s")
    # a changed byte in one copied file: every step before that COPY stays cached
    (ctx / "app/lib/util.sh").write_text("util() { echo util-v2; }\n")
    third = build(cove, ctx, "-t", "app:1")
    lines = [ln for ln in third.stderr.splitlines() if ln.startswith("[")]
    done = {ln.split("]")[0] + "]" for ln in lines if " DONE " in ln}
    cached = {ln.split("]")[0] + "]" for ln in lines if ln.endswith("CACHED")}
    assert cached == {f"[{i}/12]" for i in range(1, 7)}, third.stderr  # FROM ... WORKDIR
    assert {"[7/12]", "[8/12]", "[9/12]"} <= done, third.stderr  # the COPY and all after
    assert third.stdout != first.stdout
    assert cove("run", "--rm", "app:1").stdout.splitlines()[2] == "util-v2"
    # touching without a change keeps the cache (content, not mtime, is the key)
    os.utime(ctx / "app/lib/util.sh", (1, 1))
    assert "DONE" not in build(cove, ctx, "-t", "app:1").stderr
    # --no-cache runs every step again
    nocache = build(cove, ctx, "--no-cache", "-t", "app:1")
    assert nocache.stderr.count(" DONE ") >= 4 and "[7/12] CACHED" not in nocache.stderr
    assert cove("builder", "prune", "-f").stdout.startswith("Deleted ")


def test_reproducible_with_source_date_epoch(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    ctx = write_tree(tmp_path / "ctx", APP_FILES)
    ids = []
    for tag in ("r:1", "r:2"):
        flags = ["--no-cache", "--build-arg", "SOURCE_DATE_EPOCH=1700000000", "-t", tag]
        ids.append(build(cove, ctx, *flags).stdout.strip())
        time.sleep(1.1)  # a different wall clock second for each build
    assert ids[0] == ids[1]
    a, b = inspect(cove, "r:1"), inspect(cove, "r:2")
    assert a["RootFS"]["Layers"] == b["RootFS"]["Layers"]
    assert a["Created"].startswith("2023-11-14T22:13:20")
    # a cached build made without the epoch must not stand in for one with it
    build(cove, ctx, "-t", "r:plain")
    again = build(cove, ctx, "--build-arg", "SOURCE_DATE_EPOCH=1700000000", "-t", "r:3")
    assert again.stdout.strip() == ids[0]


def test_multi_stage_and_target(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    ctx = write_tree(
        tmp_path / "ctx",
        {
            "Dockerfile": """\
FROM alpine:3.20 AS builder
RUN mkdir /out && echo "artifact-$(cat /etc/alpine-release)" > /out/artifact.txt \\
    && echo junk > /out/junk
FROM alpine:3.20 AS unused
RUN exit 7
FROM alpine:3.20
COPY --from=builder /out/artifact.txt /srv/
CMD ["cat", "/srv/artifact.txt"]
"""
        },
    )
    build(cove, ctx, "-t", "multi:final")
    assert cove("run", "--rm", "multi:final").stdout == "artifact-3.20.3\n"
    assert cove("run", "--rm", "multi:final", "ls", "/srv").stdout == "artifact.txt\n"
    gone = cove("run", "--rm", "multi:final", "sh", "-c", "test -e /out; echo $?", check=False)
    assert gone.stdout == "1\n"
    proc = build(cove, ctx, "--target", "builder", "-t", "multi:builder")
    assert "RUN exit 7" not in proc.stderr and "COPY --from" not in proc.stderr
    out = cove("run", "--rm", "multi:builder", "cat", "/out/junk", "/out/artifact.txt").stdout
    assert out == "junk\nartifact-3.20.3\n"
    bad = build(cove, ctx, "--target", "nope", check=False)
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_errors_name_the_line_and_tag_nothing(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    cases = {
        "FROM alpine:3.20\nRUN true\nFROBNICATE x\n": "Dockerfile:3: unknown instruction: FROB",
        "FROM alpine:3.20\nCOPY --bogus=1 a /a\n": "Dockerfile:2: unknown flag: --bogus",
        "FROM alpine:3.20\n\nCOPY missing.txt /x\n": "Dockerfile:3: COPY failed: missing.txt: "
        "not found",
        "FROM alpine:3.20\nADD http://127.0.0.1:9/f.txt /f\n": "not supported offline",
        "FROM alpine:3.20\nCOPY a b c\n": "must be a directory and end with a /",
    }
    for i, (text, message) in enumerate(cases.items()):
        ctx = write_tree(tmp_path / f"c{i}", {"Dockerfile": text, "a": "a", "b": "b"})
        proc = build(cove, ctx, "-t", f"bad:{i}", check=False)
        assert proc.returncode != 0, text
        err = proc.stderr.strip().splitlines()[-1]
        assert message in err, (text, proc.stderr)
    # a failing RUN: its output is shown, its exit code named, nothing tagged or left
    ctx = write_tree(tmp_path / "run", {"Dockerfile": (
        "FROM alpine:3.20\nRUN echo made > /made\nRUN echo visible-output; exit 3\n"
    )})  # fmt: skip
    for flags in ((), ("-q",), ("--progress", "tty")):
        proc = cove("build", *flags, "-t", "bad:run", str(ctx), check=False)
        assert proc.returncode == 1, proc
        assert "visible-output" in proc.stdout + proc.stderr
        assert "Dockerfile:3:" in proc.stderr and "returned a non-zero code: 3" in proc.stderr
    assert "bad" not in cove("images").stdout
    assert cove("ps", "-a", "-q").stdout == ""


def test_interrupt_leaves_nothing(cove: CoveRunner, cove_root: Path, base: str,
                                  tmp_path: Path) -> None:  # fmt: skip
    ctx = write_tree(tmp_path / "ctx", {"Dockerfile": "FROM alpine:3.20\nRUN sleep 60\n"})
    proc = subprocess.Popen(cove_argv(cove_root, "build", "--progress", "plain", str(ctx)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cove("ps", "-a", "-q").stdout.strip():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the RUN container never appeared")
        time.sleep(0.5)  # into the sleep
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert cove("ps", "-a", "-q").stdout == ""
    assert cove("volume", "ls", "-q").stdout == ""
    assert not [p.name for p in (cove_root / "tmp").iterdir() if p.name.startswith("build-")]
    with open("/proc/self/mountinfo") as f:
        assert str(cove_root) not in f.read()
    left = subprocess.run(["pgrep", "-f", "^sleep 60$"], capture_output=True, text=True)
    assert left.stdout == ""


def test_contexts_stdin_tarball_and_metadata(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    # a Dockerfile on stdin, no context
    text = "FROM alpine:3.20\nRUN echo from-stdin > /where\n"
    build(cove, "-", "-t", "stdin:1", input=text)
    assert cove("run", "--rm", "stdin:1", "cat", "/where").stdout == "from-stdin\n"
    # a tarball context with ADD of a local archive (auto-extracted) and the metadata verbs
    src = write_tree(tmp_path / "src", {"payload/inner.txt": "inside\n"})
    ctx = write_tree(
        tmp_path / "ctx",
        {
            "Dockerfile": """\
FROM alpine:3.20 AS base
ONBUILD RUN echo triggered > /onbuild.txt
FROM base
ADD payload.tar.gz /unpacked/
SHELL ["/bin/sh", "-ec"]
RUN test "$(cat /onbuild.txt)" = triggered
EXPOSE 80 53/udp
LABEL org.example.one=1 "org.example.two"="two words"
VOLUME ["/data"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s --retries=2 CMD wget -q -O- http://localhost/ || exit 1
"""
        },
    )
    with tarfile.open(ctx / "payload.tar.gz", "w:gz") as tar:
        tar.add(src / "payload", arcname="payload")
    with tarfile.open(tmp_path / "context.tar", "w") as tar:
        tar.add(ctx, arcname=".")
    build(cove, tmp_path / "context.tar", "-t", "meta:1", "--label", "from.cli=yes")
    assert cove("run", "--rm", "meta:1", "cat", "/unpacked/payload/inner.txt").stdout == "inside\n"
    cfg = inspect(cove, "meta:1")["Config"]
    assert set(cfg["ExposedPorts"]) == {"80/tcp", "53/udp"}
    assert cfg["Labels"] == {"org.example.one": "1", "org.example.two": "two words",
                             "from.cli": "yes"}  # fmt: skip
    assert cfg["Volumes"] == {"/data": {}} and cfg["StopSignal"] == "SIGQUIT"
    assert cfg["Shell"] == ["/bin/sh", "-ec"]
    assert cfg["Healthcheck"]["Test"][0] == "CMD-SHELL"
    assert cfg["Healthcheck"]["Interval"] == 5_000_000_000 and cfg["Healthcheck"]["Retries"] == 2
    assert not cfg.get("OnBuild")  # triggers ran in the child build and are consumed


def test_buildkit_semantics(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    ctx = write_tree(
        tmp_path / "ctx",
        {
            "Dockerfile": """\
ARG BASE=alpine:3.20
FROM --platform=$BUILDPLATFORM ${BASE} AS owner
RUN adduser -D -u 4321 owner && mkdir /o && echo o > /o/f && chown -R owner /o
ARG KEEP=carried
FROM owner AS child
RUN test "$KEEP" = carried && echo "$KEEP" > /keep
FROM alpine:3.20
ARG STEP=1
COPY --from=child /o /o
COPY --from=child /keep /keep
VOLUME /data
RUN mkdir -p /data && echo "in volume $STEP" > /data/f
RUN <<EOF
#!/bin/sh
echo "shebang ran as $0" > /shebang
EOF
RUN <<EOF
echo one > /multi
echo two >> /multi
EOF
WORKDIR /my dir
"""
        },
    )
    build(cove, ctx, "-t", "sem:1")

    def sh(script: str) -> str:
        return cove("run", "--rm", "sem:1", "sh", "-c", script).stdout

    assert sh("stat -c '%u %n' /o/f") == "4321 /o/f\n"  # --from keeps owners
    assert sh("cat /keep") == "carried\n"  # args carry over FROM <stage>
    # BuildKit keeps what a RUN writes below a VOLUME (a new volume copies it up)
    assert sh("cat /data/f") == "in volume 1\n"
    assert sh("cat /shebang") == "shebang ran as /dev/pipes/EOF\n"
    assert sh("cat /multi; pwd") == "one\ntwo\n/my dir\n"
    # a build arg used only by a RUN: changing it reruns that RUN
    again = build(cove, ctx, "-t", "sem:2", "--build-arg", "STEP=2")
    assert "[6/9] DONE" in again.stderr and "[5/9] CACHED" not in again.stderr
    assert cove("run", "--rm", "sem:2", "cat", "/data/f").stdout == "in volume 2\n"


def test_containment(cove: CoveRunner, base: str, tmp_path: Path) -> None:
    """Nothing a Dockerfile or its context says reads or writes outside the context or the
    image's root."""
    marker = tmp_path / "host-secret"
    marker.write_text("host only\n")
    ctx = write_tree(tmp_path / "ctx", {"f.txt": "payload\n", "secrets/key": "k\n",
                                        ".dockerignore": "secrets\n"})  # fmt: skip
    os.symlink(str(marker), ctx / "outside")  # absolute: resolves in the context, not the host
    os.symlink("secrets", ctx / "alias")
    (ctx / "Dockerfile").write_text(
        "FROM alpine:3.20\n"
        "RUN ln -s / /evil && ln -s /tmp /etc/tmplink\n"
        "COPY f.txt /evil/tmp/landed\n"
        "COPY f.txt /etc/tmplink/\n"
    )
    build(cove, ctx, "-t", "contain:1")
    out = cove("run", "--rm", "contain:1", "cat", "/tmp/landed", "/tmp/f.txt").stdout
    assert out == "payload\npayload\n"
    assert not Path("/tmp/landed").exists() and not Path("/tmp/f.txt").exists()
    cases = {
        "COPY outside /x\n": "not found",
        "COPY alias/key /x\n": "not found",  # an ignored path stays ignored through a link
        "COPY ../../../etc/passwd /x\n": "not found",
        # the unpacker refuses the entry by name (not some unrelated failure of the step)
        "ADD evil.tar /x/\n": "'../../escaped' points outside",
    }
    with tarfile.open(ctx / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../../escaped")
        data = b"escaped\n"
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    for i, (line, message) in enumerate(cases.items()):
        (ctx / "Dockerfile").write_text("FROM alpine:3.20\n" + line)
        proc = build(cove, ctx, "-t", f"contain:{i + 2}", check=False)
        assert proc.returncode != 0, (line, proc.stderr)
        assert message in proc.stderr, (line, proc.stderr)
        assert "Dockerfile:2:" in proc.stderr or "tar" in proc.stderr, (line, proc.stderr)
    assert marker.read_text() == "host only\n"
    assert not (tmp_path / "escaped").exists() and not Path("/escaped").exists()
    # a directory copied over a symlinked directory keeps the link or fails, never breaks it
    write_tree(ctx, {"rootfs/usr/local/bin/x": "x\n"})
    (ctx / "Dockerfile").write_text(
        "FROM alpine:3.20\nRUN mkdir -p /real && rm -rf /usr/local/bin "
        "&& ln -s /real /usr/local/bin\nCOPY rootfs/ /\n"
    )
    proc = build(cove, ctx, "-t", "contain:link", check=False)
    assert proc.returncode != 0 and "non-directory" in proc.stderr
