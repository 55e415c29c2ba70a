"""The sparse-attention methods as accel methods: `method="pisa"` (pisa.py) and `method="adaspa"` (adaspa.py).

Each is an entry point of the "accel.methods" group, imported only when asked for by name; the kernels
they use (accel.sparse_attn) stay importable without them.
"""
