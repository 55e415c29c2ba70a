"""`accel gpu-check`: the Triton kernels on a real GPU, in one command (under 8 minutes on one H200).

Run it in any session that has a GPU; it prints PASS/FAIL per step and writes everything to a JSON file
(docs/benchmarks.md, "Triton kernels on a GPU", shows the latest). The steps:

1. compile: the JIT build of every kernel (block-sparse, PISA hybrid, search fused and refresh) for fp16,
   bf16 and fp32 (TF32, exact, 3xTF32) at head dims 64, 72 and 128, timed (first launches autotune);
2. correctness against float64: the block-sparse kernel against masked SDPA, PISA against
   `pisa_reference`, the search's output against SDPA and its tile mass against the PyTorch path; with
   partial tiles, query tiles with no key tile (empty rows), strided ([B, S, H, D] storage) inputs;
3. fallbacks: "auto" with a head dim the kernels refuse, and with a kernel that raises a build error,
   runs the PyTorch path with the reason recorded; an explicit backend="triton" raises;
4. int32 overflow: batch strides past 2^31 elements, in a subprocess (a bad address would poison the
   CUDA context of this one);
5. timings at Wan2.1-14B 720p size (B=2, H=40, S=75,600, D=128, bf16, density 0.15): dense SDPA, the
   block-sparse kernel, PISA and the search (fused, refresh), first call and median.

`--tiny` shrinks every size so the same code runs on CPU under TRITON_INTERPRET=1 (how CI tests this
command); timings there mean nothing. Steps past `--budget-s` are skipped (recorded), so the command
always finishes and writes its JSON. The verdict is PASS (exit 0) only when every step ran and passed,
FAIL (exit 1) when one failed, INCOMPLETE (exit 3) when none failed but some were skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TOL = {torch.float32: 2e-3, torch.float16: 4e-3, torch.bfloat16: 3e-2}  # max abs error vs float64
FP32_MODES = ("tf32", "ieee", "tf32x3")


class Check:
    """Runs steps, prints one PASS/FAIL/SKIP line each, keeps the results for the JSON."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.steps: list[dict[str, Any]] = []

    def step(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget_s:
            result: dict[str, Any] = {"step": name, "status": "SKIP", "why": f"budget of {self.budget_s:.0f} s spent"}
        else:
            t0 = time.perf_counter()
            try:
                detail = fn() or {}
                status = "FAIL" if detail.pop("failed", False) else "PASS"
                result = {"step": name, "status": status, **detail}
            except Exception as exc:  # noqa: BLE001 (a failing step is a result; the next ones still run)
                result = {"step": name, "status": "FAIL", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-2000:]}
            result["seconds"] = round(time.perf_counter() - t0, 2)
        self.steps.append(result)
        shown = {k: v for k, v in result.items() if k not in ("step", "status", "traceback")}
        print(f"{result['status']:4s}  {name}  {json.dumps(shown, default=str)[:400]}", flush=True)

    @property
    def verdict(self) -> str:
        """PASS only when every step ran and passed; INCOMPLETE when none failed but some were skipped."""
        statuses = {s["status"] for s in self.steps}
        return "FAIL" if "FAIL" in statuses else "INCOMPLETE" if "SKIP" in statuses or not statuses else "PASS"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(B: int, H: int, S: int, D: int, dtype: torch.dtype, device: torch.device, seed: int,
            bshd: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    if bshd:  # diffusers' storage, seen as [B, H, S, D]: strided
        return tuple(torch.randn(B, S, H, D, generator=g).to(device, dtype).transpose(1, 2) for _ in range(3))
    return tuple(torch.randn(B, H, S, D, generator=g).to(device, dtype) for _ in range(3))


def _fp32_mode(mode: str) -> None:
    from . import triton_common

    triton_common.set_fp32_precision(mode)


def _correctness(dtype: torch.dtype, D: int, device: torch.device, tiny: bool, bshd: bool, fp32: str,
                 seed: int) -> dict[str, Any]:
    """Every kernel against float64 on one case: partial tiles, a query tile with no key tile."""
    import accel.sparse_attn as sa

    _fp32_mode(fp32 if dtype == torch.float32 else "auto")
    try:
        B, H, S, tile = (1, 2, 200, 64) if tiny else (2, 4, 1000, 64)
        q, k, v = _inputs(B, H, S, D, dtype, device, seed, bshd)
        index = sa.random_tiles(B, H, S, S, tile, 0.4, generator=torch.Generator().manual_seed(seed), device=device)
        index.counts[..., 1] = 0  # a query tile with no key tile: rows of 0, lse -inf
        with sa.capture() as seen:
            out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend="triton")
        mask = index.token_mask()
        qd, kd, vd = q.double(), k.double(), v.double()
        ref = torch.where(mask.any(-1, keepdim=True), F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask), 0)
        index.counts[..., 1] = 1
        pisa = sa.pisa_attention(q, k, v, index=index, backend="triton")
        pisa_ref = sa.pisa_reference(q.cpu(), k.cpu(), v.cpu(), index.to("cpu"), "hybrid").to(device)
        s_out, s_lse, mass = sa.dense_attention_with_tile_mass(q, k, v, tile, backend="triton")
        _, t_lse, t_mass = sa.dense_attention_with_tile_mass(q, k, v, tile, backend="torch")
        refreshed = sa.tile_mass(q, k, t_lse, tile, backend="triton")
        dense = F.scaled_dot_product_attention(qd, kd, vd)
        errors = {
            "block_sparse": float((out.double() - ref).abs().max()),
            "pisa": float((pisa.double() - pisa_ref).abs().max()),
            "search_out": float((s_out.double() - dense).abs().max()),
            "mass_vs_torch": float((mass - t_mass).abs().max()),
            "refresh_vs_torch": float((refreshed - t_mass).abs().max()),
        }
        empty = slice(tile, 2 * tile)
        empty_rows_ok = bool((out[:, :, empty] == 0).all()) and bool(torch.isinf(lse[:, :, empty]).all())
        tol = TOL[dtype] if not (dtype == torch.float32 and fp32 == "tf32") else 5e-3
        failed = any(e > (1e-4 if "mass" in n or "refresh" in n else tol) for n, e in errors.items()) or not empty_rows_ok
        return {"kernel": str(seen[-1]), "errors": errors, "empty_rows_ok": empty_rows_ok, "tolerance": tol,
                "failed": failed}
    finally:
        _fp32_mode("auto")


def _compile_smoke(device: torch.device, tiny: bool) -> dict[str, Any]:
    """First launches (JIT build + autotune) of every kernel at each dtype and head dim, timed."""
    import accel.sparse_attn as sa

    S = 100 if tiny else 700
    cases = [(dt, D, mode) for dt in (torch.float16, torch.bfloat16) for D in (64, 72, 128) for mode in ("auto",)]
    cases += [(torch.float32, 64, mode) for mode in FP32_MODES]
    first: dict[str, float] = {}
    for dtype, D, mode in cases:
        _fp32_mode(mode if dtype == torch.float32 else "auto")
        try:
            q, k, v = _inputs(1, 2, S, D, dtype, device, 0)
            index = sa.random_tiles(1, 2, S, S, 64, 0.5, generator=torch.Generator().manual_seed(0), device=device)
            name = f"{str(dtype).removeprefix('torch.')}{'/' + mode if dtype == torch.float32 else ''} D{D}"
            zero_lse = torch.zeros(q.shape[:3], device=device)
            for kernel, fn, args in (
                ("block-sparse", sa.block_sparse_attention, (q, k, v, index)),
                ("pisa", sa.pisa_attention, (q, k, v, 0.125, 64, "hybrid", "pooled", (), index)),
                ("search-fused", sa.dense_attention_with_tile_mass, (q, k, v, 64)),
                ("search-refresh", sa.tile_mass, (q, k, zero_lse, 64)),
            ):
                t0 = time.perf_counter()
                fn(*args, backend="triton")
                _sync(device)
                first[f"{kernel} {name}"] = round(time.perf_counter() - t0, 3)
        finally:
            _fp32_mode("auto")
    return {"first_launch_s": first}


def _fallbacks(device: torch.device) -> dict[str, Any]:
    """On CUDA "auto" means Triton: a head dim it refuses, or a build error, must give the PyTorch path
    with the reason; everywhere an explicit backend="triton" must raise instead."""
    from triton.runtime.errors import OutOfResources

    import accel.sparse_attn as sa
    from accel.sparse_attn import triton_common, triton_kernel

    checks: dict[str, bool] = {}
    on_cuda = device.type == "cuda"
    q, k, v = _inputs(1, 1, 128, 512, torch.float16, device, 0)  # head dim 512: no Triton tile fits
    every = sa.TileIndex(torch.full((1, 1, 2), 2, dtype=torch.int32, device=device),
                         torch.arange(2, dtype=torch.int32, device=device).expand(1, 1, 2, 2), 64, 64, 128, 128)
    if on_cuda:
        with sa.capture() as seen:
            sa.block_sparse_attention(q, k, v, every)
        checks["head dim 512: auto falls back, with the reason"] = seen[-1].kernel == "torch" and "head dim" in seen[-1].note
    try:
        sa.block_sparse_attention(q, k, v, every, backend="triton")
        checks["head dim 512: explicit triton raises"] = False
    except RuntimeError:
        checks["head dim 512: explicit triton raises"] = True
    q, k, v = _inputs(1, 1, 128, 64, torch.float16, device, 0)
    dense = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    original = triton_kernel.attention

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OutOfResources(300_000, triton_common.SHARED_MEMORY_LIMIT, "shared memory")

    triton_kernel.attention = failing
    try:
        if on_cuda:
            with sa.capture() as seen:
                out = sa.block_sparse_attention(q, k, v, every)
            checks["build error: auto falls back, with the reason"] = (seen[-1].kernel == "torch"
                                                                       and "OutOfResources" in seen[-1].note)
            checks["build error: the fallback is right"] = bool((out.double() - dense).abs().max() < 4e-3)
        try:
            sa.block_sparse_attention(q, k, v, every, backend="triton")
            checks["build error: explicit triton raises"] = False
        except OutOfResources:
            checks["build error: explicit triton raises"] = True
    finally:
        triton_kernel.attention = original
        triton_common._failed.clear()
    return {"checks": checks, "failed": not all(checks.values())}


def _overflow_probe(device: torch.device) -> dict[str, Any]:
    """Batch element 2 starts 2^31 + 128 elements into q's storage (k, v are q), in a subprocess on
    `device` (CPU: under the interpreter, storage mapped lazily)."""
    code = (
        "import json, torch, torch.nn.functional as F, accel.sparse_attn as sa\n"
        f"dev = torch.device({str(device)!r})\n"
        "B, H, S, D = 3, 2, 256, 64\n"
        "stride = 2**30 + 64\n"
        "storage = torch.empty((B - 1) * stride + H * S * D, dtype=torch.float16, device=dev)\n"
        "q = storage.as_strided((B, H, S, D), (stride, S * D, D, 1))\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for b in range(B): q[b] = torch.randn(H, S, D, generator=g).to(dev, torch.float16)\n"
        "nb = S // 64\n"
        "every = sa.TileIndex(torch.full((1, 1, nb), nb, dtype=torch.int32, device=dev),\n"
        "                     torch.arange(nb, dtype=torch.int32, device=dev).expand(1, 1, nb, nb), 64, 64, S, S)\n"
        "out = sa.block_sparse_attention(q, q, q, every, backend='triton')\n"
        "s_out, _, _ = sa.dense_attention_with_tile_mass(q, q, q, 64, backend='triton')\n"
        "err = []\n"
        "for b in range(B):\n"
        "    ref = F.scaled_dot_product_attention(*(q[b].double(),) * 3)\n"
        "    err.append(max(float((out[b].double() - ref).abs().max()), float((s_out[b].double() - ref).abs().max())))\n"
        "print(json.dumps(err))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"failed": True, "returncode": done.returncode, "stderr": done.stderr[-1500:]}
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    return {"max_error_per_batch": errors, "failed": max(errors) > 4e-3}


def _timings(device: torch.device, tiny: bool, repeats: int) -> dict[str, Any]:
    """Wan-14B 720p (with `tiny`, [B, H, S, D] = [1, 2, 300, 64]): first call and median of `repeats` for dense
    SDPA and each sparse kernel."""
    import accel.sparse_attn as sa

    B, H, S, D = (1, 2, 300, 64) if tiny else (2, 40, 75_600, 128)
    density, tile = 0.15, 64
    q, k, v = _inputs(B, H, S, D, torch.bfloat16, device, 0, bshd=True)
    index = sa.random_tiles(B, H, S, S, tile, density, generator=torch.Generator().manual_seed(0), device=device)
    lse = torch.zeros(B, H, S, device=device)  # a cached LSE: its values do not change the work
    rows: dict[str, Callable[[], Any]] = {
        "dense SDPA": lambda: F.scaled_dot_product_attention(q, k, v),
        "block-sparse (triton)": lambda: sa.block_sparse_attention(q, k, v, index, backend="triton"),
        "PISA hybrid (triton)": lambda: sa.pisa_attention(q, k, v, index=index, backend="triton"),
        "search fused (triton)": lambda: sa.dense_attention_with_tile_mass(q, k, v, tile, backend="triton"),
        "search refresh (triton)": lambda: sa.tile_mass(q, k, lse, tile, backend="triton"),
    }
    result: dict[str, Any] = {"shape": [B, H, S, D], "dtype": "bf16", "density": density, "tile": tile, "rows": {}}
    for name, fn in rows.items():
        t0 = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        result["rows"][name] = {"first_s": round(first, 4), "median_s": round(statistics.median(times), 5)}
    dense = result["rows"]["dense SDPA"]["median_s"]
    for row in result["rows"].values():
        row["speedup_vs_dense"] = round(dense / row["median_s"], 3) if row["median_s"] else None
    return result


def run(device_name: str, tiny: bool, budget_s: float, repeats: int) -> dict[str, Any]:
    from . import triton_common

    device = torch.device(device_name)
    if triton_common.INTERPRETED:  # the interpreter cannot multiply bf16 by itself (triton#11584)
        triton_common.interpret_bf16_dot()
    check = Check(budget_s)
    check.step("compile: first launch of every kernel (JIT + autotune)", lambda: _compile_smoke(device, tiny))
    cases = [
        (torch.float16, 64, False, "auto"), (torch.bfloat16, 128, False, "auto"), (torch.float16, 72, False, "auto"),
        (torch.bfloat16, 128, True, "auto"), (torch.float16, 72, True, "auto"),
    ] + [(torch.float32, 64, False, mode) for mode in FP32_MODES]
    for i, (dtype, D, bshd, mode) in enumerate(cases):
        name = f"{str(dtype).removeprefix('torch.')}{'/' + mode if dtype == torch.float32 else ''}"
        layout = "strided [B, S, H, D]" if bshd else "contiguous"
        check.step(f"correctness: {name} head dim {D}, {layout}",
                   lambda dtype=dtype, D=D, bshd=bshd, mode=mode, i=i: _correctness(dtype, D, device, tiny, bshd,
                                                                                     mode, i))
    check.step("fallbacks", lambda: _fallbacks(device))
    check.step("int32 overflow probe (subprocess)", lambda: _overflow_probe(device))
    shape = "tiny [1, 2, 300, 64]" if tiny else "Wan-14B 720p"
    check.step(f"timings: {shape}, bf16, density 0.15", lambda: _timings(device, tiny, repeats))
    info: dict[str, Any] = {"torch": torch.__version__, "interpreted": triton_common.INTERPRETED}
    import triton

    info["triton"] = triton.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = list(torch.cuda.get_device_capability(device))
    return {"device": info, "verdict": check.verdict, "seconds": round(time.perf_counter() - check.start, 1),
            "steps": check.steps}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from accel.cli import counting, positive

    p = sub.add_parser("gpu-check", help="compile, check and time the Triton kernels on a GPU (PASS/FAIL + JSON)")
    p.add_argument("--json", default="gpu-check.json", help="where to write the results (default gpu-check.json)")
    p.add_argument("--device", type=_device, default="cuda", help="cuda, cuda:N or cpu (with --tiny; default cuda)")
    p.add_argument("--tiny", action="store_true", help="small sizes: the same code on CPU under TRITON_INTERPRET=1")
    p.add_argument("--budget-s", type=positive("seconds"), default=450.0,
                   help="skip the steps that would start after this many seconds (> 0; the verdict is then "
                        "INCOMPLETE; default 450)")
    p.add_argument("--repeats", type=counting(1), default=5, help="timed calls per row (median; default 5)")
    p.add_argument("--doc", default=None, help="also write the results into this markdown file (docs/benchmarks.md)")
    p.set_defaults(func=_cmd)


def _device(text: str) -> str:
    """An argparse type: cpu, cuda or cuda:N (whether this machine has it is checked when the command runs)."""
    index = text.removeprefix("cuda:")
    if text not in ("cpu", "cuda") and not (text.startswith("cuda:") and index.isdecimal()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N (N a GPU index)")
    return text


def markdown(result: dict[str, Any]) -> str:
    """The results as docs/benchmarks.md shows them: the device, one line per step, the timing table."""
    dev = result["device"]
    where = dev.get("gpu", "CPU under the Triton interpreter") + (f" (sm_{''.join(map(str, dev['capability']))})"
                                                                   if "capability" in dev else "")
    lines = [f"### Triton kernels on {where} (accel gpu-check)\n\n`{result['command']}`: torch {dev['torch']}, "
             f"Triton {dev['triton']}: {result['verdict']} in {result['seconds']} s.\n",
             "| step | result | detail |", "|---|---|---|"]
    for s in result["steps"]:
        detail = s.get("errors") or s.get("checks") or s.get("max_error_per_batch") or s.get("error") or s.get("why", "")
        if "first_launch_s" in s:
            detail = f"slowest first launch {max(s['first_launch_s'].values())} s"
        if "rows" in s:
            detail = f"{s['shape']} {s['dtype']}, density {s['density']}"
        text = json.dumps(detail, default=str) if not isinstance(detail, str) else detail
        lines.append(f"| {s['step']} | {s['status']} | {text[:300]} |")
    timing = next((s for s in result["steps"] if "rows" in s), None)
    if timing:
        lines += ["", "| row | first call (s) | median (s) | speedup vs dense SDPA |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['first_s']} | {r['median_s']} | {r['speedup_vs_dense']} |"
                  for name, r in timing["rows"].items()]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("accel gpu-check: no CUDA device here (use --tiny --device cpu under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    count = torch.cuda.device_count()
    if args.device.startswith("cuda:") and int(args.device.removeprefix("cuda:")) >= count:
        print(f"accel gpu-check: --device {args.device}: this machine has {count} CUDA device(s); "
              f"expected cuda or cuda:N with N < {count}", file=sys.stderr)
        return 2
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print("accel gpu-check: on CPU the kernels run only under TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:  # the interpreter would take hours over the GPU sizes
        print("accel gpu-check: --device cpu runs the small sizes only: add --tiny", file=sys.stderr)
        return 2
    from accel.bench.report import check_outputs

    check_outputs("gpu-check", doc=args.doc, files={"--json": args.json})  # now, not after the run
    result = run(args.device, args.tiny, args.budget_s, args.repeats)
    result["command"] = "accel " + " ".join(args.argv)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2, default=str)
    if args.doc:
        from accel.bench.report import update_doc

        update_doc(Path(args.doc), "gpu-check", markdown(result))
    print(f"{result['verdict']}: {sum(s['status'] == 'PASS' for s in result['steps'])} of "
          f"{len(result['steps'])} steps passed in {result['seconds']} s; results in {args.json}")
    return {"PASS": 0, "FAIL": 1, "INCOMPLETE": 3}[result["verdict"]]
