"""Tests for daojia_msg.bench."""
