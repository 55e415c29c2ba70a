"""The sparse-attention methods as accel methods: `method="pisa"` and `method="adaspa"`.

Importing this package registers them (accel.method loads it); the kernels stay importable without accel.
"""

from . import adaspa, pisa  # noqa: F401
