"""``cove --debug`` shows a cleanup that failed; without it the command's output is as
before. The failing cleanup is real: the orphan sweep after ``ps`` meets a runtime state
whose cgroups path the runtime refuses, so destroying it fails."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

from helpers import cove_argv


def test_failed_cleanup_logged_with_debug(cove_root: Path) -> None:
    cid = secrets.token_hex(32)
    state = cove_root / "runtime" / cid
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"id": cid, "pid": 0, "cgroupsPath": "../x"}))
    want = f"DEBUG: cove.containers.sweep: cleanup failed: sweep the runtime state of {cid}"

    quiet = subprocess.run(cove_argv(cove_root, "ps"), capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # no --debug: the failure stays out of the user's way
    assert state.is_dir()  # the sweep could not remove it: the next one retries

    loud = subprocess.run(cove_argv(cove_root, "--debug", "ps"), capture_output=True, text=True)
    assert loud.returncode == 0, loud.stderr
    assert want in loud.stderr and "invalid cgroups path" in loud.stderr
    assert "Traceback" in loud.stderr  # where it failed, for the one debugging it
    assert loud.stdout == quiet.stdout

    # positive control: a runtime state the runtime accepts is swept, and nothing logged
    (state / "state.json").write_text(
        json.dumps({"id": cid, "pid": 0, "cgroupsPath": f"cove/{cid}"})
    )
    clean = subprocess.run(cove_argv(cove_root, "--debug", "ps"), capture_output=True, text=True)
    assert clean.returncode == 0 and "cleanup failed" not in clean.stderr, clean.stderr
    assert not state.exists()
