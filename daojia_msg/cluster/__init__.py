"""Many nodes: the node registry and leases, the gate detector, the internal RPC, cluster-wide statistics."""
