"""accel: token_reduction (filled by later issues)."""
