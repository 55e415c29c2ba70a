"""Turning results into what a browser shows: images, animated clips, difference heat maps, a table."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .session import Comparison, Result

DISPLAY = 256  # shortest side of displayed images, in pixels (zoo outputs can be 32x32)


def _pil(image: torch.Tensor) -> Image.Image:
    """[C, H, W] in [0, 1] -> an RGB image, upscaled with nearest neighbours for small outputs."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if array.shape[2] == 1:
        array = array.repeat(3, axis=2)
    img = Image.fromarray(array)
    scale = max(1, DISPLAY // min(img.size))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _slug(label: str) -> str:
    """A file name for a row label ("tuned: tdc(order=1,threshold=0.5)" -> "tuned-tdc-order-1-threshold-0.5")."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-") or "run"


def visual(result: Result, out_dir: Path) -> str:
    """A PNG for an image, an animated GIF (a playable clip) for a video; returns the file path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not result.is_video:
        path = out_dir / f"{_slug(result.label)}.png"
        _pil(result.output).save(path)
        return str(path)
    frames = [_pil(f) for f in result.output]
    path = out_dir / f"{_slug(result.label)}.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)
    return str(path)


def heatmap(base: Result, other: Result, out_dir: Path) -> str:
    """|other - baseline|, averaged over channels (and frames), as a colour map; red is the largest error."""
    from matplotlib import colormaps

    diff = (other.output - base.output).abs()
    diff = diff.mean(dim=0) if diff.dim() == 4 else diff
    diff = diff.mean(dim=0).numpy()
    peak = float(diff.max())
    rgb = colormaps["inferno"](diff / peak if peak > 0 else diff)[..., :3]
    path = out_dir / f"{_slug(other.label)}-diff.png"
    _pil(torch.from_numpy(rgb).permute(2, 0, 1).float()).save(path)
    return str(path)


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return "inf (identical)" if math.isinf(x) else f"{x:.{digits}f}"


def _accuracy(r: Result) -> str:
    """`95.0% (-5.0)`: task accuracy and its change from the baseline in points; `-` without a judge."""
    if r.accuracy is None:
        return "-"
    delta = "" if r.accuracy_delta_pts is None else f" ({r.accuracy_delta_pts:+.1f})"
    return f"{100 * r.accuracy:.1f}%{delta}"


def table(c: Comparison) -> list[list[str]]:
    """One row per result: latency, speedup, PSNR, SSIM, accuracy, the method's headline stats."""
    rows = []
    for r in [c.baseline, *c.methods]:
        method_stats = {
            k: v
            for name, d in r.stats.items()
            if isinstance(d, dict) and name != "steps"
            for k, v in d.items()
            if not isinstance(v, (dict, list))
        }
        summary = ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in method_stats.items())
        if r.label == "baseline":
            summary = "cached" if r.stats.get("cached") else "computed"
        rows.append(
            [
                r.label,
                f"{r.seconds:.3f}",
                _num(r.speedup) + "x",
                _num(r.psnr),
                _num(r.ssim, 4),
                _accuracy(r),
                summary,
            ]
        )
    return rows


TABLE_HEADERS = ["run", "latency s", "speedup", "PSNR dB", "SSIM", "task accuracy", "stats"]


def render(
    c: Comparison, out_dir: Path | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list]:
    """(gallery of outputs, gallery of heat maps, table rows) for the app."""
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="accel-demo-"))
    outputs = [(visual(r, out_dir), f"{r.label}: {r.seconds:.2f} s") for r in [c.baseline, *c.methods]]
    heat = [(heatmap(c.baseline, r, out_dir), f"{r.label}: |difference|") for r in c.methods]
    return outputs, heat, table(c)
