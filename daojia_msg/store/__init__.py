"""Sessions and messages behind interfaces: embedded (memory, SQLite) and cluster backends."""
