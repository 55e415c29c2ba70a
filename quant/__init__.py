"""accel: quant (filled by later issues)."""
