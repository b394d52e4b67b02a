"""Values written into a container's /etc/hosts, /etc/hostname, /etc/resolv.conf (issue 15).

Attack: a newline (or NUL, or a blank) in ``--add-host``, ``--dns``, ``--hostname``, a
network alias or a container name adds lines of the attacker's choosing to those files
(``--add-host 'a:1.2.3.4\\n6.6.6.6 bank.example'``, ``--dns '1.1.1.1\\nnameserver 6.6.6.6'``).
Each must be refused with a one-line error, exit 125, and leave no container behind.
"""

from __future__ import annotations

import pytest
from helpers import CoveRunner

EVIL_HOST = "10.1.2.3\n10.6.6.6\tbank.example"
EVIL_DNS = "10.1.2.3\nnameserver 10.6.6.6"


@pytest.mark.parametrize(
    "flags",
    [
        ["--add-host", f"good.example:{EVIL_HOST}"],
        ["--add-host", "bank.example\n10.6.6.6:10.1.2.3"],
        ["--add-host", "a b:10.1.2.3"],
        ["--dns", EVIL_DNS],
        ["--dns", "10.1.2.3 "],
        ["--hostname", "h\n10.6.6.6\tbank.example"],
        ["--hostname", "h x"],
        ["--network", "bridge", "--network-alias", "web\n10.6.6.6 bank.example"],
        ["--name", "box\n"],
    ],
    ids=["add-host-ip-nl", "add-host-name-nl", "add-host-blank", "dns-nl", "dns-blank",
         "hostname-nl", "hostname-blank", "alias-nl", "name-nl"],
)  # fmt: skip
def test_newlines_refused(cove: CoveRunner, alpine: str, flags: list[str]) -> None:
    proc = cove("run", "--rm", *flags, "alpine:3.20", "cat", "/etc/hosts", "/etc/resolv.conf",
                check=False)  # fmt: skip
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert "bank.example" not in proc.stdout and "10.6.6.6" not in proc.stdout
    err = proc.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err, err
    assert cove("ps", "-aq").stdout.strip() == ""  # nothing was created
    # positive control: valid values of the same flags show up in the files
    ok = cove("run", "--rm", "--add-host", "a.b:10.1.2.3", "--dns", "10.1.2.4",
              "--hostname", "box", "alpine:3.20",
              "cat", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname").stdout  # fmt: skip
    assert "10.1.2.3\ta.b" in ok and "nameserver 10.1.2.4" in ok and "box" in ok


def test_network_connect_alias_refused(cove: CoveRunner, alpine: str) -> None:
    cove("network", "create", "evilnet")
    cove("create", "--name", "cc", "alpine:3.20", "true")
    proc = cove("network", "connect", "--alias", "x\n10.6.6.6 bank.example", "evilnet", "cc",
                check=False)  # fmt: skip
    assert proc.returncode == 125 and proc.stderr.count("\n") == 1, proc.stderr
    assert "bank.example" not in cove("inspect", "cc").stdout
    # positive control: a plain alias is accepted
    cove("network", "connect", "--alias", "web", "evilnet", "cc")
