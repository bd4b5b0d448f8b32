"""Neutral pieces every layer may use: the domain model, the error tree and
the message conversions. Nothing here imports a layer above it."""
