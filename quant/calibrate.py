"""`accel calibrate`: fit 6Bit-Diffusion's error predictor on a few prompts.

The paper (arXiv 2603.18742, Eq. 3-7) predicts a layer's relative NVFP4 error at step t from its block's
relative input-to-output change at step t-1 by a line, `E = alpha * Gamma(t-1) + beta`, fitted offline by
least squares (the paper: 100 EvalCrafter prompts). Here the unpatched pipeline runs `seeds` x `steps`;
every linear layer of every block is also run in NVFP4 (weights and activations) beside the exact one, and
each (Gamma of its block at the previous step, its relative output error) pair enters the fit: one line
per layer (`layers`: a layer's own sensitivity is its intercept), and one for all layers (`alpha`, `beta`,
used for layers without their own). The threshold the paper leaves open is set so that the routed mix
averages about 6 activation bits (NVFP4 counts 4.5 with its scales, INT8 8): the `target_nvfp4_share`
quantile of the per-layer predictions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import formats


def _pairs(pipe: Any, seeds: Sequence[int], steps: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per linear layer (its name in the denoiser's blocks, as sixbit names it): the (Gamma of its block
    at the previous step, its relative NVFP4 output error) pairs."""
    import accel
    from accel.adapters.block_io import block_io
    from accel.zoo import generate

    handle = accel.patch(pipe, method="none")  # only for its step tracker: which step and CFG branch
    tracker = handle.tracker
    gammas: dict[tuple[str, str], float] = {}  # (block, branch) -> Gamma at the block's previous call
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    hooks = []
    quantized: dict[int, formats.NVFP4Weight] = {}
    for d in handle.target.denoisers:
        for ref in d.adapter.blocks(d.module):
            io = block_io(ref.module)
            current: dict[str, Any] = {}

            def before(module: torch.nn.Module, args: tuple, kwargs: dict, io: Any = io, current: dict = current,
                       name: str = ref.name) -> None:
                current["in"] = io.inputs(module, args, kwargs)[0]
                current["gamma"] = gammas.get((name, tracker.branch))

            def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any, io: Any = io,
                      current: dict = current, name: str = ref.name) -> None:
                hidden_in, hidden_out = current.pop("in").float(), io.outputs(output)[0].float()
                change = (hidden_out - hidden_in).abs().sum() / hidden_in.abs().sum().clamp_min(1e-12)
                gammas[(name, tracker.branch)] = float(change)

            hooks.append(ref.module.register_forward_pre_hook(before, with_kwargs=True))
            hooks.append(ref.module.register_forward_hook(after, with_kwargs=True))
            for sub, layer in ref.module.named_modules():
                if isinstance(layer, torch.nn.Linear) and layer.in_features % 16 == 0:
                    xs, ys = pairs.setdefault(f"{ref.name}.{sub}", ([], []))

                    def measure(module: torch.nn.Module, inputs: tuple, output: torch.Tensor,
                                current: dict = current, xs: list = xs, ys: list = ys) -> None:
                        if current.get("gamma") is None:
                            return
                        w = quantized.get(id(module))
                        if w is None:
                            w = quantized[id(module)] = formats.quantize_nvfp4(module.weight.detach().float())
                        approx, _ = formats.nvfp4_linear(inputs[0].float(), w, module.bias)
                        exact = output.float()
                        xs.append(current["gamma"])
                        ys.append(float((approx - exact).norm() / exact.norm().clamp_min(1e-12)))

                    hooks.append(layer.register_forward_hook(measure))
    try:
        with torch.no_grad():
            for seed in seeds:
                generate(pipe, steps=steps, seed=seed)
    finally:
        for h in hooks:
            h.remove()
        handle.unpatch()
    return pairs


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = alpha x + beta: (alpha, beta, R^2)."""
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    alpha, beta = torch.linalg.lstsq(design, y[:, None]).solution.flatten().tolist()
    residual = ((y - (alpha * x + beta)) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-30)
    return alpha, beta, float(1 - residual)


def calibrate(pipe: Any, seeds: Sequence[int] = (0, 1), steps: int = 20, target_nvfp4_share: float = 4 / 7
              ) -> dict[str, Any]:
    """Fit alpha and beta of the predictor on `pipe` (a diffusers pipeline of the zoo or a real one) and
    choose the threshold; returns the JSON-ready dict `method="sixbit", calibration=path` reads. Raises
    ValueError when the runs give fewer than 3 samples (one step is not enough: Gamma needs a previous step)."""
    if not 0.0 < target_nvfp4_share < 1.0:
        raise ValueError(f"target_nvfp4_share={target_nvfp4_share} must be in (0, 1)")
    pairs = _pairs(pipe, seeds, steps)
    xs = [x for layer_xs, _ in pairs.values() for x in layer_xs]
    if len(xs) < 3:
        raise ValueError(f"calibration needs at least 2 steps per run; got {len(xs)} samples from steps={steps}")
    ys = [y for _, layer_ys in pairs.values() for y in layer_ys]
    alpha, beta, r2 = _fit(xs, ys)
    layers, predicted = {}, []
    for name, (lx, ly) in pairs.items():  # a layer with fewer than 3 samples keeps the global line
        a, b = _fit(lx, ly)[:2] if len(lx) >= 3 else (alpha, beta)
        if len(lx) >= 3:
            layers[name] = [a, b]
        predicted += [a * x + b for x in lx]
    # per-layer lines: the pooled R^2 of the per-layer predictions
    y = torch.tensor(ys, dtype=torch.float64)
    fitted = torch.tensor(predicted, dtype=torch.float64)
    r2_layers = float(1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-30))
    threshold = float(torch.quantile(fitted, target_nvfp4_share))
    return {"alpha": alpha, "beta": beta, "r2": r2, "threshold": threshold, "layers": layers,
            "r2_per_layer": r2_layers, "samples": len(xs), "seeds": list(seeds), "steps": steps,
            "target_nvfp4_share": target_nvfp4_share}


def write(result: dict[str, Any], path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out
