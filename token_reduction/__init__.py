"""accel.token_reduction: visual-token pruning inside the language model of VLMs (PyramidDrop, FastV).

    accel.patch(model, method="pyramid-drop")          # LLaVA(-NeXT/-OneVision), Qwen2-VL, Qwen2.5-VL
    accel.token_reduction.prefill_flops(layers=32, hidden=4096, intermediate=11008, text_tokens=60,
                                        visual_tokens=576, drops=[(8, 0.5), (16, 0.25), (24, 0.125)])

The methods live in `methods.py` (loaded by name through the "accel.methods" entry points); this package
imports nothing heavy on its own.
"""

from .flops import PrefillCost, prefill_flops

__all__ = ["PrefillCost", "prefill_flops"]
