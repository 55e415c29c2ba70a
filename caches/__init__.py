"""accel: caches (filled by later issues)."""
