"""msgplatform-bench: load scenarios against a running node (see :mod:`daojia_msg.bench.cli`)."""
