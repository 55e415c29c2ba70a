"""The Triton kernel, run on CPU by the Triton interpreter (TRITON_INTERPRET=1): fp32 and fp16, tiny shapes.

Triton (3.x) reads TRITON_INTERPRET when a kernel is decorated, that is when sparse_attn.triton_kernel
is first imported. Setting it inside the pytest process would also switch every later Triton import to
the interpreter, so the kernel runs in a fresh Python process (this file run as a script) with the flag
set, and the test checks what that process reports.
"""

from __future__ import annotations

import json

import pytest

CASES = [
    # B, H, Sq, Skv, D, block size, dtype, density
    (1, 2, 100, 70, 32, 32, "float32", 0.5),  # partial blocks, Sq != Skv
    (2, 1, 64, 64, 16, 16, "float32", 0.3),
    (1, 1, 50, 80, 24, (16, 32), "float16", 0.6),  # head dim padded to 32, separate block sizes
    (1, 2, 96, 96, 64, 32, "float16", 1.0),
]
TOL = {"float32": 1e-5, "float16": 2e-3}


def _child() -> None:
    """Runs under TRITON_INTERPRET=1: the Triton path against the float64 masked reference."""
    import torch
    import torch.nn.functional as F

    import accel.sparse_attn as sa
    from accel.sparse_attn import triton_kernel

    results = []
    for i, (B, H, Sq, Skv, D, tile, dtype, density) in enumerate(CASES):
        g = torch.Generator().manual_seed(i)
        q, k, v = (torch.randn(B, H, s, D, generator=g).to(getattr(torch, dtype)) for s in (Sq, Skv, Skv))
        index = sa.random_tiles(B, H, Sq, Skv, tile if isinstance(tile, int) else tuple(tile), density, generator=g)
        index.counts[..., 0] = 0  # the first query tile attends nothing
        with sa.capture() as seen:
            out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend="triton")
        path = seen[-1]
        # the bshd wrapper hands the kernel strided (transposed) views
        out_bshd = sa.block_sparse_attention_bshd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), index,
                                                  backend="triton")
        mask = index.token_mask()
        qd, kd, vd = q.double(), k.double(), v.double()
        ref = torch.where(mask.any(-1, keepdim=True), F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), 0)
        ref_lse = torch.logsumexp((qd @ kd.transpose(-1, -2) * D**-0.5).masked_fill(~mask, float("-inf")), -1)
        finite = torch.isfinite(ref_lse)
        results.append({
            "interpreted": triton_kernel.INTERPRETED,
            "path": [path.kernel, path.precision],
            "out_dtype": str(out.dtype).removeprefix("torch."),
            "out_err": float((out.double() - ref).abs().max()),
            "bshd_err": float((out_bshd.transpose(1, 2).double() - ref).abs().max()),
            "lse_err": float((lse.double() - ref_lse)[finite].abs().max()),
            "lse_inf_match": bool(torch.equal(torch.isinf(lse), torch.isinf(ref_lse))),
        })
    print(json.dumps(results))


@pytest.mark.slow
def test_triton_kernel_under_the_interpreter(triton_interpreter):
    results = triton_interpreter()
    for case, r in zip(CASES, results, strict=True):
        dtype = case[6]
        assert r["interpreted"], "TRITON_INTERPRET=1 did not reach the kernel"
        assert r["path"][0] == "triton"
        assert r["path"][1] == ("fp32" if dtype == "float32" else "fp16 dot, fp32 accumulate")
        assert r["out_dtype"] == dtype
        assert r["out_err"] < TOL[dtype], (case, r)
        assert r["bshd_err"] < TOL[dtype], (case, r)
        assert r["lse_err"] < 1e-4 and r["lse_inf_match"], (case, r)


if __name__ == "__main__":
    _child()
