"""`accel bench`: latency, memory and fidelity of methods and peers, side by side in one run."""

from .metrics import fidelity, psnr, relative_l1, ssim
from .report import markdown, write_all
from .runner import BenchResult, BenchSpec, RowResult, quick, run

__all__ = ["BenchResult", "BenchSpec", "RowResult", "fidelity", "markdown", "psnr", "quick", "relative_l1", "run", "ssim",
           "write_all"]
