"""OCI lifecycle hooks: each one a program run with the container's state JSON on stdin.

Where each kind runs (runtime-spec config.md "POSIX-platform Hooks"):

- ``prestart`` and ``createRuntime``: by the runtime after the container's namespaces
  exist, before the user process, in the runtime's namespaces (``cove/runtime/oci.py``);
- ``createContainer``: by the container's first process before pivot_root, so the hook's
  path resolves on the host while its mounts are the container's (``init.py``);
- ``startContainer``: by that process after ``start``, just before the user process, with
  the path resolved in the container;
- ``poststart`` after ``start`` and ``poststop`` after ``delete``, by the runtime.

A hook that exits non-zero, or outlives its ``timeout`` (seconds; killed), fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from cove.spec.runtime import Hook


class HookError(Exception):
    pass


def state_doc(
    cid: str, status: str, pid: int, bundle: str, annotations: dict[str, str], version: str
) -> dict[str, Any]:
    """The state JSON hooks read (runtime-spec runtime.md "State")."""
    doc: dict[str, Any] = {
        "ociVersion": version,
        "id": cid,
        "status": status,
        "pid": pid,
        "bundle": bundle,
    }
    if annotations:
        doc["annotations"] = annotations
    return doc


def run(kind: str, hooks: list[Hook], state: dict[str, Any]) -> None:
    """Run ``hooks`` in order; the first failure raises (the caller decides if it is fatal)."""
    data = json.dumps(state).encode()
    for hook in hooks:
        args = hook.args or [hook.path]
        env = dict(e.partition("=")[::2] for e in hook.env)
        try:
            proc = subprocess.Popen(
                args,
                executable=hook.path,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as e:
            raise HookError(f"{kind} hook {hook.path}: {e.strerror}") from e
        try:
            out, err = proc.communicate(data, timeout=hook.timeout or None)
        except subprocess.TimeoutExpired as e:
            # the whole session: a hook's own children die with it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise HookError(f"{kind} hook {hook.path}: timeout after {hook.timeout}s") from e
        if proc.returncode != 0:
            detail = (err or out).decode(errors="replace").strip().splitlines()
            why = f": {detail[-1]}" if detail else ""
            raise HookError(f"{kind} hook {hook.path}: exit status {proc.returncode}{why}")
