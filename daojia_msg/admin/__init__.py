"""Operator tools inside a node: the admin manhole (:mod:`daojia_msg.admin.manhole`)."""
