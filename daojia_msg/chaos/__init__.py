"""msgplatform-chaos: the fault suite (see :mod:`daojia_msg.chaos.cli`)."""
