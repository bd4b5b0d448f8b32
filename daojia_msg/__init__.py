"""msgplatform: a message platform for mobile apps on long-lived TCP connections."""

__version__ = "0.1.0"
