"""``cove serve``: the Docker Engine API (v1.41) on a unix socket, a face over the same
engines as the CLI. ``server`` holds the HTTP plumbing and the routing table; each
sibling module (containers, exec, daemon, and images, networks, volumes, events, build,
system) exposes ``ROUTES``, a list of (method, path regex, handler) that server.py
registers.
"""
