"""QMP (``qemu.qmp``) to a ``cove vm``'s QEMU: one command per connection, with a deadline.

A stopped or wedged QEMU must not freeze ``ls``, ``stop``...: a QEMU that does not answer
within the timeout is an error, never a hang.
"""

from __future__ import annotations

import contextlib
from typing import Any

from cove.errors import StateError, VMFailed
from cove.vm.vmstore import VMRecord

QMP_TIMEOUT = 10.0
SNAPSHOT_TIMEOUT = 300.0  # savevm writes all of the guest's memory


def command(rec: VMRecord, socket: str, name: str, *, timeout: float = QMP_TIMEOUT,
            **args: Any) -> Any:  # fmt: skip
    """One QMP command to the QEMU of ``rec`` (its QMP socket ``socket``); its answer."""
    import asyncio

    from qemu.qmp import ExecuteError, QMPClient

    if not rec.status.can_stop():
        raise StateError(f"vm {rec.name} is not running")

    async def run() -> Any:
        client = QMPClient(rec.name)
        await asyncio.wait_for(client.connect(socket), timeout)
        try:
            return await asyncio.wait_for(client.execute(name, args or None), timeout)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 5)

    try:
        return asyncio.run(run())
    except ExecuteError as e:
        raise VMFailed(f"vm {rec.name}: {name}: {e.error.error.desc}") from e
    except TimeoutError as e:
        raise VMFailed(f"vm {rec.name}: qemu did not answer {name} in {timeout:g} s") from e
    except Exception as e:
        raise VMFailed(f"vm {rec.name}: cannot reach its qemu monitor: {e}") from e


def hmp(rec: VMRecord, socket: str, line: str) -> None:
    """savevm, loadvm, delvm: they answer nothing when they worked."""
    out = str(command(rec, socket, "human-monitor-command", timeout=SNAPSHOT_TIMEOUT,
                      **{"command-line": line}) or "").strip()  # fmt: skip
    if out:
        raise VMFailed(f"vm {rec.name}: {line}: {out.splitlines()[-1]}")
