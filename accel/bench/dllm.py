"""`accel bench` on block-diffusion language pipelines (`LLaDA2Pipeline`, `DiffusionGemmaPipeline`) and the
chunk-wise video pipeline `AnyFlowFARPipeline`: the prefix KV cache and FlashBlock against the stock pipeline.

Per row, measured side by side in one process (rows interleaved across repeats): the latency of one
pipeline call and its generated tokens/s (latent frames/s for video), the time in attention
(torch.profiler, a separate run), peak memory, the share of generated tokens equal to the stock
pipeline's (for video: the PSNR of the latents against the stock pipeline's), and on `digits-copy`
(trained) the task accuracy over `accuracy_n` prompts. Default rows: `flashblock:prefix-cache` (`refresh=1`: the exact
prefix KV cache alone; not on DiffusionGemma, whose pipeline caches the context itself) and `flashblock`
(the paper's reuse on top); on the pipelines that cache the context themselves `flashblock:exact`
(`refresh=1`: the steps' attention through FlashBlock's route without reuse; on AnyFlow-FAR by SDPA
instead of flex) and `flashblock`. "attention s" is all attention of the call (torch's SDPA, diffusers'
dispatcher, accel's ranges); "routed s" the part FlashBlock routes (the steps' self-attention, in
`accel::attention` ranges), and "routed vs exact" compares it with the `refresh=1` row's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import accel
from accel import zoo

from .measure import attention_profile, timed

DEFAULT_ROWS = {"flashblock:prefix-cache": {"refresh": 1}, "flashblock:exact": {"refresh": 1}, "flashblock": {}}
OWN_CACHE = ("DiffusionGemmaPipeline", "AnyFlowFARPipeline")  # cache the context themselves: no prefix-cache row


@dataclass
class DLLMRow:
    label: str
    method: str  # "baseline" or an accel method name
    options: dict[str, Any] = field(default_factory=dict)
    latency_s: list[float] = field(default_factory=list)
    attention_s: float = 0.0
    routed_s: float = 0.0  # of which in FlashBlock's routed attention (`accel::attention`)
    peak_mb: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    agreement: float | None = None  # the share of tokens equal to the stock run's; video: PSNR dB of the latents
    accuracy: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.latency_s)


def _rows(spec: Any, pipe: Any) -> list[DLLMRow]:
    entries = list(spec.methods)
    if entries == ["auto"]:
        entries = ["flashblock:exact", "flashblock"] if type(pipe).__name__ in OWN_CACHE else [
            "flashblock:prefix-cache", "flashblock"]
    rows = [DLLMRow("baseline", "baseline")]
    for entry in entries:
        options = {**DEFAULT_ROWS.get(entry, {}), **spec.method_options.get(entry, {})}
        rows.append(DLLMRow(entry, entry.split(":")[0], options))
    return rows


def _call(pipe: Any, name: str, seed: int) -> dict[str, Any]:
    """The call's arguments, built anew for each call (a DiffusionGemma call consumes its generator)."""
    if name in zoo.TEXT_TRAINED:
        from accel.zoo import digits_copy, digits_copy_gemma

        entry = digits_copy if name == "digits-copy" else digits_copy_gemma
        return entry.call_args(digits_copy.problems(1, 10_000 + seed)[0])
    if name in zoo.CHUNK_NAMES:
        return zoo.far.call_inputs(pipe, seed=seed)
    from accel.zoo import dllm

    return dllm.call_inputs(pipe, seed=seed)


def run_dllm(spec: Any) -> dict[str, Any]:
    """Measure every row of `spec` (an `accel.bench.BenchSpec` naming a block-diffusion entry)."""
    from ..info import info
    from .runner import DTYPES

    dtype = DTYPES[spec.dtype]
    pipe = zoo.load(spec.model, dtype=dtype) if spec.model in zoo.TEXT_TRAINED else zoo.load(
        spec.model, size=spec.size, dtype=dtype)
    pipe = pipe.to(spec.device)
    device = torch.device(spec.device)
    args = _call(pipe, spec.model, spec.seeds[0])
    rows = _rows(spec, pipe)
    tokens: dict[str, torch.Tensor] = {}

    video = spec.model in zoo.CHUNK_NAMES

    def call() -> torch.Tensor:
        out = pipe(**_call(pipe, spec.model, spec.seeds[0]))
        return out.frames if video else out.sequences

    def with_row(row: DLLMRow, fn: Any) -> Any:
        handle = None if row.method == "baseline" else accel.patch(pipe, method=row.method, **row.options)
        try:
            return fn(handle)
        finally:
            if handle is not None:
                handle.unpatch()

    for row in rows:  # warm-up, tokens, stats, memory and attention time, outside the timed loop
        def once(handle: Any, row: DLLMRow = row) -> None:
            for _ in range(spec.warmup):
                call()
            out, _, peak = timed(call, device)
            tokens[row.label], row.peak_mb = out, peak / 2**20
            if handle is not None:
                row.stats = handle.stats()[row.method]
            if spec.profile_attention:
                row.attention_s, row.routed_s, _ = attention_profile(call, device)
        with_row(row, once)
    for _ in range(spec.repeat):  # interleaved
        for row in rows:
            with_row(row, lambda handle, row=row: row.latency_s.append(timed(call, device)[1]))
    for row in rows:
        row.agreement = _psnr(tokens[row.label], tokens["baseline"]) if video else float(
            (tokens[row.label] == tokens["baseline"]).float().mean())
    if spec.model in zoo.TEXT_TRAINED and spec.accuracy_n > 0:
        for row in rows:
            row.accuracy = with_row(row, lambda h: zoo.evaluate(spec.model, pipe, n=spec.accuracy_n,
                                                                 seed=spec.seeds[0])["accuracy"])
    if video:
        return _video_result(spec, pipe, args, rows, info())
    if type(pipe).__name__ in OWN_CACHE:  # its prompt goes through the chat template
        prompt = pipe.processor.apply_chat_template([{"role": "user", "content": args["prompt"]}],
                                                    add_generation_prompt=True, return_dict=True)["input_ids"]
    else:
        prompt = pipe.tokenizer(args["prompt"])["input_ids"]
    config = pipe.model.config
    return {
        "schema": "accel.bench-dllm/1",
        "spec": asdict(spec),
        "env": info(),
        "model": {"name": spec.model, "class": type(pipe.model).__name__, "pipeline": type(pipe).__name__,
                  "layers": config.get_text_config().num_hidden_layers,
                  "prompt_tokens": len(prompt), "gen_length": args["gen_length"],
                  "block_length": args.get("block_length") or config.canvas_length,
                  "steps": args["num_inference_steps"]},
        "rows": [{**asdict(row), "median_s": row.median,
                  "tokens_per_s": args["gen_length"] / row.median} for row in rows],
    }


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of `out` against `ref` over the reference's range (inf when equal)."""
    mse = float(((out.double() - ref.double()) ** 2).mean())
    span = float(ref.max() - ref.min())
    return float("inf") if mse == 0 else 10 * math.log10(span**2 / mse)


def _video_result(spec: Any, pipe: Any, args: dict[str, Any], rows: list[DLLMRow], env: dict[str, Any]) -> dict:
    config = pipe.transformer.config
    frames, side = sum(args["chunk_partition"]), args["height"] // 8
    per_frame = (side // config.patch_size[1]) * (side // config.patch_size[2])
    return {
        "schema": "accel.bench-dllm/1",
        "spec": asdict(spec),
        "env": env,
        "model": {"name": spec.model, "class": type(pipe.transformer).__name__, "pipeline": type(pipe).__name__,
                  "layers": config.num_layers, "chunks": args["chunk_partition"], "tokens_per_frame": per_frame,
                  "gen_length": frames, "steps": args["num_inference_steps"]},
        "rows": [{**asdict(row), "median_s": row.median, "tokens_per_s": frames / row.median} for row in rows],
    }


def markdown(result: dict[str, Any], command: str | None = None) -> str:
    m, spec, rows = result["model"], result["spec"], result["rows"]
    base = rows[0]
    head = f"Command: `{command}`\n\n" if command else ""
    video = "chunks" in m
    size = "trained" if m["name"] in zoo.TEXT_TRAINED else spec["size"]
    kind = "a block-causal " if m["pipeline"] == "LLaDA2Pipeline" else ""
    if video:
        head += (f"model `{m['name']}` ({m['pipeline']} of {m['class']}, {size}, {m['layers']} layers), "
                 f"{m['gen_length']} latent frames of {m['tokens_per_frame']} tokens in chunks {m['chunks']}, "
                 f"{m['steps']} steps per chunk, repeat {spec['repeat']}, {spec['dtype']}, device: "
                 f"{result['env']['device']}\n\n")
    else:
        head += (f"model `{m['name']}` ({m['pipeline']} of {kind}{m['class']}, {size}, {m['layers']} layers), "
                 f"prompt {m['prompt_tokens']} tokens, {m['gen_length']} generated in blocks of "
                 f"{m['block_length']}, {m['steps']} steps per block, repeat {spec['repeat']}, {spec['dtype']}, "
                 f"device: {result['env']['device']}\n\n")
    acc = any(r["accuracy"] is not None for r in rows)
    cuda = str(spec.get("device", "cpu")).startswith("cuda")  # on a CPU the RSS growth depends on the rows' order
    if video:
        head += ("The stock pipeline's attention is flex attention (on a CPU unfused); FlashBlock's rows run the "
                 "chunk steps by SDPA: the exact row's speedup is that kernel's, the reuse's gain is FlashBlock "
                 "against the exact row.\n\n")
    if not cuda:
        head += ("Peak memory is not shown on a CPU: the process's RSS growth is paid by whichever row runs "
                 "first.\n\n")
    cols = ["row", "latency s (median [min-max])", "frames/s" if video else "tokens/s", "speedup", "attention s",
            "routed s", "routed vs exact", *(["peak MB"] if cuda else []),
            "PSNR dB vs exact" if video else "tokens = exact",
            *(["accuracy %"] if acc else []), "stats"]
    exact = next((r for r in rows if r["options"].get("refresh") == 1 and r["method"] == "flashblock"), None)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        s = r["latency_s"]
        vs = "-"
        if exact is not None and exact["routed_s"] and r["routed_s"] and r["method"] == "flashblock":
            ratio = exact["routed_s"] / r["routed_s"]
            vs = f"{ratio:.2f}x lower" if ratio >= 1 else f"{1 / ratio:.2f}x higher"
        cells = [r["label"], f"{r['median_s']:.3f} [{min(s):.3f}-{max(s):.3f}]", f"{r['tokens_per_s']:.1f}",
                 f"{base['median_s'] / r['median_s']:.2f}x", f"{r['attention_s']:.3f}" if r["attention_s"] else "-",
                 f"{r['routed_s']:.3f}" if r["routed_s"] else "-", vs, *([f"{r['peak_mb']:.1f}"] if cuda else []),
                 f"{r['agreement']:.2f}" if video else f"{100 * r['agreement']:.1f}%"]
        if acc:
            a, a0 = r["accuracy"], base["accuracy"]
            cells.append(f"{100 * a:.1f} ({100 * (a - a0):+.1f})" if a is not None else "-")
        stats = {k: v for k, v in r["stats"].items() if k in ("prefix_tokens_fed", "window_tokens", "external_reuses",
                                                               "external_refreshes", "attention_saved", "cache_MB", "stored_MB",
                                                               "path")}
        cells.append(", ".join(f"{k}={v}" for k, v in stats.items()) or ("unpatched pipeline" if r is base else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
