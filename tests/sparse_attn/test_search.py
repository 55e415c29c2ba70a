"""AdaSpa's tile search (sparse_attn/search.py): exact tile mass, the LSE-cached refresh, the index it
selects, the head-adaptive density split, and the Triton kernel under TRITON_INTERPRET=1.

References are float64 dense softmax. The Triton kernel runs in a fresh process (this file as a script)
because Triton reads TRITON_INTERPRET when a kernel is first decorated (see test_sparse_attn_triton.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import accel.sparse_attn as sa
from accel.sparse_attn import search
from accel.sparse_attn.tiles import num_tiles, tile_sizes


def reference(q, k, v, tile_size, scale=None):
    """(out, lse, mass) in float64 from the dense softmax."""
    q_tile, kv_tile = tile_sizes(tile_size)
    qd, kd, vd = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = qd @ kd.transpose(-1, -2) * scale
    p = s.softmax(-1)
    Sq, Skv = q.shape[2], k.shape[2]
    nq, nk = num_tiles(Sq, q_tile), num_tiles(Skv, kv_tile)
    p = F.pad(p, (0, nk * kv_tile - Skv, 0, nq * q_tile - Sq))
    sums = p.view(*p.shape[:2], nq, q_tile, nk, kv_tile).sum(dim=(3, 5))
    rows = torch.tensor([min(q_tile, Sq - i * q_tile) for i in range(nq)], dtype=torch.float64)
    return p[:, :, :Sq, :Skv] @ vd, torch.logsumexp(s, -1), sums / rows.view(nq, 1)


def from_mass(mass, density, tile=16, **kwargs):
    """tiles_from_mass for a mass of whole tiles of `tile` tokens."""
    nq, nk = mass.shape[-2:]
    return sa.tiles_from_mass(mass, density, tile, nq * tile, nk * tile, **kwargs)


def qkv(B, H, Sq, Skv, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, s, D, generator=g).to(dtype) for s in (Sq, Skv, Skv))


CASES = [
    # B, H, Sq, Skv, D, block, dtype
    (1, 2, 100, 70, 32, 32, torch.float32),  # partial blocks both sides, Sq != Skv
    (2, 1, 64, 64, 16, 16, torch.float32),
    (1, 1, 50, 80, 24, (16, 32), torch.float16),
    (1, 2, 96, 96, 64, 32, torch.bfloat16),
]


@pytest.mark.parametrize("backend", ["cpu-kernel", "torch"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[2]}x{c[3]}-{c[5]}-{str(c[6])[6:]}")
def test_fused_search_matches_float64_softmax(case, backend):
    B, H, Sq, Skv, D, block, dtype = case
    q, k, v = qkv(B, H, Sq, Skv, D, dtype)
    with sa.capture() as seen:
        out, lse, mass = sa.dense_attention_with_tile_mass(q, k, v, tile_size=block, backend=backend)
    ref_out, ref_lse, ref_mass = reference(q, k, v, block)
    assert out.dtype == dtype and lse.dtype == mass.dtype == torch.float32
    assert mass.shape == ref_mass.shape
    out_tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (out.double() - ref_out).abs().max() < out_tol
    assert (lse.double() - ref_lse).abs().max() < 1e-4
    assert (mass.double() - ref_mass).abs().max() < 1e-5
    # every query row's softmax sums to 1, so each row of the block mass does too
    assert torch.allclose(mass.sum(-1).double(), torch.ones(B, H, mass.shape[2], dtype=torch.float64), atol=1e-5)
    assert seen[-1].kernel == backend
    refresh = sa.tile_mass(q, k, lse, tile_size=block, backend=backend)
    assert (refresh.double() - ref_mass).abs().max() < 1e-5


def test_chunked_torch_path_equals_one_chunk(monkeypatch):
    q, k, v = qkv(1, 2, 200, 150, 16, seed=1)
    whole = sa.dense_attention_with_tile_mass(q, k, v, tile_size=32)
    whole_refresh = sa.tile_mass(q, k, whole[1], tile_size=32)
    monkeypatch.setattr(search, "CHUNK_ELEMENTS", 1)  # one query block per chunk, last one partial
    chunked = sa.dense_attention_with_tile_mass(q, k, v, tile_size=32)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(sa.tile_mass(q, k, whole[1], tile_size=32), whole_refresh, atol=1e-7)


def test_a_16k_search_works_in_chunks_not_s_by_s():
    for S in (4096, 16384):
        rows = search._rows_per_chunk(64, 1, S)
        # whole query blocks, and at most CHUNK_ELEMENTS scores unless one block alone is more
        assert rows % 64 == 0 and 0 < rows < S and rows * S <= max(search.CHUNK_ELEMENTS, 64 * S)


def test_refresh_from_cached_lse_equals_fused():
    q, k, v = qkv(2, 2, 90, 130, 32, seed=2)
    _, lse, mass = sa.dense_attention_with_tile_mass(q, k, v, tile_size=32)
    assert torch.allclose(sa.tile_mass(q, k, lse, tile_size=32), mass, atol=1e-6)
    # a stale LSE is a per-row offset: raising every row's LSE by c scales the mass by exp(-c)
    assert torch.allclose(sa.tile_mass(q, k, lse + 0.5, tile_size=32), mass * math.exp(-0.5), atol=1e-6)
    # a row whose LSE is -inf (it attended nothing) contributes nothing
    dead = lse.clone()
    dead[:, :, :32] = float("-inf")
    refreshed = sa.tile_mass(q, k, dead, tile_size=32)
    assert torch.isfinite(refreshed).all() and (refreshed[:, :, 0] == 0).all()
    assert torch.allclose(refreshed[:, :, 1:], mass[:, :, 1:], atol=1e-6)


def dominant_qk(targets, kv_tiles, block=16, D=16, strength=8.0, seed=3):
    """q, k where query block p attends (almost only) the key blocks targets[p]: key block j is the
    direction e_j, query block p the sum of its targets' directions."""
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(D)
    k = eye[:kv_tiles].repeat_interleave(block, 0) * strength + 0.05 * torch.randn(kv_tiles * block, D, generator=g)
    q = torch.stack([eye[list(t)].sum(0) for t in targets]).repeat_interleave(block, 0) * strength
    q = q + 0.05 * torch.randn(q.shape, generator=g)
    return q.view(1, 1, -1, D), k.view(1, 1, -1, D)


def test_search_selects_the_dominant_blocks():
    # 5 query blocks, 8 key blocks: the diagonal of query block p is key block p * 8 // 5; no target is
    # its row's diagonal or the sink 7
    targets = [(3, 5), (0, 6), (6, 1), (2, 5), (5, 0)]
    q, k = dominant_qk(targets, kv_tiles=8)
    _, _, mass = sa.dense_attention_with_tile_mass(q, k, k, tile_size=16)
    index = from_mass(mass, 2 / 8, diagonal=False)
    assert index.counts.flatten().tolist() == [2] * len(targets)
    assert index.indices[0, 0].tolist() == [sorted(t) for t in targets]
    assert (sa.index_recall(mass, index) > 0.99).all()
    # sink tiles and the diagonal come on top of the k best others
    index = from_mass(mass, 2 / 8, sink_tiles=[-1], diagonal=True)
    for p, t in enumerate(targets):
        assert index.indices[0, 0, p, : index.counts[0, 0, p]].tolist() == sorted({*t, 7, p * 8 // 5})
    # dense query tiles (e.g. text queries) keep every key tile
    index = from_mass(mass, 2 / 8, diagonal=False, dense_query_tiles=[-1])
    assert index.counts[0, 0].tolist() == [2, 2, 2, 2, 8] and index.indices[0, 0, -1].tolist() == list(range(8))


def test_density_one_keeps_everything_and_sparse_attention_is_dense():
    q, k, v = qkv(1, 2, 100, 120, 32, seed=4)
    out, lse, mass = sa.dense_attention_with_tile_mass(q, k, v, tile_size=32)
    index = sa.tiles_from_mass(mass, 1.0, 32, 100, 120)
    assert (index.counts == 4).all() and (index.indices == torch.arange(4, dtype=torch.int32)).all()
    sparse_out, sparse_lse = sa.block_sparse_attention(q, k, v, index, return_lse=True)
    assert torch.allclose(sparse_out, out, atol=1e-5) and torch.allclose(sparse_lse, lse, atol=1e-5)


def test_density_per_head_sets_each_heads_count():
    mass = torch.rand(2, 3, 4, 10)
    assert from_mass(mass, [0.1, 0.35, 1.0], diagonal=False).counts[:, :, 0].tolist() == [[1, 4, 10]] * 2
    index = from_mass(mass, torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]), diagonal=False)
    assert index.counts[:, :, 0].tolist() == [[1, 2, 3], [3, 2, 1]]
    # the kept tiles are the heaviest of their row
    kept = index.to_dense()
    assert (mass.masked_fill(~kept, 2).amin(-1) >= mass.masked_fill(kept, -1).amax(-1)).all()


def recall_mass(recalls, nq=4, nk=8):
    """mass [1, H, nq, nk] whose rows put `recall` on two blocks and spread the rest over six."""
    rows = [[r / 2, r / 2] + [(1 - r) / (nk - 2)] * (nk - 2) for r in recalls]
    return torch.tensor(rows).view(1, len(recalls), 1, nk).expand(1, len(recalls), nq, nk).contiguous()


def test_head_adaptive_density_moves_density_from_high_to_low_recall_heads():
    mass = recall_mass([1.0, 0.9, 0.5, 0.3, 0.6])
    index = from_mass(mass, 0.25, diagonal=False)
    assert torch.allclose(sa.index_recall(mass, index), torch.tensor([[1.0, 0.9, 0.5, 0.3, 0.6]]))
    density = sa.head_adaptive_density(mass, 0.25, recall_threshold=0.8, diagonal=False)
    # two heads above 0.8 -> they give 0.125 each to the two lowest-recall heads (3, then 2); head 4 keeps 0.25
    assert density.tolist() == [[0.125, 0.125, 0.375, 0.375, 0.25]]
    assert math.isclose(float(density.mean()), 0.25, rel_tol=1e-6)
    # more heads above the threshold than H // 2: only H // 2 move
    density = sa.head_adaptive_density(mass, 0.25, recall_threshold=0.0, diagonal=False)
    assert density.tolist() == [[0.125, 0.125, 0.375, 0.375, 0.25]]
    # no head above the threshold: uniform
    assert (sa.head_adaptive_density(mass, 0.25, recall_threshold=1.0, diagonal=False) == 0.25).all()


def test_head_adaptive_density_keeps_the_mean_inside_the_bounds():
    mass = recall_mass([0.95, 0.2, 0.9, 0.4])
    density = sa.head_adaptive_density(mass, 0.8, diagonal=False)  # paper's 1.2 would exceed 1
    assert torch.allclose(density, torch.tensor([[0.6, 1.0, 0.6, 1.0]]))
    density = sa.head_adaptive_density(mass, 0.25, min_density=0.2, diagonal=False)
    assert torch.allclose(density, torch.tensor([[0.2, 0.3, 0.2, 0.3]]))
    assert math.isclose(float(density.mean()), 0.25, rel_tol=1e-6)
    # the densities feed tiles_from_mass: the low-recall heads get more blocks
    assert from_mass(mass, density, diagonal=False).counts[0, :, 0].tolist() == [2, 3, 2, 3]


def test_index_storage_at_default_sparsity_on_4k_tokens():
    S, tile = 4096, 64
    nb = num_tiles(S, tile)
    mass = torch.rand(1, 2, nb, nb)
    index = sa.tiles_from_mass(mass, 0.2, tile, S, S)  # sparsity 0.8, diagonal kept
    assert int(index.counts.max()) <= math.ceil(0.2 * nb) + 1
    assert index.nbytes == index.counts.numel() * 4 + index.indices.numel() * 4
    assert index.nbytes <= sa.byte_mask_bytes(S, S, 1, 2) / 8
    small = index.compact()
    assert small.indices.dtype == torch.uint8 and small.nbytes * 4 == index.nbytes
    # a compact index is below a byte per tile pair too, and the engine takes it as is
    assert small.nbytes < 2 * nb * nb
    q, k, v = qkv(1, 2, 256, 256, 16, seed=5)
    index = from_mass(torch.rand(1, 2, 4, 4), 0.5, tile=64)
    assert torch.equal(sa.block_sparse_attention(q, k, v, index.compact()), sa.block_sparse_attention(q, k, v, index))


def test_search_runs_in_the_attention_profiler_range():
    q, k, v = qkv(1, 1, 64, 64, 16, seed=6)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _, lse, _ = sa.dense_attention_with_tile_mass(q, k, v, tile_size=32)
        sa.tile_mass(q, k, lse, tile_size=32)
    assert sum(e.name == "accel::attention.search" for e in prof.events()) == 2


def test_bad_options_raise_value_errors_naming_them():
    q, k, v = qkv(1, 2, 64, 64, 16, seed=7)
    mass = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="backend"):
        sa.dense_attention_with_tile_mass(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="tile_size"):
        sa.dense_attention_with_tile_mass(q, k, v, tile_size=48)
    with pytest.raises(ValueError, match="lse"):
        sa.tile_mass(q, k, torch.zeros(1, 2, 63))
    with pytest.raises(ValueError, match="batch, heads and head dim must match"):
        sa.dense_attention_with_tile_mass(q, k[:, :1], v)
    with pytest.raises(ValueError, match="density_per_head"):
        from_mass(mass, 0.0)
    with pytest.raises(ValueError, match="density_per_head"):
        from_mass(mass, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="mass"):
        sa.tiles_from_mass(mass[0], 0.5, 16, 64, 64)
    with pytest.raises(ValueError, match="4 x 4 tiles"):
        sa.tiles_from_mass(mass, 0.5, 16, 64, 80)
    for kwargs, name in (
        ({"base_density": 1.5}, "base_density"),
        ({"base_density": 0.2, "recall_threshold": 1.2}, "recall_threshold"),
        ({"base_density": 0.2, "min_density": 0.3}, "min_density"),
        ({"base_density": 0.2, "max_density": 0.1}, "max_density"),
    ):
        with pytest.raises(ValueError, match=name):
            sa.head_adaptive_density(mass, **kwargs)


def test_explicit_triton_backend_on_cpu_refuses_without_the_interpreter():
    pytest.importorskip("triton")
    from accel.sparse_attn import search_triton

    if search_triton.INTERPRETED:
        pytest.skip("this process runs Triton interpreted")
    q, k, v = qkv(1, 1, 32, 32, 16)
    with pytest.raises(RuntimeError, match="CUDA"):
        sa.dense_attention_with_tile_mass(q, k, v, tile_size=16, backend="triton")


def test_search_bench_reports_every_row_against_dense_sdpa():
    from accel.sparse_attn.search_bench import bench_search

    rows = bench_search([128], head_dim=16, tile_size=32, repeats=1)
    assert [r["row"] for r in rows][0] == "dense SDPA" and len(rows) == 4
    assert rows[0]["vs_dense"] == 1.0 and all(r["median_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="dtype"):
        bench_search([128], dtype="fp64")


# -- the Triton kernel, interpreted -----------------------------------------------------------------------

TRITON_CASES = [
    # B, H, Sq, Skv, D, block, dtype
    (1, 2, 100, 70, 32, 32, "float32"),  # partial blocks, Sq != Skv
    (2, 1, 64, 64, 16, 16, "float32"),
    (1, 1, 50, 80, 24, (16, 32), "float16"),  # head dim padded to 32, separate block sizes
]
TRITON_TOL = {"float32": 1e-5, "float16": 2e-3}


def _child() -> None:
    """Runs under TRITON_INTERPRET=1: the Triton search against the torch path and float64."""
    from accel.sparse_attn import search_triton

    results = []
    for i, (B, H, Sq, Skv, D, block, dtype) in enumerate(TRITON_CASES):
        block = block if isinstance(block, int) else tuple(block)
        q, k, v = qkv(B, H, Sq, Skv, D, getattr(torch, dtype), seed=10 + i)
        with sa.capture() as seen:
            out, lse, mass = sa.dense_attention_with_tile_mass(q, k, v, block, backend="triton")
        path = seen[-1]
        # strided (transposed-storage) inputs and a refresh from the torch path's LSE
        qt, kt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k))
        _, t_lse, t_mass = sa.dense_attention_with_tile_mass(q, k, v, block, backend="torch")
        refreshed = sa.tile_mass(qt, kt, t_lse, block, backend="triton")
        ref_out, ref_lse, ref_mass = reference(q, k, v, block)
        results.append({
            "interpreted": search_triton.INTERPRETED,
            "path": [path.kernel, path.precision],
            "out_dtype": str(out.dtype).removeprefix("torch."),
            "out_err": float((out.double() - ref_out).abs().max()),
            "lse_err": float((lse.double() - ref_lse).abs().max()),
            "mass_err": float((mass.double() - ref_mass).abs().max()),
            "refresh_vs_torch": float((refreshed - t_mass).abs().max()),
        })
    print(json.dumps(results))


@pytest.mark.slow
def test_triton_search_kernel_under_the_interpreter(triton_interpreter):
    results = triton_interpreter()
    for case, r in zip(TRITON_CASES, results, strict=True):
        dtype = case[6]
        assert r["interpreted"], "TRITON_INTERPRET=1 did not reach the kernel"
        assert r["path"] == ["triton", "fp32" if dtype == "float32" else "fp16 dot, fp32 accumulate"]
        assert r["out_dtype"] == dtype
        assert r["out_err"] < TRITON_TOL[dtype], (case, r)
        assert r["lse_err"] < 1e-4, (case, r)
        assert r["mass_err"] < TRITON_TOL[dtype], (case, r)
        assert r["refresh_vs_torch"] < TRITON_TOL[dtype], (case, r)


if __name__ == "__main__":
    _child()
