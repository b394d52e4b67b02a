"""Networks: bridges, IPAM, port publishing, the firewall and the embedded DNS server.

Kept empty: ``cove.network.dns`` runs as a lean interpreter of its own (C modules only).
"""
