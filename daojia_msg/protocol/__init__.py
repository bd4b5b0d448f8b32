"""The wire protocol, version 1 (../shared/PROTOCOL.md): codes, codec, bodies."""
