"""The number formats of 6Bit-Diffusion (quant/formats.py): NVFP4 and INT8 packing, error bounds, the int8
GEMM paths, the Hadamard rotation and safetensors round trips.  CPU only, a few seconds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from accel.quant import formats as fm
from accel.quant.formats import (
    INT_MM_MAX_K,
    Int8Weight,
    NVFP4Weight,
    fake_quant_nvfp4,
    hadamard,
    int8_from_nvfp4,
    int8_linear,
    int_mm_accepts,
    nvfp4_linear,
    quantize_int8,
    quantize_nvfp4,
    rotate_blocks,
)

GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
F32_MAX = torch.finfo(torch.float32).max
BF16_MAX = torch.finfo(torch.bfloat16).max


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_scale(q: NVFP4Weight) -> torch.Tensor:
    """The stored per-element scale S = e4m3 * tensor_scale, fp64 [N, K]."""
    return (q.scales.to(torch.float64) * q.tensor_scale.double()).repeat_interleave(16, dim=1)


def nvfp4_bound(x: torch.Tensor, q: NVFP4Weight) -> torch.Tensor:
    """Per-element bound on |x - dequantize|: half the E2M1 grid step at |x| / S times S (0.25 S below 2 S,
    0.5 S below 4 S, S up to 6 S), the saturation |x| - 6 S past 6 S, |x| itself in blocks whose scale
    rounded to 0, plus fp32 rounding of the two scalings (2 ulps of |x| and one subnormal ulp)."""
    xa = x.double().abs()
    s = block_scale(q)
    v = torch.where(s > 0, xa / torch.where(s > 0, s, 1.0), torch.zeros_like(xa))
    half = torch.where(v < 2, 0.25, torch.where(v < 4, 0.5, 1.0))
    b = torch.where(v <= 6, half * s, xa - 6 * s)
    b = torch.where(s > 0, b, xa)
    return b + xa * 2.0**-22 + 2.0**-148


# ------------------------------------------------------------------------------------------------ E2M1


def test_e2m1_rounding_is_nearest_ties_to_even():
    v = torch.cat([torch.linspace(-8, 8, 4001, dtype=torch.float64), (GRID[1:] + GRID[:-1]) / 2, -(GRID[1:] + GRID[:-1]) / 2])
    got = fm._round_e2m1(v.float()).double()
    a = v.abs().clamp_max(6.0)
    d = (a.unsqueeze(-1) - GRID).abs()
    best = d.min(dim=-1, keepdim=True).values
    cand = (d - best).abs() < 1e-12  # the nearest grid points (two on a tie)
    idx = torch.arange(8).expand_as(cand)
    # ties go to the even code: magnitude indices 0, 2, 4, 6 are the codes with mantissa bit 0
    pick = torch.where(cand & (idx % 2 == 0), idx, torch.where(cand, idx + 100, 1000)).min(dim=-1).values
    pick = torch.where(pick >= 100, pick - 100, pick)
    want = torch.copysign(GRID[pick], v)
    assert torch.equal(got.abs(), want.abs())
    assert bool(((got == 0) | (torch.sign(got) == torch.sign(v))).all())
    # the documented ties, one by one
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0])
    assert fm._round_e2m1(ties).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]


def test_codes_pack_two_per_byte_low_nibble_even_column():
    # amax 6 * 448 in both blocks: tensor scale exactly 1, block scales exactly 448, so the codes are the
    # E2M1 codes of w / 448 and the round trip is exact
    w = torch.tensor([[0.5, -6.0] + [0.0] * 14, [6.0, 1.0, -0.5, 3.0] + [0.0] * 12]) * 448
    q = quantize_nvfp4(w)
    assert float(q.tensor_scale) == 1.0
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (2, 8)
    assert q.scales.dtype == torch.float8_e4m3fn and q.scales.shape == (2, 1)
    assert q.scales.float().tolist() == [[448.0], [448.0]]
    assert q.packed[0, 0].item() == (1 | (15 << 4))  # 0.5 = code 1 (low), -6 = code 8|7 (high)
    assert q.packed[1, 0].item() == (7 | (2 << 4)) and q.packed[1, 1].item() == ((8 | 1) | (5 << 4))
    assert torch.equal(q.codes()[1, :4], torch.tensor([7, 2, 9, 5], dtype=torch.uint8))
    assert torch.equal(q.dequantize(), w)
    # a negative element rounding to zero keeps its sign bit: -0 is code 8 (as torchao stores it)
    w[1, 4] = -0.2 * 448
    assert quantize_nvfp4(w).codes()[1, 4].item() == 8 and quantize_nvfp4(w).dequantize()[1, 4] == 0


# --------------------------------------------------------------------------------------- NVFP4 weights


def test_nvfp4_gaussian_error_and_elementwise_bound():
    w = torch.randn(512, 1024, generator=gen(1))
    q = quantize_nvfp4(w)
    d = q.dequantize()
    err = (d.double() - w.double()).abs()
    assert bool((err <= nvfp4_bound(w, q)).all())
    # The same bound in terms of the block amax, E4M3 rounding included: a normal E4M3 scale is within 2**-4
    # of (block amax / 6) / tensor_scale, so S <= 1.0625 * amax / 6 and the top element saturates by at
    # most 0.4 S: every error <= S <= 0.177 * block amax, and elements below 2 S within 0.25 S.
    bamax = w.abs().view(512, -1, 16).amax(-1).double().repeat_interleave(16, 1)
    normal = q.scales.float().repeat_interleave(16, 1) >= 2.0**-6
    assert bool(normal.all())  # Gaussian blocks are never 448/2**-6 times smaller than the tensor's amax
    assert bool((err <= 1.0625 / 6 * bamax * (1 + 1e-6)).all())
    v = w.double().abs() / block_scale(q)
    assert float(v.max()) <= 6 / (1 - 2**-4)
    rel = float((d.double() - w.double()).norm() / w.double().norm())
    assert 0.07 < rel < 0.11, rel  # measured 0.0958 (E2M1 alone, exact scales: about 0.09)
    # the E4M3 block scales do round: not every block amax / 6 is an E4M3 value times the tensor scale
    ideal = (w.abs().view(512, -1, 16).amax(-1) / q.tensor_scale) / 6
    assert not torch.equal(q.scales.float(), ideal)


def test_nvfp4_error_bound_can_fail():
    """The bound is tight enough to catch a quantizer that is off by one grid step."""
    w = torch.randn(64, 64, generator=gen(2))
    q = quantize_nvfp4(w)
    codes = q.codes()
    mag = codes & 7
    bumped = torch.where((mag > 0) & (mag < 7), codes + 1, codes)
    bad = NVFP4Weight((bumped[:, 0::2] | (bumped[:, 1::2] << 4)).contiguous(), q.scales, q.tensor_scale, q.shape)
    assert not bool(((bad.dequantize().double() - w.double()).abs() <= nvfp4_bound(w, q)).all())


def test_nvfp4_zeros_zero_rows_and_signed_zero():
    w = torch.randn(8, 64, generator=gen(3))
    w[2] = 0.0
    w[5, :16] = 0.0
    w[6, 3] = -0.0
    q = quantize_nvfp4(w)
    d = q.dequantize()
    assert bool((d[w == 0] == 0).all())
    assert bool((d[2] == 0).all()) and bool((q.scales[2].float() == 0).all())
    z = quantize_nvfp4(torch.zeros(3, 32))
    assert float(z.tensor_scale) == 0.0 and bool((z.dequantize() == 0).all()) and bool((z.packed == 0).all())


@pytest.mark.parametrize("dtype, big", [(torch.float32, F32_MAX), (torch.bfloat16, BF16_MAX)])
def test_nvfp4_largest_finite_values_do_not_overflow(dtype, big):
    w = torch.randn(4, 32, generator=gen(4)).to(dtype)
    w[0, :] = big
    w[1, 1] = -big
    w[3, 7] = big / 3
    q = quantize_nvfp4(w)
    for out_dtype in (torch.float32, dtype):
        d = q.dequantize(out_dtype)
        assert bool(torch.isfinite(d).all())
    d = q.dequantize()
    assert float(d[0].min()) >= big * (1 - 2**-20) and float(d[1, 1]) <= -big * (1 - 2**-20)
    assert bool(((d.double() - w.double()).abs() <= nvfp4_bound(w.float(), q)).all())
    assert bool(torch.isfinite(fake_quant_nvfp4(w)).all())


@pytest.mark.parametrize("magnitude", [1e-39, 1e-41, 1e-44])
def test_nvfp4_subnormal_inputs(magnitude):
    w = torch.randn(4, 64, generator=gen(5)) * magnitude
    assert bool((w.abs() < torch.finfo(torch.float32).smallest_normal).all())
    q = quantize_nvfp4(w)
    d = q.dequantize()
    assert float(q.tensor_scale) > 0 and bool(torch.isfinite(d).all())
    assert bool(((d.double() - w.double()).abs() <= nvfp4_bound(w, q)).all())
    assert float((d.double() - w.double()).norm() / w.double().norm()) < 0.3
    # the tensor scale keeps every block scale within E4M3 (<= 448) even where amax / 2688 underflows
    assert float(q.scales.float().max()) <= 448


def test_nvfp4_refusals():
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.randn(4, 32)
        w[1, 3] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            quantize_nvfp4(w)
        with pytest.raises(ValueError, match="NaN/inf"):
            quantize_int8(w)
    with pytest.raises(ValueError, match=r"\(4, 24\)"):
        quantize_nvfp4(torch.randn(4, 24))
    with pytest.raises(ValueError, match="2-D"):
        quantize_nvfp4(torch.randn(32))
    with pytest.raises(ValueError, match="2-D"):
        quantize_nvfp4(torch.randn(0, 32))
    with pytest.raises(ValueError, match="floating"):
        quantize_nvfp4(torch.ones(4, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="multiple of 16"):
        fake_quant_nvfp4(torch.randn(2, 3, 40))
    with pytest.raises(ValueError, match="scales"):
        NVFP4Weight(torch.zeros(2, 8, dtype=torch.uint8), torch.zeros(2, 2), torch.tensor(1.0), (2, 16))


def test_nvfp4_packed_storage_is_4_5_bits_per_weight():
    w = torch.randn(4096, 4096, generator=gen(6), dtype=torch.bfloat16)
    q = quantize_nvfp4(w)
    assert q.nbytes == 4096 * 4096 // 2 + 4096 * 4096 // 16 + 4
    assert w.nbytes / q.nbytes >= 3.5
    # the fields own exactly these bytes: no view keeps a larger temporary alive
    held = sum(t.untyped_storage().nbytes() for t in (q.packed, q.scales, q.tensor_scale))
    assert held == q.nbytes
    i = quantize_int8(w[:256])
    assert i.nbytes == 256 * 4096 + 4 * 256
    assert sum(t.untyped_storage().nbytes() for t in (i.q, i.scale)) == i.nbytes


# ------------------------------------------------------------------------------------ NVFP4 activations


def test_fake_quant_matches_weight_quantization_and_error():
    x = torch.randn(3, 40, 256, generator=gen(7))
    y = fake_quant_nvfp4(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    ref = quantize_nvfp4(x.reshape(-1, 256))
    assert torch.equal(y.reshape(-1, 256), ref.dequantize())
    assert bool(((y.reshape(-1, 256).double() - x.reshape(-1, 256).double()).abs() <= nvfp4_bound(x.reshape(-1, 256), ref)).all())
    rel = float((y - x).norm() / x.norm())
    assert 0.07 < rel < 0.11, rel
    xb = x.bfloat16()
    yb = fake_quant_nvfp4(xb)
    assert yb.dtype == torch.bfloat16 and yb.shape == x.shape
    assert float((yb.float() - xb.float()).norm() / xb.float().norm()) < 0.11
    assert fake_quant_nvfp4(torch.randn(0, 32)).shape == (0, 32)


def test_fake_quant_non_finite_pass_through():
    x = torch.randn(4, 32, generator=gen(8))
    x[1, 5] = float("inf")
    x[2, 20] = float("nan")
    y = fake_quant_nvfp4(x)
    assert y[1, 5] == float("inf") and math.isnan(float(y[2, 20]))
    clean = x.clone()
    clean[1, 5] = 0.0
    clean[2, 20] = 0.0
    yc = fake_quant_nvfp4(clean)
    finite = torch.isfinite(x)
    assert torch.equal(y[finite], yc[finite])  # the others quantize as if the non-finite ones were 0


# ----------------------------------------------------------------------------------------------- INT8


def test_int8_round_trip_within_half_a_step():
    w = torch.randn(64, 300, generator=gen(9)) * torch.logspace(-3, 2, 64).unsqueeze(1)
    w[7] = 0.0
    i = quantize_int8(w)
    assert i.q.dtype == torch.int8 and i.scale.dtype == torch.float32 and i.scale.shape == (64,)
    assert int(i.q.abs().max()) == 127 and int(i.q.min()) >= -127
    err = (i.dequantize().double() - w.double()).abs()
    s = i.scale.double().unsqueeze(1)
    assert bool((err <= s / 2 + w.double().abs() * 2.0**-23).all())
    assert bool((i.dequantize()[7] == 0).all()) and float(i.scale[7]) == 0.0
    for big, dt in ((F32_MAX, torch.float32), (BF16_MAX, torch.bfloat16)):
        wb = torch.full((2, 16), big, dtype=dt)
        wb[1, 3] = -big
        assert bool(torch.isfinite(quantize_int8(wb).dequantize(dt)).all())
    ws = torch.randn(3, 50, generator=gen(10)) * 1e-43
    iq = quantize_int8(ws)
    assert bool(((iq.dequantize().double() - ws.double()).abs() <= iq.scale.double().unsqueeze(1) / 2 + 2.0**-149).all())


def test_int8_from_nvfp4():
    w = torch.randn(128, 256, generator=gen(11))
    q = quantize_nvfp4(w)
    i = int8_from_nvfp4(q)
    dq = q.dequantize()
    # NVFP4 values sit on coarse grids, so exact ties (error exactly scale / 2) happen: fp32 slack on |w|
    err = (i.dequantize().double() - dq.double()).abs()
    assert bool((err <= i.scale.double().unsqueeze(1) / 2 + dq.double().abs() * 2.0**-23).all())
    assert float(err.max()) > 0.4 * float(i.scale.min())  # the cast to int8 does lose something
    rel = float((i.dequantize() - w).norm() / w.norm())
    assert rel < 0.11, rel


def w8a8_bound(x2: torch.Tensor, w: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """|x w^T - xq wq^T| <= sum_k |x_k| |dw_k| + |w_k| |dx_k| + |dx_k| |dw_k| with |dx| <= sx / 2 and
    |dw| <= sw / 2, plus fp32 accumulation: a per-element bound [M, N]."""
    xd, wd = x2.double(), w.double()
    sx, sw = xs.double().unsqueeze(1), ws.double().unsqueeze(0)
    k = x2.shape[1]
    b = xd.abs().sum(1, keepdim=True) * sw / 2 + sx / 2 * wd.abs().sum(1).unsqueeze(0) + k * sx * sw / 4
    return b + 1e-5 * (xd.abs() @ wd.abs().T)


def test_int8_linear_int_mm_path(monkeypatch):
    calls = []
    real = torch._int_mm

    def spy(a, b):
        calls.append((a.dtype, b.dtype, tuple(a.shape), tuple(b.shape)))
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", spy)
    w = torch.randn(96, 256, generator=gen(12))
    bias = torch.randn(96, generator=gen(13))
    x = torch.randn(2, 37, 256, generator=gen(14))
    i = quantize_int8(w)
    out, path = int8_linear(x, i, bias)
    assert path == "int8-int-mm" and calls == [(torch.int8, torch.int8, (74, 256), (256, 96))]
    assert out.shape == (2, 37, 96) and out.dtype == torch.float32
    ref = F.linear(x, w, bias)
    rel = float((out - ref).norm() / ref.norm())
    # per-row int8 of Gaussian data: step = amax / 127 ~ 3.3 sigma / 127, rms error step / sqrt(12) ~ 0.0075
    # relative per operand, so about sqrt(2) * 0.0075 ~ 0.011 for the product (measured 0.0105)
    assert rel < 1.5e-2, rel
    x2 = x.reshape(-1, 256)
    xq, sx = fm._int8_rows(x2)
    assert bool(((out.reshape(-1, 96) - bias - x2 @ w.T).abs().double() <= w8a8_bound(x2, w, sx, i.scale)).all())
    # the int32 GEMM is exact: the output is the integer product rescaled, to fp32 rounding
    exact = (xq.long() @ i.q.long().T).double() * sx.double().unsqueeze(1) * i.scale.double() + bias.double()
    assert torch.allclose(out.reshape(-1, 96).double(), exact, rtol=1e-6, atol=1e-5)
    # bias None, bf16 in -> bf16 out, 2-D, M <= 16 (CPU _int_mm takes it)
    o2, p2 = int8_linear(x2[:5].bfloat16(), i, None)
    assert p2 == "int8-int-mm" and o2.dtype == torch.bfloat16 and o2.shape == (5, 96)
    ref2 = F.linear(x2[:5].bfloat16().float(), w)
    assert float((o2.float() - ref2).norm() / ref2.norm()) < 2e-2


def test_int8_linear_dequant_path_on_a_shape_int_mm_rejects():
    k = INT_MM_MAX_K + 8  # 127 * 127 * K would overflow the int32 accumulator
    assert not int_mm_accepts(3, k, 8, "cpu")
    w = torch.randn(8, k, generator=gen(15))
    x = torch.randn(3, k, generator=gen(16))
    bias = torch.randn(8, generator=gen(17))
    i = quantize_int8(w)
    out, path = int8_linear(x, i, bias)
    assert path == "int8-dequant" and out.shape == (3, 8)
    ref = F.linear(x, w, bias)
    # a Gaussian row of 133k elements has amax ~ 4.9 sigma: sqrt(2) * 4.9 / (127 * sqrt(12)) ~ 0.016
    assert float((out - ref).norm() / ref.norm()) < 2.5e-2
    xq, sx = fm._int8_rows(x)
    assert bool(((out - bias - x @ w.T).abs().double() <= w8a8_bound(x, w, sx, i.scale)).all())


def test_int_mm_constraints():
    # CPU (torch 2.13): any 2-D int8 shape; CUDA: M > 16, K and N positive multiples of 8
    for m, k, n in ((1, 3, 5), (16, 8, 8), (17, 15, 9), (0, 8, 8)):
        assert int_mm_accepts(m, k, n, "cpu")
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        assert torch.equal(torch._int_mm(a, b.t()), (a.int() @ b.int().t()))
    assert int_mm_accepts(17, 16, 8, "cuda")
    assert not int_mm_accepts(16, 16, 8, "cuda")
    assert not int_mm_accepts(32, 12, 8, "cuda") and not int_mm_accepts(32, 16, 12, "cuda")
    assert not int_mm_accepts(32, INT_MM_MAX_K + 1, 8, "cpu")
    assert INT_MM_MAX_K * 127 * 127 <= 2**31 - 1 < (INT_MM_MAX_K + 1) * 127 * 127
    assert not int_mm_accepts(32, 16, 8, "meta")


def test_int8_linear_non_finite_rows_and_refusals():
    w = torch.randn(16, 32, generator=gen(18))
    i = quantize_int8(w)
    x = torch.randn(20, 32, generator=gen(19))
    x[3, 4] = float("inf")
    x[7, 0] = float("nan")
    out, _ = int8_linear(x, i, None)
    bad = torch.zeros(20, dtype=torch.bool)
    bad[[3, 7]] = True
    assert bool(out[bad].isnan().all()) and bool(torch.isfinite(out[~bad]).all())
    with pytest.raises(ValueError, match="32"):
        int8_linear(torch.randn(4, 31), i, None)
    with pytest.raises(ValueError, match="bias"):
        int8_linear(torch.randn(4, 32), i, torch.zeros(15))


# ------------------------------------------------------------------------------------------ nvfp4_linear


def test_nvfp4_linear():
    w = torch.randn(64, 128, generator=gen(20))
    bias = torch.randn(64, generator=gen(21))
    x = torch.randn(2, 24, 128, generator=gen(22))
    q = quantize_nvfp4(w)
    out, path = nvfp4_linear(x, q, bias)
    assert path == "nvfp4-dequant" and out.shape == (2, 24, 64)
    assert torch.allclose(out, F.linear(fake_quant_nvfp4(x), q.dequantize(), bias), atol=1e-5)
    ref = F.linear(x, w, bias)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.16, rel  # two ~0.096 errors in quadrature: ~0.135
    out_n, path_n = nvfp4_linear(x, q, None, activations="none")
    assert path_n == "nvfp4-dequant" and torch.allclose(out_n, x @ q.dequantize().T, atol=1e-5)
    assert float((out_n - (ref - bias)).norm() / (ref - bias).norm()) < 0.11
    ob, _ = nvfp4_linear(x.bfloat16(), q, bias.bfloat16())
    assert ob.dtype == torch.bfloat16 and ob.shape == (2, 24, 64)
    with pytest.raises(ValueError, match="activations"):
        nvfp4_linear(x, q, None, activations="int8")
    with pytest.raises(ValueError, match="128"):
        nvfp4_linear(torch.randn(3, 64), q, None)


# ----------------------------------------------------------------------------------------------- rotation


def test_hadamard():
    for n in (1, 2, 16, 128):
        h = hadamard(n)
        assert h.shape == (n, n) and h.dtype == torch.float32
        assert torch.allclose(h @ h.T, torch.eye(n), atol=1e-6)
        assert torch.equal(h, h.T) and bool((h.abs() == h.abs()[0, 0]).all())
    h64 = hadamard(8, torch.float64)
    assert torch.allclose(h64 @ h64.T, torch.eye(8, dtype=torch.float64), atol=1e-15)
    hadamard(4)[0, 0] = 5.0  # a fresh copy: the cache stays clean
    assert float(hadamard(4)[0, 0]) == 0.5
    for bad in (0, 3, 12, -4):
        with pytest.raises(ValueError, match="power of two"):
            hadamard(bad)


def test_rotate_blocks_is_orthogonal_and_preserves_linear():
    x = torch.randn(2, 10, 512, generator=gen(23))
    w = torch.randn(48, 512, generator=gen(24))
    xr = rotate_blocks(x)
    assert xr.shape == x.shape and xr.dtype == x.dtype
    # R is symmetric, so R R^T == R R: rotating twice gives x back
    assert torch.allclose(rotate_blocks(xr), x, atol=1e-5)
    assert torch.allclose(xr.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    # block-diagonal: each 128-block mixes only within itself
    e = torch.zeros(1, 512)
    e[0, 130] = 1.0
    re = rotate_blocks(e)
    assert bool((re[0, :128] == 0).all()) and bool((re[0, 256:] == 0).all())
    assert torch.allclose(re[0, 128:256], hadamard(128)[2])
    ref = x @ w.T
    got = rotate_blocks(x) @ rotate_blocks(w).T
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-5)
    assert rotate_blocks(x.bfloat16(), 64).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="multiple"):
        rotate_blocks(torch.randn(3, 96), 64)
    with pytest.raises(ValueError, match="power of two"):
        rotate_blocks(torch.randn(3, 96), 48)


# -------------------------------------------------------------------------------------------- safetensors


def test_state_dicts_round_trip_bit_exact_through_safetensors(tmp_path):
    w = torch.randn(32, 64, generator=gen(27))
    w[3, :16] = 1e-3  # a small block: a subnormal E4M3 scale
    q = quantize_nvfp4(w)
    i = quantize_int8(w)
    i2 = int8_from_nvfp4(q)
    sd = {**q.state_dict("blk.0.w4."), **i.state_dict("blk.0.w8."), **i2.state_dict("x.")}
    assert sd["blk.0.w4.scales"].dtype == torch.float8_e4m3fn and sd["blk.0.w4.tensor_scale"].shape == ()
    path = tmp_path / "q.safetensors"
    save_file(sd, str(path))
    back = load_file(str(path))
    q2 = NVFP4Weight.from_state_dict(back, "blk.0.w4.")
    assert q2.shape == q.shape and q2.nbytes == q.nbytes
    assert torch.equal(q2.packed, q.packed)
    assert torch.equal(q2.scales.view(torch.uint8), q.scales.view(torch.uint8))
    assert torch.equal(q2.tensor_scale.view(torch.int32), q.tensor_scale.view(torch.int32))
    assert torch.equal(q2.dequantize(), q.dequantize())
    j = Int8Weight.from_state_dict(back, "blk.0.w8.")
    assert torch.equal(j.q, i.q) and torch.equal(j.scale.view(torch.int32), i.scale.view(torch.int32))
    assert torch.equal(Int8Weight.from_state_dict(back, "x.").dequantize(), i2.dequantize())
    # E4M3 scales stored as their uint8 bytes load too
    alt = {**q.state_dict(), "scales": q.scales.view(torch.uint8)}
    save_file(alt, str(tmp_path / "u8.safetensors"))
    assert torch.equal(NVFP4Weight.from_state_dict(load_file(str(tmp_path / "u8.safetensors"))).dequantize(), q.dequantize())
    with pytest.raises(KeyError, match="tensor_scale"):
        NVFP4Weight.from_state_dict({"packed": q.packed, "scales": q.scales})
    with pytest.raises(ValueError):
        NVFP4Weight.from_state_dict({"packed": q.packed, "scales": q.scales[:, :1], "tensor_scale": q.tensor_scale})
    with pytest.raises(KeyError):
        Int8Weight.from_state_dict({"q": i.q})
    with pytest.raises(ValueError):
        Int8Weight.from_state_dict({"q": i.q, "scale": i.scale.double()})


# ------------------------------------------------------------------------------------ torchao agreement


def test_layout_and_codes_agree_with_torchao_nvfp4_quantize():
    """torchao's reference NVFP4 quantizer (when installed): same tensor scale, same E4M3 block scales (but
    for all-zero blocks, which torchao clamps up to 2**-6 and these keep at 0), same packed codes and
    nibble order for fp32 inputs; its output read as an NVFP4Weight dequantizes within the same bound."""
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    w = torch.randn(256, 512, generator=gen(30))
    w[:, 9] *= 20
    w[3] = 0.0
    q = quantize_nvfp4(w)
    ts = nv.per_tensor_amax_to_scale(w.abs().amax())
    scales, packed = nv.nvfp4_quantize(w, 16, ts)
    assert torch.equal(ts, q.tensor_scale)
    same = scales.view(torch.uint8) == q.scales.view(torch.uint8)
    assert bool(same[torch.arange(256) != 3].all()) and not bool(same[3].any())
    rows = torch.arange(256) != 3
    assert torch.equal(packed.view(torch.uint8)[rows], q.packed[rows])
    theirs = NVFP4Weight(packed.view(torch.uint8).contiguous(), scales.contiguous(), ts.reshape(()), (256, 512))
    assert torch.equal(theirs.dequantize()[rows], q.dequantize()[rows])
    assert bool((theirs.dequantize()[3] == 0).all())
