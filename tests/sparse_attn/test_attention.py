"""Block-sparse attention on CPU: both CPU paths against dense SDPA with the equivalent boolean mask."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import accel.sparse_attn as sa
from accel.sparse_attn import paths

CPU_BACKENDS = ["cpu-kernel", "torch"]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(B, H, Sq, Skv, D, dtype=torch.float32, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, s, D, generator=g) for s in (Sq, Skv, Skv))
    return (q * spread).to(dtype), (k * spread).to(dtype), v.to(dtype)


def reference(q, k, v, index, scale=None):
    """(out, lse) in float64 from the dense token mask; rows without keys: 0 and -inf."""
    mask = index.token_mask().expand(q.shape[0], q.shape[1], -1, -1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    has_keys = mask.any(dim=-1, keepdim=True)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.where(has_keys, out, 0.0), torch.logsumexp(scores, dim=-1)


def _assert_lse(lse, ref):
    assert lse.dtype == torch.float32
    assert torch.equal(torch.isinf(lse), torch.isinf(ref))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(lse[finite].double(), ref[finite], atol=1e-5, rtol=1e-5)


def _one_path(fn):
    """(fn's result, the one path it recorded)."""
    with sa.capture() as seen:
        result = fn()
    assert len(seen) == 1, seen
    return result, seen[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "B,H,Sq,Skv,D,tile",
    [
        (1, 2, 256, 256, 64, 64),  # whole tiles
        (2, 1, 200, 137, 64, 64),  # partial last tiles, Sq != Skv
        (1, 3, 100, 300, 40, (32, 16)),  # head dim not a multiple of 16, separate tile sizes
        (1, 1, 64, 64, 128, 16),
    ],
)
def test_matches_masked_sdpa(backend, B, H, Sq, Skv, D, tile):
    q, k, v = _inputs(B, H, Sq, Skv, D)
    index = sa.random_tiles(B, H, Sq, Skv, tile, 0.4, generator=torch.Generator().manual_seed(1))
    (out, lse), path = _one_path(lambda: sa.block_sparse_attention(q, k, v, index, return_lse=True, backend=backend))
    ref_out, ref_lse = reference(q, k, v, index)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), ref_out, atol=TOL[torch.float32], rtol=0)
    _assert_lse(lse, ref_lse)
    assert path.kernel == backend


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(backend, dtype):
    q, k, v = _inputs(1, 2, 160, 160, 64, dtype)
    index = sa.random_tiles(1, 2, 160, 160, 64, 0.5, generator=torch.Generator().manual_seed(2))
    out, path = _one_path(lambda: sa.block_sparse_attention(q, k, v, index, backend=backend))
    ref_out, _ = reference(q, k, v, index)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, atol=TOL[dtype], rtol=0)
    assert path.precision == f"{'fp16' if dtype == torch.float16 else 'bf16'} inputs, fp32 compute"


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), Sq=st.integers(1, 300), Skv=st.integers(1, 300),
    D=st.sampled_from([16, 24, 64, 80]), q_tile=st.sampled_from([16, 32, 64]),
    kv_tile=st.sampled_from([16, 32, 64]), density=st.floats(0.05, 1.0), seed=st.integers(0, 1000),
    backend=st.sampled_from(CPU_BACKENDS),
)
def test_random_shapes(B, H, Sq, Skv, D, q_tile, kv_tile, density, seed, backend):
    q, k, v = _inputs(B, H, Sq, Skv, D, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    index = sa.random_tiles(B, H, Sq, Skv, (q_tile, kv_tile), density, generator=gen)
    # some query tiles attend nothing
    counts = torch.where(torch.rand(index.counts.shape, generator=gen) < 0.2, 0, index.counts)
    index = sa.TileIndex(counts, index.indices, q_tile, kv_tile, Sq, Skv)
    out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend=backend)
    ref_out, ref_lse = reference(q, k, v, index)
    torch.testing.assert_close(out.double(), ref_out, atol=TOL[torch.float32], rtol=0)
    _assert_lse(lse, ref_lse)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_density_one_equals_dense(backend):
    q, k, v = _inputs(2, 2, 333, 333, 64, spread=2.0)
    index = sa.random_tiles(2, 2, 333, 333, 64, 1.0)
    assert bool((index.counts == index.num_kv_tiles).all()) and index.density() == 1.0
    out = sa.block_sparse_attention(q, k, v, index, scale=0.2, backend=backend)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.2), atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_without_keys_give_zero_and_minus_inf(backend):
    q, k, v = _inputs(1, 1, 128, 128, 32)
    index = sa.TileIndex(torch.tensor([[[0, 1]]]), torch.tensor([[[[1, 0], [1, 0]]]]), 64, 64, 128, 128)
    out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend=backend)
    assert torch.equal(out[:, :, :64], torch.zeros_like(out[:, :, :64]))
    assert bool(torch.isneginf(lse[:, :, :64]).all()) and bool(torch.isfinite(lse[:, :, 64:]).all())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_merge_of_disjoint_key_sets_equals_their_union(backend):
    B, H, S, D = 1, 2, 256, 32
    q, k, v = _inputs(B, H, S, S, D, spread=1.5)
    dense = sa.random_tiles(B, H, S, S, 64, 0.75, generator=torch.Generator().manual_seed(3)).to_dense()
    split = torch.rand(dense.shape, generator=torch.Generator().manual_seed(4)) < 0.5
    first, second = dense & split, dense & ~split  # disjoint; some rows empty on one side

    def attend(tiles):
        index = sa.TileIndex.from_dense(tiles, 64, S, S)
        return sa.block_sparse_attention(q, k, v, index, return_lse=True, backend=backend)

    o, lse = sa.merge_attention(*attend(first), *attend(second))
    ref_o, ref_l = attend(dense)
    torch.testing.assert_close(o, ref_o, atol=2e-6, rtol=0)
    torch.testing.assert_close(lse, ref_l, atol=2e-6, rtol=0)


def test_merge_handles_rows_without_keys():
    o = torch.randn(1, 1, 3, 4)
    lse = torch.tensor([[[0.5, float("-inf"), float("-inf")]]])
    empty_o, empty_lse = torch.zeros_like(o), torch.full_like(lse, float("-inf"))
    merged, merged_lse = sa.merge_attention(o, lse, empty_o, empty_lse)
    assert torch.equal(merged[..., 0, :], o[..., 0, :]) and merged_lse[0, 0, 0] == 0.5
    assert torch.equal(merged[..., 1:, :], torch.zeros_like(merged[..., 1:, :]))
    assert bool(torch.isneginf(merged_lse[..., 1:]).all())
    with pytest.raises(ValueError):
        sa.merge_attention(o, lse[..., :2], o, lse)


def test_bshd_wrapper_and_broadcast_index():
    q, k, v = _inputs(2, 3, 150, 150, 32)
    index = sa.random_tiles(1, 1, 150, 150, 64, 0.5, generator=torch.Generator().manual_seed(5))
    out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True)
    out2, lse2 = sa.block_sparse_attention_bshd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), index,
                                                return_lse=True)
    assert out2.shape == (2, 150, 3, 32) and lse2.shape == (2, 150, 3)
    torch.testing.assert_close(out2, out.transpose(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(lse2, lse.transpose(1, 2), atol=0, rtol=0)
    ref_out, _ = reference(q, k, v, index.expand(2, 3))
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=0)
    # merge works on the bshd layout too: lse is shaped like out without its last axis
    merged, _ = sa.merge_attention(out2, lse2, torch.zeros_like(out2), torch.full_like(lse2, float("-inf")))
    torch.testing.assert_close(merged, out2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_an_index_changed_in_place_is_checked_again_before_the_cpu_kernels_read_through_it(backend):
    """The C++ kernel reads memory through the ids: an index made valid and then edited in place must be
    refused, not read (an id far out of range crashed the process)."""
    q, k, v = _inputs(1, 1, 128, 128, 64)
    index = sa.TileIndex(torch.ones(1, 1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 1, dtype=torch.int32), 64,
                         64, 128, 128)
    for edit, match in ((lambda: index.indices.fill_(1_000_000), "indices must lie"),
                        (lambda: index.indices.fill_(-5), "indices must lie"),
                        (lambda: index.counts.fill_(3), "counts must lie")):
        index.counts.fill_(1)
        index.indices.fill_(0)
        edit()
        with pytest.raises(ValueError, match=match):
            sa.block_sparse_attention(q, k, v, index, backend=backend)
        with pytest.raises(ValueError, match=match):
            sa.pisa_attention(q, k, v, index=index, backend=backend)
    with pytest.raises(ValueError, match="repeat"):
        sa.pisa_attention(q, k, v, index=sa.TileIndex(torch.full((1, 1, 2), 2), torch.zeros(1, 1, 2, 2, dtype=torch.int32), 64, 64,
                                                      128, 128))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_an_index_that_lists_no_tile_at_all(backend):
    q, k, v = _inputs(1, 2, 100, 100, 32)
    empty = sa.TileIndex(torch.zeros(1, 2, 2, dtype=torch.int32), torch.zeros(1, 2, 2, 0, dtype=torch.int32), 64,
                         64, 100, 100)
    out, lse = sa.block_sparse_attention(q, k, v, empty, return_lse=True, backend=backend)
    assert torch.equal(out, torch.zeros_like(q)) and bool(torch.isneginf(lse).all())
    # PISA then approximates every key tile: finite, and what its reference says
    pisa = sa.pisa_attention(q, k, v, index=empty, backend=backend)
    torch.testing.assert_close(pisa.double(), sa.pisa_reference(q, k, v, empty), atol=1e-5, rtol=0)


def test_numbers_of_any_integer_type_and_bad_scales_and_head_dims():
    import numpy as np

    assert sa.tile_sizes(np.int64(64)) == (64, 64) and sa.tile_sizes((np.int32(16), 128)) == (16, 128)
    for bad in (64.0, "64", 48, True, (16,), None):
        with pytest.raises(ValueError, match="tile_size must be one of"):
            sa.tile_sizes(bad)
    q, k, v = _inputs(1, 1, 64, 64, 16)
    index = sa.random_tiles(1, 1, 64, 64, 64, 1.0)
    for scale in (float("inf"), 0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            sa.block_sparse_attention(q, k, v, index, scale=scale)
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            sa.dense_attention_with_tile_mass(q, k, v, 64, scale=scale)
    with pytest.raises(ValueError, match="head dim 0"):
        sa.block_sparse_attention(q[..., :0], k[..., :0], v[..., :0], index)


def test_invalid_inputs_raise():
    q, k, v = _inputs(1, 1, 128, 128, 32)
    index = sa.TileIndex(torch.ones(1, 1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 1, dtype=torch.int32), 64,
                         64, 128, 128)
    with pytest.raises(ValueError, match="index is for 128 query / 128 key tokens; the inputs have 64"):
        sa.block_sparse_attention(q[:, :, :64], k, v, sa.TileIndex.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool),
                                                                              64, 128, 128))
    with pytest.raises(TypeError, match="TileIndex"):
        sa.block_sparse_attention(q, k, v, (index.counts, index.indices))
    with pytest.raises(TypeError):
        sa.block_sparse_attention(q.double(), k.double(), v.double(), index)
    with pytest.raises(ValueError, match="backend must be one of"):
        sa.block_sparse_attention(q, k, v, index, backend="torch-gather")
    with pytest.raises(RuntimeError, match="CUDA"):
        sa.block_sparse_attention(q, k, v, index, backend="triton")


def test_path_is_recorded_per_call_logged_once_and_profiled(caplog):
    q, k, v = _inputs(1, 1, 64, 64, 16)
    index = sa.TileIndex(torch.ones(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, 1, dtype=torch.int32), 64,
                         64, 64, 64)
    paths.engine._logged.clear()
    with caplog.at_level(logging.INFO, logger="accel"), sa.capture() as seen:
        with torch.profiler.profile() as prof:
            sa.block_sparse_attention(q, k, v, index)
        with sa.capture() as inner:
            sa.block_sparse_attention(q, k, v, index, backend="torch")
    assert [str(p) for p in seen] == ["cpu-kernel (fp32) on cpu", "torch (fp32) on cpu"]
    assert [p.kernel for p in inner] == ["torch"]  # nested captures each see their own calls
    assert sum("block-sparse attention runs on cpu-kernel" in r.message for r in caplog.records) == 1
    assert any(e.name == "accel::attention.block_sparse" for e in prof.events())


def test_auto_falls_back_with_a_warning(monkeypatch, caplog):
    from accel.sparse_attn import cpu_kernel

    monkeypatch.setattr(cpu_kernel, "available", lambda: False)
    monkeypatch.setattr(cpu_kernel, "_build", {"error": "no C++ compiler found"})
    paths.engine._logged.clear()
    q, k, v = _inputs(1, 1, 64, 64, 16)
    index = sa.TileIndex(torch.ones(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, 1, dtype=torch.int32), 64,
                         64, 64, 64)
    with caplog.at_level(logging.WARNING, logger="accel"):
        _, path = _one_path(lambda: sa.block_sparse_attention(q, k, v, index))
    assert path.kernel == "torch" and "no C++ compiler" in path.note
    assert any("falls back to torch" in r.message for r in caplog.records)
    with pytest.raises(RuntimeError, match="unavailable"):
        sa.block_sparse_attention(q, k, v, index, backend="cpu-kernel")
    paths.engine._logged.clear()


def test_kernels_refuse_gradients_the_torch_path_gives_them():
    q, k, v = (t.requires_grad_() for t in _inputs(1, 1, 64, 64, 16))
    index = sa.TileIndex(torch.ones(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, 1, dtype=torch.int32), 64,
                         64, 64, 64)
    with pytest.raises(NotImplementedError, match="forward-only"):
        sa.block_sparse_attention(q, k, v, index)
    with torch.no_grad():
        sa.block_sparse_attention(q, k, v, index)
    out = sa.block_sparse_attention(q, k, v, index, backend="torch")
    out.sum().backward()
    assert q.grad is not None and v.grad is not None


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("where", ["q", "k"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_give_nan_rows_never_plausible_ones(backend, where, value):
    """A NaN/inf query poisons its row; a NaN/inf key the rows that attend it (SDPA poisons the whole head,
    masked keys included); no other row changes, and no poisoned row comes back finite."""
    q, k, v = _inputs(1, 2, 256, 256, 32)
    clean = sa.block_sparse_attention(q, k, v, index := sa.random_tiles(
        1, 2, 256, 256, 64, 0.5, generator=torch.Generator().manual_seed(3)), backend=backend)
    (q if where == "q" else k)[0, 1, 70, 3] = value
    out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend=backend)
    mask = index.token_mask().expand(1, 2, -1, -1)
    expected = torch.zeros(1, 2, 256, dtype=torch.bool)
    if where == "q":
        expected[0, 1, 70] = True
    else:
        expected[0, 1] = mask[0, 1, :, 70]
    assert bool(expected.any())
    assert torch.equal(torch.isnan(out).any(dim=-1), expected) and torch.equal(torch.isnan(lse), expected)
    assert torch.equal(out[~expected], clean[~expected])
    pisa_out = sa.pisa_attention(q, k, v, density=0.5, backend=backend)  # the tail reads every key tile
    bad = torch.isnan(pisa_out).any(dim=-1)
    assert bool(bad[0, 1].all() if where == "k" else bad[0, 1, 70]) and not bool(bad[0, 0].any())
