"""``docker start`` for the server, in a fresh single-threaded process.

The engine's start forks the container's monitor and its first helper, which keep running
Python (sqlite, imports) after the fork. Forked from the threaded server, such a child can
inherit a lock another thread held at that instant (sqlite's mutexes) and hang forever.
So the server runs each start here instead: ``python -P -m cove.api.launch ROOT ID FD``, with
the attach end (or -1) passed down; one JSON line on stdout says how it went.

Under ``cove serve`` the fork helper (cove.api.forkserver) does the same from an image that
has already imported all this, in a few milliseconds: the fresh process is the fallback when
no helper can take the start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cove import errors


def start(root: str, cid: str, attach_fd: int = -1) -> None:
    """Start ``cid`` in a child of the fork helper, or else through a launcher process; its
    failure raised here as the same class (a ContainerStartError with its exit code)."""
    import tempfile

    from cove.api import forkserver

    fs = forkserver.current()
    if fs is not None:
        try:
            fds = [attach_fd] if attach_fd >= 0 else []
            fs.call({"op": "start", "root": root, "cid": cid}, fds)
            return
        except forkserver.HelperGone as e:
            sys.stderr.write(f"cove serve: warning: {e}; starting {cid} in a fresh process\n")

    argv = forkserver.module_argv("cove.api.launch", root, cid, str(attach_fd))
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
    forkserver.raise_error(doc)


def main(argv: list[str]) -> int:
    root, cid, fd = argv[0], argv[1], int(argv[2])
    from cove.api import forkserver
    from cove.containers.engine import ContainerEngine
    from cove.containers.isolation import register
    from cove.engine import Engine
    from cove.vm.isolation import VM

    register(VM())  # as the CLI does: a vm run's container starts through its driver
    try:
        ContainerEngine(Engine(root)).start(cid, attach_fd=fd)
    except errors.CoveError as e:  # ContainerStartError included (its exit code kept)
        print(json.dumps(forkserver.error_doc(e)))
        return 1
    finally:
        if fd >= 0:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
