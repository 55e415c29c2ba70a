"""Step caching on one span-residual cache: Δ-DiT (`delta-dit`) and the Temporal Delta Cache (`tdc`)."""

from .delta_dit import DeltaDiT, DeltaDiTConfig
from .span_cache import Span, SpanState
from .tdc import TDC, TDCConfig

__all__ = ["DeltaDiT", "DeltaDiTConfig", "Span", "SpanState", "TDC", "TDCConfig"]
