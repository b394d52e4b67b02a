"""``cove serve``'s container endpoints driven by the unchanged docker CLIs (28 on the
machine image, Debian's 20.10): run --rm (output, exit codes, -i with piped stdin, -t and
-it through a pty), run -d, ps with filters, logs -f, exec (-it, 126/127), cp both ways,
inspect -f with range, stop/kill/rm/wait/rename/pause/top/stats; the wait that docker run
issues before start; containers that are the CLI's and outlive the server; 20 clients at
once. The bodies the tests touch validate against the 1.41 swagger (helpers.swagger_errors).

Images come from the shared Alpine tarball only (imported into the test's root).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import DOCKER_20, CoveRunner, Served, monitors, stop_serve, swagger_errors, wait_for

DOCKER_28 = "/usr/local/bin/docker"  # the machine image's CLI (API 1.50, negotiates 1.41)
CLIS = [pytest.param(DOCKER_28, id="cli28"), pytest.param(DOCKER_20, id="cli20")]


def docker(served: Served, cli: str, *args: str, check: bool = True, input: str | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    proc = subprocess.run([cli, *args], env=served.env, capture_output=True, text=True,
                          input=input, timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{cli} {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                             f"server log: {served.log.read_text()[-3000:]}")  # fmt: skip
    return proc


def on_pty(served: Served, argv: list[str], script: bytes = b"", prompt: bytes = b"# ",
           rows: int = 30, cols: int = 100) -> tuple[int, bytes]:  # fmt: skip
    """Run ``argv`` with a pty as its stdio (a terminal of ``rows`` x ``cols``); once
    ``prompt`` shows, type ``script``. Its exit code and everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=served.env,
                            start_new_session=True)  # fmt: skip
    os.close(slave)
    out = b""
    sent = not script
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the client closed the terminal's last user
                break
            if not data:
                break
            out += data
            if not sent and prompt in out:
                os.write(master, script)
                sent = True
        return proc.wait(timeout=60), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def checked(served: Served, method: str, path: str, spec: str, status: int = 200) -> Any:
    got, doc = served.api(method, path)
    assert got == status, (method, path, got, doc)
    assert swagger_errors(doc, spec, method, status) == [], (path, doc)
    return doc


def cove_ps(cove: CoveRunner) -> list[str]:
    return cove("ps", "-a", "--format", "{{.Names}} {{.State}}").stdout.splitlines()


# -- run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cli", CLIS)
def test_run_rm_output_exit_codes_and_stdin(served: Served, cove: CoveRunner, cli: str) -> None:
    out = docker(served, cli, "run", "--rm", "alpine:3.20", "sh", "-c", "echo out; echo err >&2")
    assert (out.stdout, out.stderr) == ("out\n", "err\n")
    # the exit code comes through wait?condition=removed, sent before start: a fast exit
    # and the auto-removal after it must not lose it (0 beside 3 and 42)
    codes = [docker(served, cli, "run", "--rm", "alpine:3.20", "sh", "-c", f"exit {n}",
                    check=False).returncode for n in (0, 3, 42)]  # fmt: skip
    assert codes == [0, 3, 42]
    # 127 not found, 126 not executable: the CLI maps the start error's text
    missing = docker(served, cli, "run", "--rm", "alpine:3.20", "nope", check=False)
    assert missing.returncode == 127, missing.stderr
    assert "executable file not found" in missing.stderr
    not_exec = docker(served, cli, "run", "--rm", "alpine:3.20", "/etc", check=False)
    assert not_exec.returncode == 126, not_exec.stderr
    # -i with piped stdin: the client's half-close is the container's EOF (wc ends)
    piped = docker(served, cli, "run", "--rm", "-i", "alpine:3.20", "wc", "-l",
                   input="a\nb\nc\n")  # fmt: skip
    assert piped.stdout.strip() == "3"
    # without -i the input is not the container's: it reads EOF at once
    unpiped = docker(served, cli, "run", "--rm", "alpine:3.20", "wc", "-l", input="a\nb\n")
    assert unpiped.stdout.strip() == "0"
    # every --rm container is gone, failed starts too, as the CLI's own view says
    assert cove_ps(cove) == []


@pytest.mark.parametrize("cli", CLIS)
def test_run_tty_through_a_pty(served: Served, cli: str) -> None:
    # -t alone: a terminal, sized by the client's resize (the loop waits for it to land)
    # (a 0x0 terminal has no rows in stty -a: the loop ends once the size is set)
    wait_size = 'tty; until stty -a | grep -q "rows [1-9]"; do sleep 0.1; done; stty size'
    rc, out = on_pty(served, [cli, "run", "--rm", "-t", "alpine:3.20", "sh", "-c", wait_size])
    assert rc == 0, out
    lines = out.decode().replace("\r", "").split("\n")
    assert lines[0] == "/dev/pts/0" and "30 100" in lines, out
    # -it: typed input reaches the shell, its exit code comes back
    rc, out = on_pty(served, [cli, "run", "--rm", "-it", "alpine:3.20", "sh"],
                     b"echo $((6*7)); exit 4\n")  # fmt: skip
    assert rc == 4 and b"\r\n42\r\n" in out, out


# -- detached containers: ps, logs, inspect, exec, cp, and the lifecycle verbs --------------


@pytest.mark.parametrize("cli", CLIS)
def test_run_detached_ps_filters_logs_follow(served: Served, cove: CoveRunner, cli: str) -> None:
    ticker = "for i in 1 2 3 4 5; do echo tick $i; echo tock $i >&2; sleep 0.2; done"
    cid = docker(served, cli, "run", "-d", "--name", "ticker", "--label", "role=t",
                 "alpine:3.20", "sh", "-c", ticker).stdout.strip()  # fmt: skip
    docker(served, cli, "run", "-d", "--name", "idle", "--label", "role=i", "alpine:3.20",
           "sleep", "300")  # fmt: skip
    # logs -f follows to the container's exit: every line, in order, streams kept apart
    logs = docker(served, cli, "logs", "-f", "ticker")
    assert logs.stdout.splitlines() == [f"tick {i}" for i in range(1, 6)]
    assert logs.stderr.splitlines() == [f"tock {i}" for i in range(1, 6)]
    tail = docker(served, cli, "logs", "--tail", "2", "-t", "ticker")
    out, err = tail.stdout.split(), tail.stderr.split()
    assert (out[1:], err[1:]) == (["tick", "5"], ["tock", "5"])
    assert out[0].startswith(time.strftime("%Y-")) and out[0].endswith("Z")
    assert docker(served, cli, "wait", "ticker").stdout.strip() == "0"

    def names(*flags: str) -> list[str]:
        out = docker(served, cli, "ps", *flags, "--format", "{{.Names}}").stdout
        return sorted(out.split())

    assert names() == ["idle"]  # running only, beside -a's both
    assert names("-a") == ["idle", "ticker"]
    assert names("-a", "--filter", "label=role=t") == ["ticker"]
    assert names("--filter", "label=role=t") == []  # not running: only -a shows it
    assert names("-a", "--filter", "label=role") == ["idle", "ticker"]
    assert names("--filter", "status=exited") == ["ticker"]  # a status filter implies -a
    assert names("-a", "--filter", "name=idl") == ["idle"]
    assert names("-a", "--filter", f"id={cid[:10]}") == ["ticker"]
    assert names("-a", "--filter", "exited=0") == ["ticker"]
    assert names("-a", "--filter", "exited=1") == []
    # the same containers are the CLI's own, same root
    assert sorted(cove_ps(cove)) == ["idle running", "ticker exited"]
    # both filter encodings on the wire: docker-py's lists, Go's maps
    for enc in ('{"label":["role=t"]}', '{"label":{"role=t":true}}'):
        from urllib.parse import quote

        docs = checked(served, "GET", f"/containers/json?all=1&filters={quote(enc)}",
                       "/containers/json")  # fmt: skip
        assert [d["Names"] for d in docs] == [["/ticker"]]
    bad = served.api("GET", "/containers/json?filters=" + quote('{"colour":["red"]}'))
    assert bad[0] == 400 and "colour" in bad[1]["message"]
    docker(served, cli, "rm", "-f", "idle", "ticker")
    assert cove_ps(cove) == []


@pytest.mark.parametrize("cli", CLIS)
def test_exec_inspect_cp(served: Served, cove: CoveRunner, cli: str, tmp_path: Path) -> None:
    docker(served, cli, "run", "-d", "--name", "box", "alpine:3.20", "sleep", "300")
    # inspect -f with range: the address the CLI reports too
    addr = docker(served, cli, "inspect", "-f",
                  "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "box")  # fmt: skip
    own = json.loads(cove("inspect", "box").stdout)[0]["NetworkSettings"]["Networks"]
    assert addr.stdout.strip() == "".join(n["IPAddress"] for n in own.values()) != ""
    tty = docker(served, cli, "inspect", "-f", "{{.Config.Tty}} {{.State.Status}}", "box")
    assert tty.stdout.strip() == "false running"
    # exec: output and exit codes (0, 3, 126 not executable, 127 not found)
    assert docker(served, cli, "exec", "box", "echo", "hi").stdout == "hi\n"
    codes = [docker(served, cli, "exec", "box", *argv, check=False).returncode
             for argv in (["true"], ["sh", "-c", "exit 3"], ["/etc"], ["nope"])]  # fmt: skip
    assert codes == [0, 3, 126, 127]
    piped = docker(served, cli, "exec", "-i", "box", "wc", "-c", input="12345")
    assert piped.stdout.strip() == "5"
    rc, out = on_pty(served, [cli, "exec", "-it", "box", "sh"], b"echo $((6*7)); exit 5\n")
    assert rc == 5 and b"\r\n42\r\n" in out, out
    # cp in (a file, a directory), cp out (a file, a directory)
    (tmp_path / "in.txt").write_text("hello\n")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "leaf").write_text("leaf\n")
    docker(served, cli, "cp", str(tmp_path / "in.txt"), "box:/tmp/")
    docker(served, cli, "cp", str(tmp_path / "tree"), "box:/tmp/tree")
    got = docker(served, cli, "exec", "box", "cat", "/tmp/in.txt", "/tmp/tree/sub/leaf").stdout
    assert got == "hello\nleaf\n"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    docker(served, cli, "cp", "box:/etc/alpine-release", str(out_dir))
    assert (out_dir / "alpine-release").read_text().startswith("3.20")
    docker(served, cli, "cp", "box:/tmp/tree", str(out_dir / "tree"))
    assert (out_dir / "tree" / "sub" / "leaf").read_text() == "leaf\n"
    # a missing path: 404, beside the found one's stat
    miss = docker(served, cli, "cp", "box:/no/such", str(out_dir), check=False)
    # (CLI 20.10 words the 404 itself, "No such container:path"; 28 prints the message)
    assert miss.returncode == 1 and "/no/such" in miss.stderr
    assert served.api("HEAD", "/containers/box/archive?path=/etc")[0] == 200
    assert served.api("HEAD", "/containers/box/archive?path=/no/such")[0] == 404
    docker(served, cli, "rm", "-f", "box")


@pytest.mark.parametrize("cli", CLIS)
def test_stop_kill_wait_rename_pause_top_stats_rm(served: Served, cove: CoveRunner,
                                                  cli: str) -> None:  # fmt: skip
    docker(served, cli, "run", "-d", "--name", "alpha", "alpine:3.20", "sleep", "300")
    docker(served, cli, "run", "-d", "--name", "beta", "alpine:3.20", "sh", "-c",
           "trap 'exit 7' TERM; while true; do sleep 0.1; done")  # fmt: skip
    top = docker(served, cli, "top", "alpha").stdout.splitlines()
    assert "PID" in top[0].split() and any(line.endswith("sleep 300") for line in top[1:])
    stats = docker(served, cli, "stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "alpha")
    assert stats.stdout.split() == ["alpha", "1"]
    docker(served, cli, "pause", "alpha")
    assert cove_ps(cove).count("alpha paused") == 1
    busy = docker(served, cli, "pause", "alpha", check=False)  # paused already: 409
    assert busy.returncode == 1 and "already paused" in busy.stderr
    docker(served, cli, "unpause", "alpha")
    docker(served, cli, "rename", "alpha", "renamed")
    assert sorted(cove_ps(cove)) == ["beta running", "renamed running"]
    # kill -s TERM: the trap's code; stop: SIGKILL after the grace period; wait reports both
    docker(served, cli, "kill", "-s", "TERM", "beta")
    assert docker(served, cli, "wait", "beta").stdout.strip() == "7"
    docker(served, cli, "stop", "-t", "1", "renamed")
    assert docker(served, cli, "wait", "renamed").stdout.strip() == "137"
    again = docker(served, cli, "kill", "renamed", check=False)  # not running: 409
    assert again.returncode == 1 and "is not running" in again.stderr
    status, _ = served.api("POST", "/containers/renamed/stop")
    assert status == 304  # stop of a stopped container, as dockerd
    running = docker(served, cli, "rm", "beta", "renamed")
    assert running.stdout.split() == ["beta", "renamed"]
    gone = docker(served, cli, "rm", "beta", check=False)
    assert gone.returncode == 1 and "No such container: beta" in gone.stderr
    assert cove_ps(cove) == []


# -- the wire: wait before start, errors, bodies against the swagger ----------------------


def _post_raw(sock: str, path: str, body: Any = None) -> socket.socket:
    """A request whose answer is read later (the wait docker run sends before start)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall(f"POST /v1.41{path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json"
              f"\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
    return s


def _read_chunked_json(s: socket.socket) -> Any:
    s.settimeout(120)
    buf = b""
    while b"\r\n0\r\n\r\n" not in buf:
        piece = s.recv(65536)
        if not piece:
            break
        buf += piece
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    size, _, rest = body.partition(b"\r\n")
    return json.loads(rest[: int(size, 16)])


def test_wait_conditions_and_swagger_bodies(served: Served, cove: CoveRunner) -> None:
    # create (201) with AutoRemove, wait?condition=removed before start, start (204): the
    # exit code survives the auto-removal
    created = served.api("POST", "/containers/create?name=quick", {
        "Image": "alpine:3.20", "Cmd": ["sh", "-c", "exit 9"],
        "HostConfig": {"AutoRemove": True}})  # fmt: skip
    assert created[0] == 201
    assert swagger_errors(created[1], "/containers/create", "POST", 201) == []
    waiter = _post_raw(served.sock, "/containers/quick/wait?condition=removed")
    next_exit = _post_raw(served.sock, "/containers/quick/wait?condition=next-exit")
    assert served.api("POST", "/containers/quick/start")[0] == 204
    for s in (waiter, next_exit):
        with s:
            doc = _read_chunked_json(s)
            assert doc == {"StatusCode": 9}
            assert swagger_errors(doc, "/containers/{id}/wait", "POST") == []
    assert wait_for("the auto-removal", lambda: cove_ps(cove) == [])
    # not-running on a created container answers at once (it is not running); removed of
    # a container that does not exist is a 404 before any 200
    created_idle = served.api("POST", "/containers/create?name=idle", {
        "Image": "alpine:3.20", "Cmd": ["sleep", "300"]})[1]["Id"]  # fmt: skip
    with _post_raw(served.sock, "/containers/idle/wait") as s:
        assert _read_chunked_json(s) == {"StatusCode": 0}
    missing = served.api("POST", "/containers/nope/wait?condition=removed")
    assert missing == (404, {"message": "No such container: nope"})
    assert swagger_errors(missing[1], "/containers/{id}/wait", "POST", 404) == []
    bad = served.api("POST", "/containers/idle/wait?condition=sometime")
    assert bad[0] == 400
    # the image a create names must exist: the 404 text makes clients pull
    nope = served.api("POST", "/containers/create", {"Image": "nothere"})
    assert nope == (404, {"message": "No such image: nothere:latest"})
    conflict = served.api("POST", "/containers/create?name=idle", {"Image": "alpine:3.20"})
    assert conflict[0] == 409 and swagger_errors(conflict[1], "/containers/create", "POST",
                                                 409) == []  # fmt: skip
    # start of a running container: 304, as dockerd
    assert served.api("POST", "/containers/idle/start")[0] == 204
    assert served.api("POST", "/containers/idle/start")[0] == 304
    # bodies of the reads, against the swagger
    checked(served, "GET", "/containers/json?all=1", "/containers/json")
    doc = checked(served, "GET", "/containers/idle/json", "/containers/{id}/json")
    assert doc["HostConfig"]["LogConfig"]["Type"] == "json-file"  # docker-py streams only then
    checked(served, "GET", "/containers/idle/top", "/containers/{id}/top")
    checked(served, "GET", "/containers/idle/changes", "/containers/{id}/changes")
    stats = checked(served, "GET", "/containers/idle/stats?stream=0", "/containers/{id}/stats")
    assert stats["pids_stats"]["current"] >= 1 and stats["precpu_stats"]["system_cpu_usage"] > 0
    checked(served, "GET", "/version", "/version")
    checked(served, "GET", "/info", "/info")
    ex = served.api("POST", "/containers/idle/exec", {"Cmd": ["true"]})
    assert ex[0] == 201 and swagger_errors(ex[1], "/containers/{id}/exec", "POST", 201) == []
    started = served.api("POST", f"/exec/{ex[1]['Id']}/start", {"Detach": True})
    assert started[0] == 200, started
    done = wait_for("the detached exec to end", lambda: not served.api(
        "GET", f"/exec/{ex[1]['Id']}/json")[1]["Running"])  # fmt: skip
    assert done
    doc = checked(served, "GET", f"/exec/{ex[1]['Id']}/json", "/exec/{id}/json")
    assert doc["ExitCode"] == 0 and doc["ContainerID"] == created_idle
    assert served.api("GET", "/exec/nope/json")[0] == 404
    pruned = served.api("POST", "/containers/prune")
    assert pruned[0] == 200 and pruned[1]["ContainersDeleted"] == []  # idle runs: kept
    assert swagger_errors(pruned[1], "/containers/prune", "POST") == []
    assert served.api("POST", "/containers/idle/kill")[0] == 204
    pruned = served.api("POST", "/containers/prune")
    assert [len(i) for i in pruned[1]["ContainersDeleted"]] == [64]
    assert cove_ps(cove) == []
    # the export endpoint: the container's filesystem as a tar
    served.api("POST", "/containers/create?name=ex", {"Image": "alpine:3.20"})
    out = subprocess.run([DOCKER_20, "export", "ex"], env=served.env, capture_output=True,
                         timeout=120, check=True)  # fmt: skip
    listing = subprocess.run(["tar", "t"], input=out.stdout, capture_output=True, check=True)
    assert b"etc/alpine-release" in listing.stdout.split(b"\n")


# -- the server is optional: its containers are cove's and outlive it ----------------------


def test_containers_outlive_the_server(served: Served, cove: CoveRunner) -> None:
    docker(served, DOCKER_20, "run", "-d", "--name", "keeps", "alpine:3.20", "sh", "-c",
           "while true; do echo alive; sleep 0.2; done")  # fmt: skip
    stop_serve(served)
    assert served.proc.returncode == 0
    assert not os.path.exists(served.sock)  # removed on the way out
    before = cove("logs", "keeps").stdout.count("alive")
    wait_for("output after the server stopped",
             lambda: cove("logs", "keeps").stdout.count("alive") > before)  # fmt: skip
    assert cove_ps(cove) == ["keeps running"]
    cove("rm", "-f", "keeps")


# -- many clients at once --------------------------------------------------------------------


def test_twenty_clients_in_parallel(served: Served, cove: CoveRunner) -> None:
    """8 run --rm, 6 run -d + logs -f, 6 run -d + wait, all at once: every answer right,
    and afterwards no container, monitor or server thread left over."""
    baseline = served.api("GET", "/info")[1]["NGoroutines"]
    errors: list[str] = []

    def client(kind: str, i: int) -> None:
        try:
            if kind == "rm":
                out = docker(served, DOCKER_20, "run", "--rm", "alpine:3.20", "echo", f"r{i}")
                assert out.stdout == f"r{i}\n", out
            elif kind == "logs":
                docker(served, DOCKER_20, "run", "-d", "--name", f"l{i}", "alpine:3.20",
                       "sh", "-c", f"for j in 1 2 3; do echo l{i}-$j; sleep 0.3; done")  # fmt: skip
                out = docker(served, DOCKER_20, "logs", "-f", f"l{i}").stdout
                assert out.split() == [f"l{i}-1", f"l{i}-2", f"l{i}-3"], out
                docker(served, DOCKER_20, "rm", f"l{i}")
            else:
                docker(served, DOCKER_20, "run", "-d", "--name", f"w{i}", "alpine:3.20",
                       "sh", "-c", f"sleep 0.5; exit {i}")  # fmt: skip
                out = docker(served, DOCKER_20, "wait", f"w{i}").stdout
                assert out.strip() == str(i), out
                docker(served, DOCKER_20, "rm", f"w{i}")
        except BaseException as e:  # reported below, with every other client's failure
            errors.append(f"{kind}{i}: {e}")

    jobs = [("rm", i) for i in range(8)] + [("logs", i) for i in range(6)]
    jobs += [("wait", i) for i in range(1, 7)]
    assert len(jobs) == 20
    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert errors == []
    assert all(not t.is_alive() for t in threads)
    assert cove_ps(cove) == []
    assert docker(served, DOCKER_20, "ps", "-aq").stdout == ""
    assert monitors(served.root) == []
    # the connections' threads are gone too (this request's own is the one over baseline)
    wait_for("the server's threads to end",
             lambda: served.api("GET", "/info")[1]["NGoroutines"] <= baseline)  # fmt: skip
