"""The wire protocol, version 1 (docs/protocol.md): codes, codec, bodies."""
