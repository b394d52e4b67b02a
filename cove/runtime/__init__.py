"""cove's OCI runtime: executes a bundle (config.json + rootfs) in namespaces and cgroups.

Its API (``cove.runtime.api``: create, start, kill, delete, state) mirrors runc's
verbs. Imports spec and syscalls only, never the image store or the engine.
"""
