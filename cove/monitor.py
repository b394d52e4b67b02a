"""Upgrade shim: the monitor lives in ``cove.containers.monitor``.

Kept because a monitor's command line names this path (``... from cove.monitor import
main; main()``): monitors started by older code, and tools that find monitors by it (ps,
pgrep), keep working. Lean like the monitor itself: it imports nothing else.
"""

from cove.containers.monitor import Monitor, Options, main

__all__ = ["Monitor", "Options", "main"]

if __name__ == "__main__":
    main()
