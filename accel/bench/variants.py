"""The rows of a benchmark: one way of running the same pipeline, switched on and off around each run.

A `Variant` is the baseline, an accel method, a peer (one of diffusers' own caches, a dense attention
backend) or the baseline at fewer steps. Switching per run lets the runner interleave rows so that
machine noise hits every row alike.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import accel

Enable = Callable[[Any], Any]  # pipe -> handle given back to `disable`


@dataclass
class Variant:
    label: str
    kind: str  # "baseline" | "accel" | "diffusers-cache" | "backend" | "fewer-steps"
    steps: int
    enable: Enable = lambda pipe: None
    disable: Callable[[Any, Any], None] = lambda pipe, handle: None
    stats: Callable[[Any], dict[str, Any]] = lambda handle: {}
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def baseline(steps: int) -> Variant:
    return Variant("baseline", "baseline", steps, note="unpatched pipeline")


def fewer_steps(steps: int, matched: str) -> Variant:
    note = f"baseline at {steps} steps" + (f", timed to match {matched}" if matched else "")
    return Variant(f"fewer-steps({steps})", "fewer-steps", steps, note=note)


def method_parts(entry: str) -> list[str]:
    """The method names of a row: "pisa", "pisa:label" (a second row of a method), or a composition
    "pisa+delta-dit" (one patch with both)."""
    return entry.partition(":")[0].split("+")


def accel_method(entry: str, steps: int, options: dict[str, Any] | None = None) -> Variant:
    """The row of one accel method. `entry` is the method's name, or "name:label" for a second row of the
    same method with other options (e.g. "pisa:keep-or-drop" with `pisa:keep-or-drop.order=none`), or a
    composition "a+b" whose options name their method (`pisa+delta-dit.pisa.density=0.1`)."""
    parts = method_parts(entry)
    options = dict(options or {})
    method: Any = parts[0]
    if len(parts) > 1:
        from accel.errors import InvalidOptionError
        from accel.method import method_class

        per: dict[str, dict[str, Any]] = {part: {} for part in parts}
        for key, value in options.items():
            part, _, field = key.partition(".")
            if part not in per or not field:
                raise InvalidOptionError(f"--option {entry}.{key}: a composition's options name their method, "
                                         f"e.g. {entry}.{parts[0]}.<option>=<value>")
            per[part][field] = value
        method = [method_class(part).Config.from_options(**per[part]) for part in parts]
        opts: dict[str, Any] = {}
    else:
        opts = options

    def enable(pipe: Any) -> accel.Patch:
        return accel.patch(pipe, method=method, **opts)

    return Variant(
        entry, "accel", steps, enable, lambda pipe, h: h.unpatch(), lambda h: h.stats(), options=options
    )


# ---- diffusers' own caches ---------------------------------------------------------------------


FBC_THRESHOLD = 0.05  # the FirstBlockCache row's threshold unless the peer names one ("fbc@0.2")


def _cache_configs(pipe: Any, fbc_threshold: float = FBC_THRESHOLD) -> dict[str, Callable[[], Any]]:
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    return {
        "fbc": lambda: FirstBlockCacheConfig(threshold=fbc_threshold),
        "taylorseer": lambda: TaylorSeerCacheConfig(cache_interval=5, disable_cache_before_step=3,
                                                    taylor_factors_dtype=torch.float32),
        "pab": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
        "fastercache": lambda: _faster_cache(pipe),
    }


def _faster_cache(pipe: Any) -> Any:
    from diffusers import FasterCacheConfig

    fmt = "BFCHW" if type(pipe.transformer).__name__.startswith("CogVideoX") else "BCFHW"
    return FasterCacheConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=5,
        current_timestep_callback=lambda: pipe.current_timestep,
        attention_weight_callback=lambda _: 0.5,
        tensor_format=fmt,
        is_guidance_distilled=accel.adapters.adapter_for(pipe.transformer).cfg == "distilled",
    )


DIFFUSERS_CACHES = ("fbc", "taylorseer", "pab", "fastercache")


def diffusers_cache_support(pipe: Any, name: str) -> str | None:
    """None when diffusers' cache `name` can run on this pipeline, else why not."""
    from diffusers.models.cache_utils import CacheMixin

    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, CacheMixin):
        return f"{type(transformer).__name__} has no enable_cache (not a diffusers CacheMixin model)"
    if name in ("pab", "fastercache") and not hasattr(type(pipe), "current_timestep"):
        return f"{type(pipe).__name__} exposes no current_timestep"
    if name == "fastercache" and accel.adapters.adapter_for(transformer).cfg == "sequential":
        return "FasterCache's CFG-Cache expects batched cond/uncond calls"
    return None


def parse_peer(peer: str) -> tuple[str, float | None]:
    """A diffusers-cache peer: "fbc", or "fbc@0.2" for FirstBlockCache at another threshold (to compare
    at equal speed: the default 0.05 may skip nothing on a given model)."""
    name, _, value = peer.partition("@")
    if name not in DIFFUSERS_CACHES:
        raise accel.InvalidOptionError(
            f"bench: peer {peer!r} is unknown; choose from fewer-steps, {', '.join(DIFFUSERS_CACHES)} (fbc@THRESHOLD), "
            f"{', '.join(QUANT_PEERS)}"
        )
    if not value:
        return name, None
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if name != "fbc" or not threshold > 0:
        raise accel.InvalidOptionError(
            f"bench: peer {peer!r}: only fbc takes @THRESHOLD, a positive number (e.g. fbc@0.2)"
        )
    return name, threshold


def diffusers_cache(name: str, steps: int, pipe: Any, threshold: float | None = None) -> Variant:
    make = _cache_configs(pipe, FBC_THRESHOLD if threshold is None else threshold)[name]

    def enable(p: Any) -> None:
        p.transformer.enable_cache(make())

    def disable(p: Any, _: Any) -> None:
        p.transformer.disable_cache()

    label = name if threshold is None else f"{name}@{threshold:g}"
    return Variant(f"diffusers:{label}", "diffusers-cache", steps, enable, disable, note="diffusers built-in hook")


# ---- dense attention backends ------------------------------------------------------------------

BACKENDS = {"sdpa": "native", "flex": "flex", "xformers": "xformers"}


def backend_support(name: str) -> str | None:
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}"
    if name == "xformers" and importlib.util.find_spec("xformers") is None:
        return "xformers is not installed"
    return None


def attention_backend(name: str, steps: int) -> Variant:
    def enable(pipe: Any) -> None:
        pipe.transformer.set_attention_backend(BACKENDS[name])

    def disable(pipe: Any, _: Any) -> None:
        pipe.transformer.reset_attention_backend()

    return Variant(f"backend:{name}", "backend", steps, enable, disable, note=f"diffusers dispatcher '{BACKENDS[name]}'")


# ---- quantization peers ------------------------------------------------------------------------

QUANT_PEERS = {  # name -> (package, what the row applies)
    "torchao-int8wo": ("torchao", "torchao Int8WeightOnlyConfig via quantize_"),
    "torchao-int8dq": ("torchao", "torchao Int8DynamicActivationInt8WeightConfig via quantize_"),
    # diffusers' own quantization configs, applied the way users apply them: at from_pretrained
    "diffusers-torchao-int8wo": ("torchao", "diffusers TorchAoConfig(Int8WeightOnlyConfig()) at from_pretrained"),
    "diffusers-quanto-int8": ("optimum.quanto", "diffusers QuantoConfig(weights_dtype='int8') at from_pretrained"),
    "diffusers-bnb-8bit": ("bitsandbytes", "diffusers BitsAndBytesConfig(load_in_8bit=True) at from_pretrained"),
}


def quant_peer_support(name: str) -> str | None:
    """None when the quantization peer `name` can run here, else why not."""
    package = QUANT_PEERS[name][0]
    if importlib.util.find_spec(package.split(".")[0]) is None:
        return f"{package} is not installed (pip install {package.replace('.', '-') if '.' in package else package})"
    if name == "diffusers-bnb-8bit" and not torch.cuda.is_available():
        return "diffusers' bitsandbytes quantizer needs a GPU"
    return None


def _quantized_copy(name: str, transformer: Any) -> Any:
    """The transformer quantized as the peer does it, leaving the original untouched."""
    if name.startswith("torchao-"):
        import copy

        import torchao.quantization as tq

        model = copy.deepcopy(transformer)
        config = tq.Int8WeightOnlyConfig() if name == "torchao-int8wo" else tq.Int8DynamicActivationInt8WeightConfig()
        tq.quantize_(model, config)
        return model
    import tempfile

    import diffusers

    if name == "diffusers-torchao-int8wo":
        import torchao.quantization as tq

        config = diffusers.TorchAoConfig(quant_type=tq.Int8WeightOnlyConfig())
    elif name == "diffusers-quanto-int8":
        config = diffusers.QuantoConfig(weights_dtype="int8")
    else:
        config = diffusers.BitsAndBytesConfig(load_in_8bit=True)
    with tempfile.TemporaryDirectory(prefix="accel-bench-") as folder:  # no hub: the model's own weights
        transformer.save_pretrained(folder)
        return type(transformer).from_pretrained(folder, quantization_config=config, torch_dtype=transformer.dtype)


def quant_peer(name: str, steps: int) -> Variant:
    """The peer's quantized copy of the transformer (quantize_ and from_pretrained change or make a model
    for good), swapped in for the row's runs and out after them; built once, on first use."""
    built: dict[str, Any] = {}

    def enable(pipe: Any) -> Any:
        if "model" not in built:
            built["model"] = _quantized_copy(name, pipe.transformer)
        original = pipe.transformer
        pipe.transformer = built["model"]
        return original

    def disable(pipe: Any, original: Any) -> None:
        pipe.transformer = original

    return Variant(name, "quant-peer", steps, enable, disable, note=QUANT_PEERS[name][1])
