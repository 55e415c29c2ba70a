"""Fidelity of an accelerated output against the exact output of the same model and seed.

All metrics compare float tensors shaped like pipeline outputs: images [B, C, H, W] or videos with a
frame axis (`frame_axis=2` for [B, C, F, H, W] as diffusers' video latents, 1 for [B, F, C, H, W] as
decoded frames and CogVideoX latents); SSIM folds frames into the batch. `data_range` defaults to the reference's own range (max - min): for final latents there is no
fixed pixel range, and using the reference's keeps PSNR comparable between rows of one run.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F


def _pair(reference: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if reference.shape != output.shape:
        raise ValueError(f"accel: cannot compare outputs of shapes {tuple(reference.shape)} and {tuple(output.shape)}")
    return reference.detach().double().cpu(), output.detach().double().cpu()


def _range(reference: torch.Tensor, data_range: float | None) -> float:
    if data_range is not None:
        return float(data_range)
    span = float(reference.max() - reference.min())
    return span if span > 0 else 1.0


def psnr(reference: torch.Tensor, output: torch.Tensor, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; `inf` for identical tensors."""
    ref, out = _pair(reference, output)
    mse = float(torch.mean((ref - out) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_range(ref, data_range) ** 2 / mse)


def relative_l1(reference: torch.Tensor, output: torch.Tensor) -> float:
    """sum |out - ref| / sum |ref|."""
    ref, out = _pair(reference, output)
    denom = float(ref.abs().sum())
    return float((out - ref).abs().sum()) / (denom if denom > 0 else 1.0)


def _as_images(x: torch.Tensor, frame_axis: int = 2) -> torch.Tensor:
    """A batch of [C, H, W] images: videos have their frames folded into the batch."""
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() == 5 and frame_axis == 2:
        x = x.transpose(1, 2)
    return x.reshape(-1, *x.shape[-3:])


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    reference: torch.Tensor, output: torch.Tensor, data_range: float | None = None, frame_axis: int = 2
) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03),
    per channel, averaged over images, frames and channels. 1.0 for identical tensors."""
    ref, out = _pair(reference, output)
    rng = _range(ref, data_range)
    ref, out = _as_images(ref, frame_axis), _as_images(out, frame_axis)
    channels, height, width = ref.shape[1:]
    size = min(11, height, width)
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size, 1.5 * size / 11).to(ref).expand(channels, 1, size, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mu_r, mu_o = blur(ref), blur(out)
    var_r = blur(ref * ref) - mu_r**2
    var_o = blur(out * out) - mu_o**2
    cov = blur(ref * out) - mu_r * mu_o
    s = ((2 * mu_r * mu_o + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_o**2 + c1) * (var_r + var_o + c2))
    return float(s.mean())


def lpips_available() -> tuple[bool, str]:
    """LPIPS needs the `lpips` package and its backbone weights already on disk; accel never downloads."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False, "the lpips package is not installed"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return False, f"AlexNet weights are not in {hub} (accel never downloads them)"
    return True, "ok"


def lpips_distance(reference: torch.Tensor, output: torch.Tensor, frame_axis: int = 2) -> float | None:
    """LPIPS (AlexNet) on decoded images in [0, 1], or None when it cannot run offline."""
    ok, _ = lpips_available()
    if not ok:
        return None
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False)
    ref = _as_images(reference.float().cpu(), frame_axis)
    out = _as_images(output.float().cpu(), frame_axis)
    if ref.shape[1] != 3:
        return None
    with torch.no_grad():
        return float(net(ref * 2 - 1, out * 2 - 1).mean())


def fidelity(
    reference: torch.Tensor, output: torch.Tensor, decoded: bool = False, frame_axis: int = 2
) -> dict[str, float | None]:
    """PSNR, SSIM and relative L1, plus LPIPS on decoded images in [0, 1] when it can run offline."""
    rng = 1.0 if decoded else None
    return {
        "psnr": psnr(reference, output, rng),
        "ssim": ssim(reference, output, rng, frame_axis),
        "rel_l1": relative_l1(reference, output),
        "lpips": lpips_distance(reference, output, frame_axis) if decoded else None,
    }
