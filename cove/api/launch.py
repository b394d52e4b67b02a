"""``docker start`` for the server, in a fresh single-threaded process.

The engine's start forks the container's monitor and its first helper, which keep running
Python (sqlite, imports) after the fork. Forked from the threaded server, such a child can
inherit a lock another thread held at that instant (sqlite's mutexes) and hang forever.
So the server runs each start here instead: ``python -m cove.api.launch ROOT ID FD``, with
the attach end (or -1) passed down; one JSON line on stdout says how it went.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cove import errors


def start(root: str, cid: str, attach_fd: int = -1) -> None:
    """Start ``cid`` through a launcher process; its failure raised here as the same class
    (a ContainerStartError with its exit code)."""
    import tempfile

    argv = [sys.executable, "-m", "cove.api.launch", root, cid, str(attach_fd)]
    # the answer goes to a file, not a pipe: the monitor and its first helper are forked
    # from the launcher and may hold its stdout for a while; its exit is what we wait for
    with tempfile.TemporaryFile("w+") as out:
        code = subprocess.run(
            argv,
            pass_fds=(attach_fd,) if attach_fd >= 0 else (),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=False,
        ).returncode
        out.seek(0)
        text = out.read()
    if code == 0:
        return
    try:
        doc = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise errors.CoveError(f"cannot start container {cid}: {text.strip() or code}") from None
    if doc.get("kind") == "ContainerStartError":
        from cove.runtime.api import ContainerStartError

        raise ContainerStartError(doc["message"], int(doc.get("code", 125)))
    kind = getattr(errors, str(doc.get("kind")), errors.CoveError)
    if not (isinstance(kind, type) and issubclass(kind, errors.CoveError)):
        kind = errors.CoveError
    if kind is errors.HostToolFailed:
        raise errors.HostToolFailed(doc["message"], "start")
    raise kind(doc["message"])


def main(argv: list[str]) -> int:
    root, cid, fd = argv[0], argv[1], int(argv[2])
    from cove.containers.engine import ContainerEngine
    from cove.containers.isolation import register
    from cove.engine import Engine
    from cove.runtime.api import ContainerStartError
    from cove.vm.isolation import VM

    register(VM())  # as the CLI does: a vm run's container starts through its driver
    try:
        ContainerEngine(Engine(root)).start(cid, attach_fd=fd)
    except ContainerStartError as e:
        print(json.dumps({"kind": "ContainerStartError", "message": str(e), "code": e.exit_code}))
        return 1
    except errors.CoveError as e:
        print(json.dumps({"kind": type(e).__name__, "message": str(e)}))
        return 1
    finally:
        if fd >= 0:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
