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
    check: Callable[[Any], None] = lambda pipe: None  # raises what `enable` would refuse, changing nothing


def baseline(steps: int) -> Variant:
    return Variant("baseline", "baseline", steps, note="unpatched pipeline")


def fewer_steps(steps: int, matched: str) -> Variant:
    note = f"baseline at {steps} steps" + (f", timed to match {matched}" if matched else "")
    return Variant(f"fewer-steps({steps})", "fewer-steps", steps, note=note)


# ---- method rows: names, options and compositions in one command-line token --------------------------

MethodParts = list[tuple[str, dict[str, Any]]]  # (method name, its options) per part of a composition


def _depths(text: str) -> list[int | None]:
    """The bracket depth at each character of `text` after reading it; None inside quotes."""
    out: list[int | None] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        out.append(None if quote else depth)
    return out


def _split(text: str, sep: str) -> list[str]:
    """`text` split at `sep` where it stands outside brackets and quotes."""
    cuts = [i for i, (ch, d) in enumerate(zip(text, _depths(text), strict=True)) if ch == sep and d == 0]
    return [text[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(text)], strict=True)]


def _balanced(text: str) -> bool:
    """No bracket of `text` closes one it did not open, and every one it opens is closed (quotes aside)."""
    depths = [d for d in _depths(text) if d is not None]
    return min(depths, default=0) >= 0 and (depths[-1] if depths else 0) == 0


def split_methods(text: str) -> tuple[str, ...]:
    """`--methods` as entries: split at the commas outside brackets, so that
    "none,tdc(order=1,threshold=0.5),pisa+tdc" is three rows. A row given twice, also when written two ways
    (`tdc(order=1,threshold=0.5)` and `tdc(threshold=0.5,order=1)`, or an option at its default), is
    refused (ValueError: argparse reports it against --methods): it would be measured twice as two rows;
    so is an empty entry ("none,,tdc", a trailing comma), which would otherwise vanish unnoticed."""
    entries = tuple(t.strip() for t in _split(text, ","))
    if not all(entries):
        raise ValueError(f"--methods={text!r} has an empty entry (two commas in a row, or one at an end); "
                         "give comma-separated method names")
    seen: dict[str, str] = {}
    for entry in entries:
        key = _row_key(entry)
        if key in seen:
            same = entry if seen[key] == entry else f"{seen[key]} and {entry} (the same configuration)"
            raise ValueError(f"--methods={text!r} names {same} more than once; give each row once")
        seen[key] = entry
    return entries


def _row_key(entry: str) -> str:
    """What makes a row: its validated configs and its ":label" (a labelled row takes other --option
    values); the entry itself when it is not an accel method (a peer) or cannot be parsed (refused later)."""
    try:
        return repr(entry_configs(entry)) + ":" + ":".join(_split(entry, ":")[1:])
    except Exception:  # an unknown name or a bad value is refused, with its own message, when the row is built
        return entry


def _value(raw: str) -> Any:
    """A Python literal (1, 0.5, False, 'pooled'), or the bare text as a string (pooled, a/path.json)."""
    import ast

    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def format_value(value: Any) -> str:
    """An option value as it is written in a token: bare where it reads back as itself, else its repr."""
    text = str(value) if isinstance(value, str) else repr(value)
    if isinstance(value, str) and (_value(text) != value or any(c in text for c in ",()+:= '\"")):
        text = repr(value)
    return text


def token(name: str, options: dict[str, Any]) -> str:
    """The token of one method with options: `tdc(order=1,threshold=0.5)`; the bare name without any."""
    if not options:
        return name
    return f"{name}(" + ",".join(f"{k}={format_value(v)}" for k, v in options.items()) + ")"


def parse_entry(entry: str) -> MethodParts:
    """The methods of one row and the options each names in the token: "pisa" -> [("pisa", {})],
    "tdc(order=1,threshold=0.5)" -> [("tdc", {"order": 1, "threshold": 0.5})], "pisa(density=0.1)+tdc"
    a composition (one patch with both); a trailing ":label" names a second row of the same methods.
    Raises `InvalidOptionError` for a malformed token (names are checked when the row is built)."""
    from accel.errors import InvalidOptionError

    body = _split(entry, ":")[0]
    parts: MethodParts = []
    for part in _split(body, "+"):
        part = part.strip()
        name, bracket, rest = part.partition("(")
        name = name.strip()
        options: dict[str, Any] = {}
        if bracket:
            if not rest.endswith(")"):
                raise InvalidOptionError(f"--methods {entry!r}: {part!r} opens a bracket it does not close; "
                                         "expected NAME(KEY=VALUE,...), e.g. tdc(order=1,threshold=0.5)")
            if not _balanced(rest[:-1]):
                raise InvalidOptionError(f"--methods {entry!r}: {part!r} has text after the bracket that closes "
                                         f"{name}(...) or unbalanced brackets; expected NAME(KEY=VALUE,...), "
                                         "e.g. tdc(order=1,threshold=0.5)")
            for item in (i.strip() for i in _split(rest[:-1], ",")):
                key, eq, raw = item.partition("=")
                key = key.strip()
                if not item and not options:
                    continue  # tdc(): no options
                if not (eq and key.isidentifier() and raw.strip()):
                    raise InvalidOptionError(f"--methods {entry!r}: {item!r} in {name}(...) is not KEY=VALUE; "
                                             "expected e.g. tdc(order=1,threshold=0.5)")
                if key in options:
                    raise InvalidOptionError(f"--methods {entry!r}: option {key!r} of {name} is given twice")
                options[key] = _value(raw.strip())
        if not name:
            raise InvalidOptionError(f"--methods {entry!r}: a method name is missing; expected e.g. tdc or "
                                     "pisa+tdc(order=1)")
        parts.append((name, options))
    return parts


def method_parts(entry: str) -> list[str]:
    """The method names of a row: "pisa", "pisa:label" (a second row of a method), a composition
    "pisa+delta-dit" (one patch with both), each part possibly with options: "tdc(order=1)"."""
    return [name for name, _ in parse_entry(entry)]


def entry_configs(entry: str, options: dict[str, Any] | None = None) -> list[Any]:
    """The validated method configs of a row (`entry_options`)."""
    from accel.method import method_class

    return [method_class(name).Config.from_options(**opts) for name, opts in entry_options(entry, options)]


def entry_options(entry: str, options: dict[str, Any] | None = None) -> MethodParts:
    """The methods of a row with all their options: the token's own, plus `options` (`--option`: a single
    method's keys, or a composition's "method.key"); a key given both ways is refused. Not yet validated
    against the methods' configs (`entry_configs` does that)."""
    from accel.errors import InvalidOptionError

    parts = parse_entry(entry)
    per = [dict(opts) for _, opts in parts]
    names = [name for name, _ in parts]
    for key, value in (options or {}).items():
        if len(parts) == 1:
            index, field = 0, key
        else:
            part, _, field = key.partition(".")
            if part not in names or not field:
                raise InvalidOptionError(f"--option {entry}.{key}: a composition's options name their method, "
                                         f"e.g. {entry}.{names[0]}.<option>=<value>")
            index = names.index(part)
        if field in per[index]:
            raise InvalidOptionError(f"--option {entry}.{key}: {names[index]}'s option {field!r} is already "
                                     f"set in the token {entry!r}")
        per[index][field] = value
    return list(zip(names, per, strict=True))


def accel_method(entry: str, steps: int, options: dict[str, Any] | None = None) -> Variant:
    """The row of accel methods named by `entry` (see `parse_entry`): "tdc", "tdc(order=1,threshold=0.5)",
    "pisa(density=0.1)+tdc", or "name:label" with `options` from `--option` ("pisa:keep-or-drop" with
    `pisa:keep-or-drop.order=none`; a composition's name their method: `pisa+delta-dit.pisa.density=0.1`).
    Every config is built, so checked, here: a bad name or option is refused before any run."""
    configs = entry_configs(entry, options)
    method: Any = configs[0] if len(configs) == 1 else configs
    parts = parse_entry(entry)
    given = parts[0][1] if len(parts) == 1 else {f"{n}.{k}": v for n, opts in parts for k, v in opts.items()}
    shown = {**given, **(options or {})}

    def enable(pipe: Any) -> accel.Patch:
        return accel.patch(pipe, method=method)

    def check(pipe: Any) -> None:
        from accel.patching import check as check_patch

        check_patch(pipe, method=method)

    return Variant(
        entry, "accel", steps, enable, lambda pipe, h: h.unpatch(), lambda h: h.stats(), options=shown, check=check
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
