"""The delivery statistics and the Prometheus registry: every layer may count here."""
