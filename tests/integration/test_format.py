"""``--format`` through Go templates end to end, and ``-it`` without a terminal (issue 17)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import CoveRunner, cove_argv


def test_inspect_templates_on_a_user_network(cove: CoveRunner, alpine: str) -> None:
    cove("network", "create", "fmtnet")
    cove("run", "-d", "--name", "fmtc", "--network", "fmtnet", "alpine:3.20", "sleep", "1000")
    doc = json.loads(cove("inspect", "fmtc").stdout)[0]
    ip = doc["NetworkSettings"]["Networks"]["fmtnet"]["IPAddress"]
    assert ip  # the address the template must find
    tmpl = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    assert cove("inspect", "-f", tmpl, "fmtc").stdout == ip + "\n"
    assert cove("container", "inspect", "--format", "{{index .Config.Cmd 0}}", "fmtc").stdout == (
        "sleep\n"
    )
    # {{json .Config}} is the object as inspect's JSON holds it, compact
    assert json.loads(cove("inspect", "-f", "{{json .Config}}", "fmtc").stdout) == doc["Config"]
    # images, networks and volumes take templates too
    assert cove("image", "inspect", "-f", "{{.Id}}", "alpine:3.20").stdout == alpine + "\n"
    net = "{{.Name}} {{range $k, $v := .Containers}}{{$v.Name}}{{end}}"
    assert cove("network", "inspect", "-f", net, "fmtnet").stdout == "fmtnet fmtc\n"
    cove("volume", "create", "--label", "k=v", "fmtvol")
    vol = "{{.Name}} {{.Labels.k}} {{len .Labels}}"
    assert cove("volume", "inspect", "-f", vol, "fmtvol").stdout == "fmtvol v 1\n"
    # a template that does not parse: Docker's message and inspect's status 64
    bad = cove("inspect", "-f", "{{.Name", "fmtc", check=False)
    assert (bad.returncode, bad.stdout) == (64, "")
    assert bad.stderr == "template parsing error: template: :1: unclosed action\n"


def test_list_verbs_templates(cove: CoveRunner, alpine: str) -> None:
    cid = cove("run", "-d", "--name", "lister", "alpine:3.20", "sleep", "1000").stdout.strip()
    lines = cove("ps", "--format", "table {{.ID}}\\t{{.Names}}").stdout.splitlines()
    # Docker's header row and tabwriter columns (padding 3, minimum width 10)
    assert lines == ["CONTAINER ID   NAMES", f"{cid[:12]}   lister"]
    assert cove("images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "alpine:3.20\n"
    img = cove("images", "--format", "table {{.Repository}}\t{{.Tag}}").stdout.splitlines()
    assert img == ["REPOSITORY   TAG", "alpine       3.20"]
    cove("network", "create", "--label", "team=a", "listnet")
    nets = cove("network", "ls", "--format", "{{.Name}}|{{.Driver}}").stdout.split()
    assert "listnet|bridge" in nets
    cove("volume", "create", "listvol")
    vols = cove("volume", "ls", "--format", "table {{.Name}}\t{{.Driver}}").stdout.splitlines()
    assert vols == ["VOLUME NAME   DRIVER", "listvol       local"]
    # functions and conditionals over a list verb's rows
    st = '{{if eq .State "running"}}{{upper .Names}}{{else}}down{{end}}'
    assert cove("ps", "-a", "--format", st).stdout == "LISTER\n"
    # json: one compact object per line, as Docker's {{json .}}
    row = json.loads(cove("ps", "--format", "json").stdout)
    assert row["Names"] == "lister"
    bad = cove("ps", "--format", "{{nosuch .ID}}", check=False)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == 'template parsing error: template: :1: function "nosuch" not defined\n'


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # stdin is /dev/null: not a terminal, whatever terminal pytest itself was started from
    return subprocess.run(cove_argv(root, *args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "-it", "alpine:3.20", "true"],
        ["run", "-i", "-t", "--rm", "--name", "never", "alpine:3.20", "true"],
        ["run", "-it", "no-such-image:1", "true"],  # refused before any pull or lookup
        ["exec", "-it", "keeper", "true"],
    ],
)
def test_it_without_a_terminal(
    cove: CoveRunner, cove_root: Path, alpine: str, argv: list[str]
) -> None:
    cove("run", "-d", "--name", "keeper", "alpine:3.20", "sleep", "1000")
    before = cove("ps", "-aq", "--no-trunc").stdout
    got = _run(cove_root, *argv)
    assert (got.returncode, got.stdout, got.stderr) == (1, "", "the input device is not a TTY\n")
    assert cove("ps", "-aq", "--no-trunc").stdout == before  # nothing was created
    # positive controls: -t alone still runs, with a TTY allocated (Docker does the same),
    # and -it with -d needs no terminal of ours
    tty = _run(cove_root, "run", "--rm", "-t", "alpine:3.20", "tty")
    assert (tty.returncode, tty.stdout.strip()) == (0, "/dev/pts/0"), tty
    ran = _run(cove_root, "run", "--rm", "-i", "alpine:3.20", "echo", "ok")
    assert (ran.returncode, ran.stdout) == (0, "ok\n"), ran
    det = _run(cove_root, "run", "-dit", "--name", "detached", "alpine:3.20", "sh")
    assert det.returncode == 0, det
    assert "detached" in cove("ps", "--format", "{{.Names}}").stdout.split()


def test_attach_to_a_tty_container_without_a_terminal(
    cove: CoveRunner, cove_root: Path, alpine: str
) -> None:
    """Docker's attach checks the same: stdin attached to a TTY container needs a terminal."""
    cove("run", "-dit", "--name", "ttyc", "alpine:3.20", "sh")
    got = _run(cove_root, "attach", "ttyc")
    assert (got.returncode, got.stdout, got.stderr) == (1, "", "the input device is not a TTY\n")
    # nothing was disturbed: the container still runs and still takes commands
    assert cove("ps", "--format", "{{.Names}} {{.State}}").stdout == "ttyc running\n"
    assert cove("exec", "ttyc", "echo", "alive").stdout == "alive\n"
