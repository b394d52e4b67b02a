"""Issue 14: no container process shares the caller's terminal.

The attack: cove runs in the admin's shell (a terminal that is cove's controlling terminal
and its stdio); a process in the container opens /dev/tty, or uses its own stdio, and
pushes a command into that terminal's input queue with ioctl(TIOCSTI), to be run by the
shell once cove exits. Every container process (run, exec, a build's RUN step) must run in
a session of its own with no controlling terminal (open("/dev/tty") gives ENXIO) and only
pipes cove made as its stdio, unless -t gives it a pty of its own.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    STI_OPENED_TTY,
    STI_TTY_ENXIO,
    STI_VIA_FD0,
    STI_VIA_FD1,
    STI_VIA_FD2,
    STI_VIA_TTY,
    CoveRunner,
    alpine_variant,
    cove_argv,
    tiocsti_probe,
)

# what the container types into the admin's shell
INJECTED = b"touch /tmp/cove-tiocsti-was-here\n"
IMAGE = "sti:probe"
LIMIT = 240.0  # a hung cove is killed and the test fails; no assertion is timed


@pytest.fixture
def probe(cove: CoveRunner, alpine_tar: Path, alpine: str, tmp_path: Path) -> str:
    """Alpine with /sti, the TIOCSTI probe (tests/helpers.py), and alpine:3.20 itself."""
    payload = tiocsti_probe(INJECTED)
    return alpine_variant(
        cove, alpine_tar, IMAGE, tmp_path, add=lambda t: t.file("sti", payload, mode=0o755)
    )


def _take_terminal() -> None:
    # in the child, after setsid: the pty on fd 0 becomes its controlling terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return data
        if not chunk:
            return data
        data += chunk


class Terminal:
    """A pty standing for the admin's terminal: what ran in it wrote (``screen``, the master
    side), and what waits in its input queue for the shell to read (``queued``)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.screen = b""
        self.queued = b""

    def run(self, argv: list[str]) -> int:
        """Run ``argv`` with this terminal as its controlling terminal and its stdio."""
        proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                start_new_session=True, preexec_fn=_take_terminal)  # fmt: skip
        deadline = time.monotonic() + LIMIT
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"{argv} did not finish; output so far: {self.screen!r}")
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if ready:
                    self.screen += _read_all(self.master)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.screen += _read_all(self.master)
        # canonical mode: a complete injected line is readable at once, and so is its echo
        self.queued += _read_all(self.slave)
        return proc.returncode

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    t = Terminal()
    try:
        yield t
    finally:
        t.close()


@pytest.mark.parametrize("case", ["run", "run -i", "exec", "exec -i", "build"])
def test_container_cannot_type_into_the_callers_terminal(
    cove: CoveRunner, cove_root: Path, probe: str, terminal: Terminal, tmp_path: Path, case: str
) -> None:
    if case.startswith("run"):
        argv = ["run", "--rm", *case.split()[1:], IMAGE, "/sti"]
        status = terminal.run(cove_argv(cove_root, *argv))
    elif case.startswith("exec"):
        cove("run", "-d", "--name", "victim", IMAGE, "sleep", "1000")
        status = terminal.run(cove_argv(cove_root, "exec", *case.split()[1:], "victim", "/sti"))
    else:
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f'FROM {IMAGE}\nRUN /sti; echo "sti-status=$?"\n')
        assert terminal.run(cove_argv(cove_root, "build", "--progress", "plain", str(ctx))) == 0, (
            terminal.screen
        )
        found = [w for w in terminal.screen.split() if w.startswith(b"sti-status=")]
        assert found, terminal.screen
        status = int(found[0].split(b"=")[1])
    # nothing reached the admin's shell: not in its input queue, not echoed on its screen
    assert INJECTED.strip() not in terminal.queued, "the container typed into the terminal"
    assert INJECTED.strip() not in terminal.screen, "the container typed into the terminal"
    pushed = status & (STI_VIA_TTY | STI_VIA_FD0 | STI_VIA_FD1 | STI_VIA_FD2)
    assert not pushed, f"TIOCSTI went through (probe status {status}): {terminal.screen!r}"
    assert not status & STI_OPENED_TTY, "the container has a controlling terminal"
    assert status == STI_TTY_ENXIO, f"open(/dev/tty) did not fail with ENXIO: {status}"


def test_tty_gives_the_container_its_own_terminal(
    cove: CoveRunner, cove_root: Path, probe: str, terminal: Terminal
) -> None:
    """Positive control: with -t the container has a terminal (the pty cove made), and what
    it pushes into that one stays there."""
    code = terminal.run(cove_argv(cove_root, "run", "-t", "--rm", "alpine:3.20", "sh", "-c",
                                  "tty; test -t 0 && test -t 1 && echo both-are-ttys"))  # fmt: skip
    assert code == 0, terminal.screen
    assert b"/dev/pts/" in terminal.screen and b"both-are-ttys" in terminal.screen
    every = STI_OPENED_TTY | STI_VIA_TTY | STI_VIA_FD0 | STI_VIA_FD1 | STI_VIA_FD2
    assert terminal.run(cove_argv(cove_root, "run", "-t", "--rm", IMAGE, "/sti")) == every
    assert INJECTED.strip() not in terminal.queued, "the container typed into the terminal"


def test_stdin_and_output_cross_through_pipes(
    cove: CoveRunner, cove_root: Path, alpine: str
) -> None:
    """Positive controls: a normal container works; -i input arrives with its EOF, binary
    and large data cross unchanged in both directions, for run and exec; exit codes kept;
    a reader that leaves early (``| head``) ends an exec'd writer."""
    assert cove("run", "--rm", "alpine:3.20", "echo", "plain").stdout == "plain\n"
    assert cove("run", "-i", "--rm", "alpine:3.20", "cat", input="hi\n").stdout == "hi\n"
    blob = os.urandom(3 << 20) + bytes(range(256))
    run = cove("run", "-i", "--rm", "alpine:3.20", "sh", "-c", "cat; echo eof-seen >&2; exit 3",
               input=blob, text=False, check=False)  # fmt: skip
    assert (run.returncode, run.stdout, run.stderr) == (3, blob, b"eof-seen\n")
    cove("run", "-d", "--name", "box", "alpine:3.20", "sleep", "1000")
    ex = cove("exec", "-i", "box", "sh", "-c", "cat; echo eof-seen >&2; exit 4",
              input=blob, text=False, check=False)  # fmt: skip
    assert (ex.returncode, ex.stdout, ex.stderr) == (4, blob, b"eof-seen\n")
    # without -i the process reads /dev/null, not our stdin
    assert cove("exec", "box", "cat", input="not for you\n").stdout == ""
    # a process that never reads its stdin still gets its output out
    big = cove("exec", "-i", "box", "head", "-c", "1000000", "/dev/zero", input=blob, text=False)
    assert big.stdout == bytes(1000000)
    argv = " ".join(cove_argv(cove_root, "exec", "box", "yes"))
    head = subprocess.run(f"{argv} | head -n 2", shell=True, capture_output=True, timeout=LIMIT)
    assert head.stdout == b"y\ny\n"
