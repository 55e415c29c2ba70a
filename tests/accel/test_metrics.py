"""Fidelity metrics against known values."""

from __future__ import annotations

import math

import pytest
import torch

from accel.bench.metrics import fidelity, psnr, relative_l1, ssim


def test_identical_outputs_give_infinite_psnr_and_unit_ssim():
    x = torch.rand(2, 3, 32, 32)
    assert psnr(x, x.clone()) == math.inf
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)
    assert relative_l1(x, x.clone()) == 0.0


def test_known_noise_gives_known_psnr():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64)
    sigma = 0.05
    noisy = x + sigma * torch.randn_like(x)
    # PSNR = 10 log10(range^2 / mse) with mse ~ sigma^2 -> 26.02 dB for range 1
    assert psnr(x, noisy, data_range=1.0) == pytest.approx(10 * math.log10(1 / sigma**2), abs=0.1)
    exact_mse = float(((x - noisy) ** 2).mean())
    assert psnr(x, noisy, data_range=1.0) == pytest.approx(10 * math.log10(1 / exact_mse), rel=1e-9)


def test_psnr_defaults_to_the_reference_range():
    x = torch.tensor([0.0, 2.0, 4.0, 6.0])
    y = x + torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert psnr(x, y) == pytest.approx(10 * math.log10(36 / 1))


def test_relative_l1_known_value():
    assert relative_l1(torch.tensor([1.0, -3.0]), torch.tensor([2.0, -3.0])) == pytest.approx(0.25)


def test_ssim_drops_with_noise_and_is_symmetric():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 48, 48)
    slight, heavy = x + 0.02 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)
    assert 1.0 > ssim(x, slight, 1.0) > ssim(x, heavy, 1.0)
    assert ssim(x, heavy, 1.0) == pytest.approx(ssim(heavy, x, 1.0))
    assert ssim(x, 1 - x, 1.0) < 0  # anti-correlated structure


def test_video_frames_are_folded_in():
    torch.manual_seed(0)
    v = torch.rand(1, 4, 5, 16, 16)  # [B, C, F, H, W]
    w = v.clone()
    w[:, :, 2] += 0.5  # one frame differs
    s = ssim(v, w, 1.0, frame_axis=2)
    per_frame = [ssim(v[:, :, f], w[:, :, f], 1.0) for f in range(5)]
    assert s == pytest.approx(sum(per_frame) / 5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes"):
        psnr(torch.zeros(2, 2), torch.zeros(3, 2))


def test_fidelity_bundle():
    x = torch.rand(1, 3, 16, 16)
    f = fidelity(x, x, decoded=True)
    assert f["psnr"] == math.inf and f["ssim"] == pytest.approx(1.0) and f["rel_l1"] == 0.0
    assert f["lpips"] is None or f["lpips"] == pytest.approx(0.0, abs=1e-6)
