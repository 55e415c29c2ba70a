"""`accel bench` on VLMs: visual-token pruning rows (PyramidDrop, FastV) against the unpatched model.

Per row, measured side by side in one process (rows interleaved across repeats): prefill latency (one
forward of the prompt with its images, a cache, the last token's logits), decode tokens/s (a greedy
`generate` of `DECODE_TOKENS` tokens, its prefill subtracted), peak memory, the KV-cache bytes the prefill
leaves, the analytic FLOPs ratio of what the layers really saw (`stats()["flops_ratio"]`, FastV's
formula), and how many of the greedy tokens equal the unpatched model's. On `digits-vqa` (trained), the
answer accuracy over `accuracy_n` questions; `keep_sweep` adds PyramidDrop rows at other keep ratios and
FastV rows at the same average visual-token budget, and a plot of accuracy against that budget.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

import accel
from accel import zoo
from accel.errors import InvalidOptionError
from accel.patching import check
from accel.zoo import digits_vqa

from .measure import timed
from .variants import entry_options

DECODE_TOKENS = 16


@dataclass
class VLMRow:
    label: str
    method: str  # "baseline" or an accel method name
    options: dict[str, Any] = field(default_factory=dict)
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)  # the DECODE_TOKENS - 1 decode steps of one generate call
    peak_mb: float = 0.0
    kv_cache_mb: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    agreement: float | None = None  # fraction of greedy tokens equal to the baseline's
    accuracy: float | None = None
    budget: float = 1.0  # visual tokens per layer, averaged, as a fraction of the prompt's

    @property
    def prefill_median(self) -> float:
        return statistics.median(self.prefill_s)

    @property
    def decode_tps(self) -> float:
        return (DECODE_TOKENS - 1) / statistics.median(self.decode_s)


class _StepClock(LogitsProcessor):
    """Stamps the time at each generation step (a logits processor runs once per forward, after it), so
    a generate call's decode time is read inside that call: from the first step (the prefill's) to the
    last, DECODE_TOKENS - 1 decode forwards, not a difference of two separately timed calls."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def _inputs(model: Any, name: str, seed: int) -> dict[str, Any]:
    if name == "digits-vqa":
        q = digits_vqa.questions("test", 1, seed)
        return dict(digits_vqa.model_inputs(model, q.grids, q.questions))
    return dict(zoo.vlm_inputs(model, seed=seed))


def _cache_mb(cache: Any) -> float:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total / 2**20


def _budget(method: str, options: dict[str, Any], depth: int) -> float:
    """The average fraction of visual tokens a layer sees under the schedule (1 for the baseline)."""
    if method == "baseline" or method == "none":
        return 1.0
    from accel.method import method_class
    from accel.token_reduction.flops import visual_tokens_per_layer

    cls = method_class(method)
    drops = cls(cls.Config.from_options(**options)).schedule(depth)
    return sum(visual_tokens_per_layer(depth, 10**6, [(d.layer, d.keep) for d in drops])) / (depth * 10**6)


def fastv_at_budget(budget: float, depth: int, layer: int = 2) -> dict[str, Any]:
    """FastV's options with the given average budget, (K + (depth - K) r) / depth = budget: the paper's
    K=2 where that budget allows it, else the latest layer that does."""
    layer = max(1, min(layer, int(budget * depth)))
    keep = (budget * depth - layer) / (depth - layer)
    return {"layer": layer, "keep_ratio": round(min(1.0, max(1e-3, keep)), 4)}


def _rows(spec: Any, model: Any) -> list[VLMRow]:
    """The table's rows, each refused (`accel.check`: an unsupported method, a bad option) before any run."""
    depth = len(model.model.language_model.layers)
    methods = list(spec.methods)
    if methods == ["auto"]:
        methods = ["none", "pyramid-drop", "fastv"]
    rows = [VLMRow("baseline", "baseline")]
    for entry in methods:  # "pyramid-drop", "pyramid-drop:label" (options by --option), "fastv(layer=3)"
        parts = entry_options(entry, spec.method_options.get(entry))
        if len(parts) != 1:
            raise InvalidOptionError(f"--methods {entry!r}: a VLM row runs one pruning method; compositions "
                                     "apply to diffusion pipelines")
        check(model, parts[0][0], **parts[0][1])
        rows.append(VLMRow(entry, *parts[0]))
    for ratio in spec.keep_sweep:
        options = {"keep_ratio": ratio}
        rows.append(VLMRow(f"pyramid-drop@{ratio:g}", "pyramid-drop", options))
        same = fastv_at_budget(_budget("pyramid-drop", options, depth), depth)
        rows.append(VLMRow(f"fastv@{same['keep_ratio']:g} K={same['layer']} (same budget)", "fastv", same))
    for row in rows:
        row.budget = _budget(row.method, row.options, depth)
    return rows


def run_vlm(spec: Any) -> dict[str, Any]:
    """Measure every row of `spec` (an `accel.bench.BenchSpec` naming a VLM); returns the JSON result."""
    from ..info import info
    from .runner import DTYPES

    dtype = DTYPES[spec.dtype]
    if spec.model == "digits-vqa":
        try:
            model = digits_vqa.load(dtype, Path(spec.weights) if spec.weights else digits_vqa.CHECKPOINT)
        except ValueError as err:  # another architecture's file, or no safetensors file at all
            raise InvalidOptionError(f"bench: weights={spec.weights!r}: {err}") from None
    else:
        model = zoo.load(spec.model, size=spec.size, dtype=dtype)
    model = model.to(spec.device)
    device = torch.device(spec.device)
    x = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _inputs(model, spec.model,
                                                                                      spec.seeds[0]).items()}
    depth = len(model.model.language_model.layers)
    rows = _rows(spec, model)
    tokens: dict[str, torch.Tensor] = {}

    def prefill() -> Any:
        with torch.no_grad():
            return model(**x, use_cache=True, logits_to_keep=1)

    def generate(clock: _StepClock | None = None) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(**x, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS, do_sample=False,
                                  logits_processor=LogitsProcessorList([clock] if clock else []))

    def with_row(row: VLMRow, fn: Any) -> Any:
        handle = None if row.method == "baseline" else accel.patch(model, method=row.method, **row.options)
        try:
            return fn(handle)
        finally:
            if handle is not None:
                handle.unpatch()

    for row in rows:  # warm-up and the per-row measurements outside the timed loop
        def once(handle: Any, row: VLMRow = row) -> None:
            for _ in range(max(1, spec.warmup)):
                prefill()
            out, _, peak = timed(prefill, device)
            row.peak_mb = peak / 2**20
            row.kv_cache_mb = _cache_mb(out.cache)
            tokens[row.label] = generate()[:, x["input_ids"].shape[1]:]
            if handle is not None:
                row.stats = handle.stats()[row.method]
        with_row(row, once)
    for _ in range(spec.repeat):  # interleaved
        for row in rows:
            def measure(handle: Any, row: VLMRow = row) -> None:
                row.prefill_s.append(timed(prefill, device)[1])
                clock = _StepClock(device)
                generate(clock)
                row.decode_s.append(clock.stamps[-1] - clock.stamps[0])
            with_row(row, measure)
    base = tokens["baseline"]
    for row in rows:
        row.agreement = float((tokens[row.label] == base).float().mean())
    if spec.model == "digits-vqa" and spec.accuracy_n > 0:
        for row in rows:
            row.accuracy = with_row(row, lambda h: zoo.evaluate("digits-vqa", model, n=spec.accuracy_n,
                                                                 seed=spec.seeds[0])["accuracy"])
    reads = [round(x, 2) for x in digits_vqa.quadrant_attention(model)] if spec.model == "digits-vqa" else None
    visual = int(torch.isin(x["input_ids"], torch.tensor(zoo.image_token_ids(model), device=device)).sum())
    return {
        "schema": "accel.bench-vlm/1",
        "spec": asdict(spec),
        "env": info(),
        "model": {"name": spec.model, "class": type(model).__name__, "layers": depth,
                  "prompt_tokens": int(x["input_ids"].shape[1]), "visual_tokens": visual,
                  "weights": spec.weights, "quadrant_attention": reads},
        "rows": [{**asdict(row), "prefill_median_s": row.prefill_median, "decode_tps": row.decode_tps}
                 for row in rows],
    }


def markdown(result: dict[str, Any], command: str | None = None) -> str:
    m, spec, rows = result["model"], result["spec"], result["rows"]
    base = rows[0]["prefill_median_s"]
    head = f"Command: `{command}`\n\n" if command else ""
    head += (f"model `{m['name']}` ({m['class']}, {spec['size'] if m['name'] != 'digits-vqa' else 'trained'}, "
             f"{m['layers']} LM layers), prompt {m['prompt_tokens']} tokens of which {m['visual_tokens']} "
             f"visual, repeat {spec['repeat']}, {spec['dtype']}, device: {result['env']['device']}\n\n")
    if m.get("weights"):
        head += f"weights: `{m['weights']}`\n\n"
    if m.get("quadrant_attention"):
        head += ("Where the unpatched model reads the image (`digits_vqa.quadrant_attention`: per LM layer, the asked "
                 "quadrant's share of the last prompt token's image attention, 64 questions; chance 0.25): "
                 + " ".join(f"{x:.2f}" for x in m["quadrant_attention"]) + "\n\n")
    acc = any(r["accuracy"] is not None for r in rows)
    cols = ["row", "prefill s (median [min-max])", "prefill speedup", "decode tok/s", "peak MB", "KV cache MB",
            "FLOPs ratio", "visual budget", "tokens = exact", *(["accuracy %"] if acc else []), "kept visual"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        s = r["prefill_s"]
        cells = [r["label"], f"{r['prefill_median_s']:.3f} [{min(s):.3f}-{max(s):.3f}]",
                 f"{base / r['prefill_median_s']:.2f}x", f"{r['decode_tps']:.1f}", f"{r['peak_mb']:.1f}",
                 f"{r['kv_cache_mb']:.2f}", f"{r['stats'].get('flops_ratio', 1.0):.3f}", f"{r['budget']:.3f}",
                 f"{100 * r['agreement']:.0f}%"]
        if acc:
            a, a0 = r["accuracy"], rows[0]["accuracy"]
            cells.append(f"{100 * a:.1f} ({100 * (a - a0):+.1f})" if a is not None else "-")
        cells.append(",".join(map(str, r["stats"].get("kept_visual", []))) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_plot(result: dict[str, Any], path: Path) -> bool:
    """Accuracy against the average visual-token budget, PyramidDrop and FastV (rows with an accuracy)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for r in result["rows"]:
        if r["accuracy"] is not None and r["method"] in ("pyramid-drop", "fastv"):
            points.setdefault(r["method"], []).append((r["budget"], 100 * r["accuracy"]))
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(100 * result["rows"][0]["accuracy"], color="gray", linestyle="--", label="unpruned")
    ax.set_xlabel("visual tokens per layer (fraction, averaged over layers)")
    ax.set_ylabel("answer accuracy %")
    ax.set_title(f"{result['model']['name']}: accuracy against visual-token budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
