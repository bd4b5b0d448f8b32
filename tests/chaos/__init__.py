"""Tests for daojia_msg.chaos (the fault suite); the live run is the command itself."""
