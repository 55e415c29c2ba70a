"""PISA attention (sparse_attn/pisa.py, pisa_triton.py) against its float64 reference and dense attention.

The CPU paths and the Triton kernel (run by the Triton interpreter in a subprocess, as in
test_sparse_attn_triton.py) are checked against `pisa_reference`; the reference itself is pinned by the
cases where PISA must equal dense attention (every block exact; keys constant inside each block, where
the Taylor expansion is exact), and the approximation's worth by its errors on smooth inputs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import accel.sparse_attn as sa
from accel.sparse_attn import pisa
from accel.sparse_attn.tiles import num_tiles

CPU_BACKENDS = ["cpu-kernel", "torch"]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(B, H, Sq, Skv, D, dtype=torch.float32, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, s, D, generator=g) for s in (Sq, Skv, Skv))
    return (q * spread).to(dtype), (k * spread).to(dtype), v.to(dtype)


def _smooth(B, H, S, D, seed=0, jitter=0.1):
    """Keys and queries that drift slowly along the sequence (low-frequency features) with the same small
    jitter in every block, values linear in the keys: every block has about the same first-order moment,
    the regime PISA's shared h̄ is made for."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S)[:, None] / S
    base = torch.sin(2 * math.pi * 0.2 * torch.rand(D, generator=g) * t + 6.3 * torch.rand(D, generator=g))
    q = 2 * base + jitter * torch.randn(B, H, S, D, generator=g)
    k = 2 * base + jitter * torch.randn(B, H, S, D, generator=g)
    v = k @ (torch.randn(B, H, D, D, generator=g) / math.sqrt(D)) + 0.1 * torch.randn(B, H, S, D, generator=g)
    return q, k, v


def _dense(q, k, v, scale=None):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=scale)


@pytest.mark.parametrize("order", pisa.ORDERS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "B,H,Sq,Skv,D,block,dtype",
    [
        (1, 2, 256, 256, 64, 64, torch.float32),  # whole blocks
        (2, 1, 200, 137, 40, 32, torch.float32),  # partial last blocks, Sq != Skv, odd head dim
        (1, 2, 100, 300, 32, (32, 16), torch.float16),  # separate block sizes, fp16 inputs
        (1, 1, 130, 130, 16, 16, torch.bfloat16),
    ],
)
def test_cpu_paths_match_reference(order, backend, B, H, Sq, Skv, D, block, dtype):
    q, k, v = _inputs(B, H, Sq, Skv, D, dtype)
    index = pisa.route(q, k, v, 0.3, block)
    with sa.capture() as seen:
        out = sa.pisa_attention(q, k, v, order=order, index=index, backend=backend)
    ref = sa.pisa_reference(q, k, v, index, order)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    assert seen[-1].kernel == f"pisa+{backend}"


def test_routed_call_uses_sinks_and_matches_reference():
    q, k, v = _inputs(1, 2, 320, 320, 32, seed=3)
    out, lse = sa.pisa_attention(q, k, v, density=0.2, tile_size=32, sink_tiles=(-1,), return_lse=True)
    index = pisa.route(q, k, v, 0.2, 32, sink_tiles=(-1,))
    dense = index.to_dense()
    assert dense[..., 9].all() and dense.diagonal(dim1=-2, dim2=-1).all()  # sink and diagonal are exact
    torch.testing.assert_close(out.double(), sa.pisa_reference(q, k, v, index), atol=1e-5, rtol=0)
    assert lse.shape == (1, 2, 320) and lse.dtype == torch.float32 and torch.isfinite(lse).all()


def test_bshd_wrapper():
    q, k, v = _inputs(2, 3, 96, 80, 16, seed=4)
    index = pisa.route(q, k, v, 0.5, 16)
    out = sa.pisa_attention(q, k, v, index=index)
    out_bshd = sa.pisa_attention_bshd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), index=index)
    torch.testing.assert_close(out_bshd.transpose(1, 2), out, atol=1e-6, rtol=0)


@pytest.mark.parametrize("order", pisa.ORDERS)
def test_density_one_is_dense_attention(order):
    q, k, v = _inputs(1, 2, 150, 150, 32, seed=1)
    out = sa.pisa_attention(q, k, v, density=1.0, tile_size=32, order=order)
    torch.testing.assert_close(out.double(), _dense(q, k, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", pisa.ORDERS)
def test_taylor_is_exact_when_keys_equal_their_block_mean(order):
    """Keys constant inside each block (the last one partial): k == k̄, so exp(s q.k̄) B_j and the value
    sums reproduce the block exactly, whatever is selected."""
    B, H, S, D, block = 1, 2, 200, 16, 16
    q, _, v = _inputs(B, H, S, S, D, seed=2)
    k_blocks = torch.randn(B, H, num_tiles(S, block), D, generator=torch.Generator().manual_seed(5))
    k = k_blocks.repeat_interleave(block, dim=2)[:, :, :S]
    index = sa.random_tiles(B, H, S, S, block, 0.2, generator=torch.Generator().manual_seed(6))
    for backend in CPU_BACKENDS:
        out = sa.pisa_attention(q, k, v, order=order, index=index, backend=backend)
        torch.testing.assert_close(out.double(), _dense(q, k, v), atol=1e-5, rtol=0)
    ref = sa.pisa_reference(q, k, v, index, order)
    torch.testing.assert_close(ref, _dense(q, k, v), atol=1e-12, rtol=0)


def test_reference_first_order_term_is_the_taylor_term():
    """Two key blocks, block 0 exact, block 1 approximated: the reference equals the formulas written out
    by hand (zeroth order e^{s q.k̄} V̂, first order G s q.h̄ with h̄ the per-token mean moment over BOTH
    blocks, denominator with B_j e^{s q.k̄})."""
    q, k, v = _inputs(1, 1, 32, 64, 8, seed=7, spread=0.3)
    index = sa.TileIndex(torch.tensor([[[1]]]), torch.tensor([[[[0]]]]), 32, 32, 32, 64)  # key tile 1: approximated
    s = 8**-0.5
    qd, kd, vd = q.double()[0, 0], k.double()[0, 0], v.double()[0, 0]
    kbar = kd[32:].mean(0)
    kbar0 = kd[:32].mean(0)
    h_bar = ((kd[:32] - kbar0).T @ vd[:32] + (kd[32:] - kbar).T @ vd[32:]) / 64
    w = torch.exp(s * qd @ kbar)  # [32]
    exact_num = torch.exp(s * qd @ kd[:32].T) @ vd[:32]
    exact_den = torch.exp(s * qd @ kd[:32].T).sum(-1)
    num_h = exact_num + w[:, None] * vd[32:].sum(0) + (w * 32)[:, None] * (s * qd @ h_bar)
    den = exact_den + 32 * w
    expected = num_h / den[:, None]
    got = sa.pisa_reference(q, k, v, index, "hybrid")[0, 0]
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_hybrid_beats_zeroth_beats_keep_or_drop_on_smooth_inputs():
    for seed in range(2):
        q, k, v = _smooth(1, 2, 1024, 32, seed=seed)
        err = pisa.relative_errors(q, k, v, 0.125, tile_size=32)
        assert err["hybrid"] < 0.5 * err["zeroth"], err
        assert err["zeroth"] < 0.2 * err["keep_or_drop"], err


def _late_max_case(dtype=torch.float32, boost=2.0):
    """Query block 0 selects only key block 0, whose scores are low; the last key block (approximated, in
    the last pooled chunk) scores far higher: the running max rises late, and the hybrid term's tail mass
    must be rescaled with it."""
    B, H, S, D, block = 1, 1, 16 * 80, 16, 16
    g = torch.Generator().manual_seed(8)
    q = torch.randn(B, H, S, D, generator=g) * 0.2
    k = torch.randn(B, H, S, D, generator=g) * 0.2
    v = torch.randn(B, H, S, D, generator=g)
    direction = torch.randn(D, generator=g)
    q[:, :, :block] += boost * direction
    k[:, :, -block:] += boost * direction  # block 79: high pooled score for query block 0
    k[:, :, -block:] += 0.3 * torch.randn(block, D, generator=g)  # and a first-order moment of its own
    v[:, :, -block:] += 3.0
    nq = num_tiles(S, block)
    idx = torch.arange(nq, dtype=torch.int32).view(1, 1, nq, 1)  # query tile 0 -> key tile 0; the diagonal
    index = sa.TileIndex(torch.ones(B, H, nq, dtype=torch.int32), idx, block, block, S, S)
    return q.to(dtype), k.to(dtype), v.to(dtype), index


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_running_max_that_rises_late(backend):
    q, k, v, index = _late_max_case()
    ref = sa.pisa_reference(q, k, v, index, "hybrid")
    out = sa.pisa_attention(q, k, v, index=index, backend=backend)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    # the late tile dominates query tile 0: a kernel dropping or mis-scaling it is far off
    assert (ref[0, 0, :16].mean() - ref[0, 0, 16:].mean()).abs() > 1.0


def test_cpu_path_far_beyond_the_exact_lse(monkeypatch):
    """An approximated block scoring far above the exact part's LSE (e^{z - lse} would overflow fp32): the
    fused C++ kernel's running max covers it; the PyTorch split path must take the exact running max as its
    reference for those rows."""
    q, k, v, index = _late_max_case(boost=6.0)
    ref = sa.pisa_reference(q, k, v, index, "hybrid")
    for backend in CPU_BACKENDS:
        out = sa.pisa_attention(q, k, v, index=index, backend=backend)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    monkeypatch.setattr(pisa, "EXP_HEADROOM", float("inf"))  # without the guard: the LSE as reference
    out = sa.pisa_attention(q, k, v, index=index, backend="torch")
    assert not torch.isfinite(out).all()


def test_statistics_are_streamed_and_fp32():
    """h̄ from one product over the sequence equals the mean of the per-block moments; fp16 inputs give
    fp32 statistics; the covariance deviation matches a direct per-block computation (chunked)."""
    q, k, v = _inputs(2, 1, 70, 70, 8, torch.float16, seed=10)
    stats = pisa.key_tile_stats(k, v, 16)
    kd, vd = k.double(), v.double()
    per_block = []
    for j in range(5):
        kj, vj = kd[:, :, 16 * j:16 * j + 16], vd[:, :, 16 * j:16 * j + 16]
        per_block.append((kj - kj.mean(2, keepdim=True)).transpose(-1, -2) @ vj)
    h = torch.stack(per_block, 2)  # [B, H, Nk, D, D]
    assert all(t.dtype == torch.float32 for t in (stats.key_means, stats.value_sums, stats.moment))
    torch.testing.assert_close(stats.moment.double(), h.sum(2) / 70, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.counts, torch.tensor([16.0, 16, 16, 16, 6]))
    deviation = pisa.moment_deviation(k, v, 16, chunk_elements=64)  # 1 block per chunk
    expected = (h - h.mean(2, keepdim=True)).flatten(3).norm(dim=-1)
    torch.testing.assert_close(deviation.double(), expected, atol=1e-4, rtol=1e-4)


def test_covariance_routing_prefers_blocks_the_shared_moment_misses():
    q, k, v = _inputs(1, 1, 256, 256, 16, seed=11)
    v[:, :, 128:144] = 40 * (k[:, :, 128:144] - k[:, :, 128:144].mean(2, keepdim=True))  # block 8: huge H_8
    pooled = pisa.route(q, k, v, 1 / 16, 16, "pooled")
    index = pisa.route(q, k, v, 1 / 16, 16, "covariance")
    assert index.to_dense()[..., 8].all() and torch.equal(index.counts, pooled.counts)  # same counts, tile 8 everywhere
    out = sa.pisa_attention(q, k, v, density=1 / 16, tile_size=16, routing="covariance")
    torch.testing.assert_close(out.double(), sa.pisa_reference(q, k, v, index), atol=1e-5, rtol=0)


def test_path_profiler_range_and_forward_only():
    q, k, v = _inputs(1, 1, 64, 64, 16)
    with torch.profiler.profile() as prof, sa.capture() as seen:
        sa.pisa_attention(q, k, v, tile_size=16)
    names = {e.name for e in prof.events()}
    assert pisa.PROFILER_RANGE in names and pisa.PROFILER_RANGE.startswith("accel::attention")
    path = seen[-1]
    assert path.kernel == "pisa+cpu-kernel" and path.precision == "fp32" and path.device == "cpu"
    with pytest.raises(NotImplementedError, match="forward-only"):
        sa.pisa_attention(q.requires_grad_(), k, v, tile_size=16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"order": "first"}, "order"),
        ({"routing": "topp"}, "routing"),
        ({"backend": "cuda"}, "backend"),
        ({"tile_size": 48}, "tile_size"),
        ({"sink_tiles": ("text",)}, "sink_tiles"),
        ({"scale": -1.0}, "scale"),
        ({"index": sa.random_tiles(1, 1, 64, 128, 16, 0.5)}, "index is for 64 query / 128 key tokens"),
    ],
)
def test_bad_options_raise(kwargs, match):
    q, k, v = _inputs(1, 1, 64, 64, 16)
    kwargs = {"tile_size": 16, **kwargs}
    with pytest.raises(ValueError, match=match):
        sa.pisa_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="order"):
        sa.pisa_reference(q, k, v, sa.random_tiles(1, 1, 64, 64, 16, 0.5), "second")


# -- the fused Triton kernel, under the interpreter ----------------------------------------------------
TRITON_CASES = [
    # B, H, Sq, Skv, D, block size, dtype, density
    (1, 2, 100, 70, 32, 32, "float32", 0.3),  # partial blocks, Sq != Skv
    (2, 1, 64, 64, 16, 16, "float32", 0.5),
    (1, 1, 50, 80, 24, (16, 32), "float16", 0.4),  # head dim padded to 32, separate block sizes
    (1, 2, 96, 96, 64, 32, "float16", 1.0),  # every block exact
]
TRITON_TOL = {"float32": 1e-5, "float16": 2e-3}


def _triton_child() -> None:
    """Runs under TRITON_INTERPRET=1: the fused kernel against pisa_reference."""
    from accel.sparse_attn import pisa_triton, triton_kernel

    pisa_triton.BLOCK_G = 16  # several pooled chunks even at these sizes (the late-max case needs 5)
    results = []
    cases = [(c, order) for c in TRITON_CASES for order in pisa.ORDERS]
    for i, ((B, H, Sq, Skv, D, block, dtype, density), order) in enumerate(cases):
        block = block if isinstance(block, int) else tuple(block)
        q, k, v = _inputs(B, H, Sq, Skv, D, getattr(torch, dtype), seed=i)
        index = pisa.route(q, k, v, density, block)
        with sa.capture() as seen:
            out = sa.pisa_attention(q, k, v, order=order, index=index, backend="triton")
        ref = sa.pisa_reference(q, k, v, index, order)
        path = seen[-1]
        results.append({"err": float((out.double() - ref).abs().max()), "dtype": dtype, "path": path.kernel,
                        "out_dtype": str(out.dtype).removeprefix("torch."),
                        "interpreted": triton_kernel.INTERPRETED})
    q, k, v, index = _late_max_case()
    with sa.capture() as seen:
        out = sa.pisa_attention(q, k, v, index=index, backend="triton")
    ref = sa.pisa_reference(q, k, v, index, "hybrid")
    results.append({"err": float((out.double() - ref).abs().max()), "dtype": "float32", "path": seen[-1].kernel,
                    "out_dtype": "float32", "interpreted": triton_kernel.INTERPRETED})
    print(json.dumps(results))


@pytest.mark.slow
def test_triton_kernel_under_the_interpreter(triton_interpreter):
    results = triton_interpreter()
    assert len(results) == 2 * len(TRITON_CASES) + 1
    for r in results:
        assert r["interpreted"] and r["path"] == "pisa+triton", r
        assert r["out_dtype"] == r["dtype"], r
        assert r["err"] < TRITON_TOL[r["dtype"]], r


if __name__ == "__main__":
    _triton_child()
