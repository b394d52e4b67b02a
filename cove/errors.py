"""The one error tree of cove.

Every failure cove reports to a user is a ``CoveError``: a lowercase, one-line
message naming the id or path involved. Faces (the CLI) print ``str(err)`` and
exit with ``err.exit_code``; they never print tracebacks for these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def best_effort(what: str, logger: str = "cove") -> Iterator[None]:
    """A cleanup step whose failure must not mask the outcome it follows (the error being
    raised, the exit code being returned): the failure is swallowed but logged at debug
    level on ``logger`` (``cove --debug`` prints it), never lost. Expected misses (a file
    or process already gone) are the caller's to suppress silently, narrowly."""
    try:
        yield
    except Exception as e:
        import logging  # only on a failure: the start path never pays for it

        logging.getLogger(logger).debug("cleanup failed: %s: %s", what, e, exc_info=True)


class CoveError(Exception):
    """Base of all errors cove reports to a user."""

    exit_code = 1


class NotFound(CoveError):
    """An image, blob, layer or other object does not exist."""


class Conflict(CoveError):
    """The operation clashes with existing state (name in use, image in use)."""


class InvalidSpec(CoveError):
    """A spec, reference, flag value or document is malformed."""

    exit_code = 125


class InvalidReference(InvalidSpec):
    """An image reference does not follow the Docker reference grammar."""


class CorruptContent(CoveError):
    """Bytes do not match their digest, or an archive is truncated or unreadable."""


class UnsafeArchive(CoveError):
    """A tar entry would write outside its root or is otherwise hostile."""


class StateError(CoveError):
    """An illegal lifecycle transition was asked for."""


class StartFailed(CoveError):
    """A container's (or an exec's) process could not be set up or its command not exec'd:
    ``exit_code`` is Docker's, set by whoever saw the cause (126 cannot invoke, 127 not
    found, 125 cove's own failure before the exec); callers read it, never the message."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Unsupported(CoveError):
    """The request is valid but this host or this version cannot do it."""


class HostToolFailed(CoveError):
    """A host program cove drives (ip, iptables, qemu-img, mkfs...) failed or timed out:
    ``tool`` names it, ``returncode`` is its exit status (None: it did not finish)."""

    def __init__(self, message: str, tool: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.tool = tool
        self.returncode = returncode


class HostFailure(CoveError):
    """The host refused an operation cove needed: a file copy, a sysctl write (the errno's
    text in the message, the OSError as the cause)."""


class VMFailed(CoveError):
    """A virtual machine's QEMU or guest failed: it did not start, stopped answering its QMP
    monitor, or ended without the result cove waited for (the QEMU log is named)."""


class CorruptState(CoveError):
    """The state database cannot be read (damaged file): ``cove system check --repair``."""


class RootlessUnavailable(CoveError):
    """A non-root user cannot get the user namespace rootless cove runs in (no subordinate
    ids in /etc/subuid or /etc/subgid, no newuidmap): cove's own failure, as Docker's 125."""

    exit_code = 125
