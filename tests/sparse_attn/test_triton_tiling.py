"""The three Triton kernels with the GPU's sub-tiling, under the interpreter: bf16, head dim 128.

Under the interpreter a program normally covers one whole query tile and steps through key tiles whole;
on a GPU the autotuned program tiles (BLOCK_M rows, BLOCK_N keys) are smaller than the index's tiles
(several programs per query tile, several steps per key tile, through the flat loop).
`triton_common.interpreter_tiles` makes the interpreter split them like the GPU, and each case is checked
against float64: the block-sparse kernel against masked attention, PISA against `pisa_reference`, the
search's tile mass against the torch path. A second child probes
int32 overflow: batch strides past 2^31 elements on lazily allocated memory (only the touched pages
are real), where an int32 `program id x batch stride` would read another batch's (or no) memory.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("triton")

from triton_interpreter import fix_bf16_dot  # noqa: E402

CASES = [
    # dtype, head dim, tile, program tiles (BLOCK_M, BLOCK_N), B, H, Sq, Skv
    ("float16", 64, 64, (32, 16), 1, 2, 200, 150),  # 2 programs per query tile, 4 steps per key tile, partial
    ("float32", 40, 32, (16, 16), 2, 1, 96, 100),  # odd head dim, 2 x 2
    ("bfloat16", 128, 64, (64, 64), 1, 2, 160, 160),  # the GPU's bf16 config at tile 64
    ("bfloat16", 128, 128, (128, 64), 1, 1, 200, 256),  # and at tile 128: 2 steps per key tile
    ("bfloat16", 128, 128, (64, 32), 1, 1, 130, 130),  # 2 programs, 4 steps
]
TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 2e-2}


def _child() -> None:
    import json

    import torch.nn.functional as F

    import accel.sparse_attn as sa
    from accel.sparse_attn import triton_common

    fix_bf16_dot()
    results = []
    for i, (dtype, D, tile, tiles, B, H, Sq, Skv) in enumerate(CASES):
        triton_common.interpreter_tiles = tiles
        g = torch.Generator().manual_seed(i)
        q, k, v = (torch.randn(B, H, s, D, generator=g).to(getattr(torch, dtype)) for s in (Sq, Skv, Skv))
        index = sa.random_tiles(B, H, Sq, Skv, tile, 0.5, generator=g)
        index.counts[..., -1] = 0  # a query tile that attends nothing
        with sa.capture() as seen:
            out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend="triton")
        mask = index.token_mask()
        qd, kd, vd = q.double(), k.double(), v.double()
        ref = torch.where(mask.any(-1, keepdim=True), F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), 0)
        index.counts[..., -1] = 1  # PISA: every query tile keeps at least its first listed tile
        pisa = sa.pisa_attention(q, k, v, index=index, backend="triton")
        pisa_ref = sa.pisa_reference(q, k, v, index, "hybrid")
        s_out, s_lse, mass = sa.dense_attention_with_tile_mass(q, k, v, tile, backend="triton")
        _, t_lse, t_mass = sa.dense_attention_with_tile_mass(q, k, v, tile, backend="torch")
        refreshed = sa.tile_mass(q, k, t_lse, tile, backend="triton")
        results.append({
            "path": seen[-1].precision,
            "out": float((out.double() - ref).abs().max()),
            "lse_inf": bool(torch.equal(torch.isinf(lse), ~mask.any(-1))),
            "pisa": float((pisa.double() - pisa_ref).abs().max()),
            "search_out": float((s_out.double() - F.scaled_dot_product_attention(qd, kd, vd)).abs().max()),
            "mass": float((mass - t_mass).abs().max()),
            "refresh": float((refreshed - t_mass).abs().max()),
            "dtypes": [str(x.dtype) for x in (out, pisa, s_out)],
        })
    print(json.dumps(results))


def _overflow_child() -> None:
    """Batch element 2 starts 2^31 + 128 elements into q's storage; k and v are q."""
    import json

    import torch.nn.functional as F

    import accel.sparse_attn as sa

    B, H, S, D = 3, 2, 64, 32
    batch_stride = 2**30 + 64
    storage = torch.empty((B - 1) * batch_stride + H * S * D, dtype=torch.float16)  # 4 GiB, lazily mapped
    q = storage.as_strided((B, H, S, D), (batch_stride, S * D, D, 1))
    g = torch.Generator().manual_seed(0)
    for b in range(B):
        q[b] = torch.randn(H, S, D, generator=g).to(torch.float16)
    every = sa.TileIndex(torch.full((1, 1, 2), 2), torch.tensor([[[[0, 1], [0, 1]]]]), 32, 32, S, S)
    out = sa.block_sparse_attention(q, q, q, every, backend="triton")
    s_out, _, _ = sa.dense_attention_with_tile_mass(q, q, q, 32, backend="triton")
    errors = []
    for b in range(B):
        qb = q[b].double()
        ref = F.scaled_dot_product_attention(qb, qb, qb)
        errors.append(max(float((out[b].double() - ref).abs().max()), float((s_out[b].double() - ref).abs().max())))
    print(json.dumps(errors))


@pytest.mark.slow
def test_gpu_tiling_bf16_and_head_dim_128_under_the_interpreter(triton_interpreter):
    results = triton_interpreter()
    for case, r in zip(CASES, results, strict=True):
        dtype = case[0]
        assert r["dtypes"] == [f"torch.{dtype}"] * 3, (case, r)
        assert r["out"] < TOL[dtype] and r["lse_inf"], (case, r)
        assert r["pisa"] < TOL[dtype], (case, r)
        assert r["search_out"] < TOL[dtype], (case, r)
        assert r["mass"] < 1e-4 and r["refresh"] < 1e-4, (case, r)


@pytest.mark.slow
@pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit address space")
def test_batch_offsets_past_int32_under_the_interpreter(triton_interpreter):
    errors = triton_interpreter("overflow")
    assert max(errors) < 2e-3, errors


if __name__ == "__main__":
    _overflow_child() if sys.argv[1:] == ["overflow"] else _child()
