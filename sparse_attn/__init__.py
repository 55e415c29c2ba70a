"""accel: sparse_attn (filled by later issues)."""
