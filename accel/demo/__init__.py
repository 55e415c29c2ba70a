"""The Gradio side-by-side demo (`pip install 'hf-accel[demo]'`; `accel demo`)."""

from .session import Comparison, DemoSession, Result, Settings

__all__ = ["Comparison", "DemoSession", "Result", "Settings"]
