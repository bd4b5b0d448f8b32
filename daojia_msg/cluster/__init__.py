"""Many nodes: Redis connection, node registry and leases, gate detector, internal RPC."""
