"""errors.best_effort: a cleanup that fails is logged (debug, on the caller's logger), not
swallowed unseen; the outcome it follows is kept."""

from __future__ import annotations

import logging

import pytest

from cove.errors import NotFound, best_effort


def test_failure_is_logged_and_passed_over(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cove")
    with best_effort("delete the runtime state of c1", "cove.containers.run"):
        raise NotFound("container c1 does not exist in the runtime")
    [rec] = caplog.records
    assert rec.name == "cove.containers.run" and rec.levelno == logging.DEBUG
    assert rec.getMessage() == (
        "cleanup failed: delete the runtime state of c1: container c1 does not exist in the runtime"
    )
    assert rec.exc_info is not None  # --debug shows where it failed


def test_success_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cove")
    done = []
    with best_effort("a step that works", "cove.test"):
        done.append(1)
    assert done == [1] and caplog.records == []


def test_interrupts_are_not_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cove")
    with pytest.raises(KeyboardInterrupt), best_effort("a step", "cove.test"):
        raise KeyboardInterrupt
    assert caplog.records == []
