"""6Bit-Diffusion's dynamic mixed precision (Su et al., arXiv 2603.18742): every linear layer of the
denoiser's blocks keeps its weights in NVFP4 (about 4.5 bits per weight, packed: resident memory really
drops), and at each step runs its activations in NVFP4 or INT8, as the paper's predictor routes it.

The predictor (section 3, Eq. 3-7): a layer's relative quantization error at step t is predicted as
`alpha * Gamma(t-1) + beta`, where Gamma is its block's relative L1 change from input to output at the
previous step it was computed. Below `threshold` the layer runs NVFP4; above it ("volatile") or when
Gamma is unknown (the first step, or the block was skipped by TDC at the previous step) it runs INT8,
whose weights the paper casts from the stored NVFP4 ones. A calibration file gives each layer its own
line (its intercept is its own sensitivity); the options give one line for all. `accel calibrate` fits alpha and beta on
a few prompts (quant/calibrate.py). Combined with TDC's block skipping in one patch:
`method=["sixbit", "tdc"]`.

Paths (never silent: `stats()["paths"]` counts each, logged once): "int8-x86-dynamic" (on a CPU: PyTorch's
x86/fbgemm int8 GEMM, activations quantized per tensor; "packed per call" when the INT8 weights are cast
from NVFP4 at each call), "int8-int-mm" (elsewhere: `torch._int_mm`, per-token activations; 30x slower
than fp32 on an AVX2 CPU, hence not used there), "int8-dequant" (shapes `_int_mm` refuses),
"nvfp4-dequant" (NVFP4 weights dequantized per call: the memory saving only; NVFP4 tensor cores exist on
Blackwell alone), "w4a16-dequant" (the same with unquantized activations: Purified Delta Refresh, below).

Purified Delta Refresh (section 4.3, Eq. 12): quantization noise in a block's output is written into TDC's
cached delta and reused at every skip, so at a block's first computed step after a skip its layers run
INT8, or, where the input's outlier ratio max|x| / mean|x| exceeds 25, unquantized activations with the
dequantized NVFP4 weights ("FP16" in the paper; its full-precision weights are not resident either).

The full-precision weights leave the device while patched (`originals`): kept in CPU memory, or in a file
on disk (the default on a CPU, where CPU memory would keep them resident), so that `unpatch` restores them
bit-exactly; `originals="drop"` frees them, and `unpatch` then refuses instead of restoring wrongly.
The facts and what the paper leaves open: ../shared/research/pruning_quant.md section 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from accel import parallel
from accel.adapters.block_io import block_io
from accel.config import MethodConfig, option
from accel.errors import AccelError, InvalidOptionError, UnsupportedModelError
from accel.journal import Journal
from accel.method import Method
from accel.steps import StepTracker
from accel.target import PatchTarget

from . import formats

logger = logging.getLogger("accel")

ORIGINALS = ("auto", "cpu", "disk", "drop")


@dataclass(frozen=True)
class SixBitConfig(MethodConfig):
    method = "sixbit"
    alpha: float = option(1.0, "predictor slope: predicted relative error = alpha * Gamma(t-1) + beta (a fit may "
                          "give a negative one)")
    beta: float = option(0.0, "predictor intercept", low=-1.0, high=1.0)
    threshold: float = option(0.25, "a block's layers run NVFP4 while the predicted error is at most this, "
                              "INT8 above (and whenever Gamma is unknown)", low=0.0)
    route: str = option("predictor", "'predictor' (the paper's routing), or every layer at every step in "
                        "'nvfp4' or 'int8' (ablations)", choices=("predictor", "nvfp4", "int8"))
    calibration: str = option("", "a JSON file from `accel calibrate` whose alpha, beta (and threshold) "
                              "replace the options; '' = use the options")
    hadamard: int = option(0, "rotate activations and weights by a block Hadamard transform of this size "
                           "(outlier smoothing; the paper's 128; input sizes must be multiples of it); 0 = off",
                           choices=(0, 16, 32, 64, 128))
    int8_weights: str = option("cast", "'cast': the INT8 route casts the stored NVFP4 weights at each call "
                               "(the paper's; NVFP4 memory only); 'cached': keep an INT8 copy too (faster, "
                               "12.5 bits per weight)", choices=("cast", "cached"))
    originals: str = option("auto", "where the full-precision weights wait for unpatch: 'cpu' memory, 'disk' "
                            "(a temporary file), 'drop' (freed; unpatch refuses), 'auto' = disk on a CPU "
                            "model, CPU memory otherwise", choices=ORIGINALS)
    weights: str = option("", "a directory written by accel.quant.save: its packed weights are used "
                          "instead of quantizing the model's")
    purified_refresh: bool = option(True, "Purified Delta Refresh (section 4.3, Eq. 12): at a block's first "
                                    "computed step after a TDC skip, layers whose input has an outlier ratio "
                                    "max|x| / mean|x| above outlier_ratio run unquantized activations (W4A16), "
                                    "the others INT8")
    outlier_ratio: float = option(25.0, "the outlier ratio above which purified_refresh runs a layer's "
                                  "activations unquantized (the paper's 25)", low=1.0)
    unsupported: str = option("refuse", "linear layers whose input size NVFP4 cannot block (not a multiple of "
                              "16): 'refuse' the model, or 'skip' them (left in full precision, counted)",
                              choices=("refuse", "skip"))


@dataclass
class BlockState:
    """Per block: Gamma of its last computed step per CFG branch (None: skipped there), its layers, and
    whether any of them ran in the current call (a TDC skip runs none)."""

    name: str
    module: torch.nn.Module
    gamma: dict[str, float | None] = field(default_factory=dict)
    layers: list[LayerState] = field(default_factory=list)
    ran: bool = False
    hidden_in: torch.Tensor | None = None


@dataclass
class LayerState:
    name: str  # qualified name inside the denoiser
    block: BlockState
    nvfp4: formats.NVFP4Weight
    int8: formats.Int8Weight | None  # with int8_weights="cached"
    int8_x86: Any  # the same, prepacked for the CPU's x86/fbgemm int8 GEMM (cached, on a CPU)
    bias: torch.Tensor | None
    alpha: float  # the layer's predictor line (its own from a calibration file, else the global one)
    beta: float
    route: str = "int8"  # chosen before the block: "nvfp4", "int8" or "refresh" (decided per call, below)
    ran_as: str = "int8"  # what the last call ran: "nvfp4", "int8" or "a16"


def _divisible(layer: torch.nn.Linear, hadamard: int) -> bool:
    return layer.in_features % max(hadamard, 16) == 0


class SixBit(Method):
    name = "sixbit"
    summary = "6Bit-Diffusion: NVFP4 weights, NVFP4 or INT8 activations per layer and step by a predictor; with TDC."
    paper = "6Bit-Diffusion, arXiv 2603.18742"
    claims = frozenset({"linears"})
    Config = SixBitConfig
    exact_options = None  # quantization has no exact setting
    # per_step: one [NVFP4, INT8, A16 layer calls, skipped block calls] per step, all CFG branches
    stats_keys = frozenset({"paths", "nvfp4_layer_calls", "int8_layer_calls", "a16_layer_calls",
                            "skipped_block_calls", "skipped_layer_calls", "per_step", "predictor",
                            "activation_bits", "activation_bits_with_skips", "weight_bytes", "bf16_weight_bytes",
                            "memory_ratio_vs_bf16", "layers", "unsupported_layers", "originals"})
    kept_between_calls = frozenset({"layers", "blocks", "_originals", "_stored"})

    # ---- checks, before anything changes --------------------------------------------------------------

    def _calibrated(self) -> tuple[float, float, float, dict[str, tuple[float, float]]]:
        """(alpha, beta, threshold, per-layer (alpha, beta)) from the options or the calibration file."""
        cfg = self.config
        if not cfg.calibration:
            return cfg.alpha, cfg.beta, cfg.threshold, {}
        try:
            data = json.loads(Path(cfg.calibration).read_text())
            layers = {name: (float(a), float(b)) for name, (a, b) in data.get("layers", {}).items()}
            values = (float(data["alpha"]), float(data["beta"]), float(data.get("threshold", cfg.threshold)))
            if not all(math.isfinite(v) for v in (*values, *(x for ab in layers.values() for x in ab))):
                raise ValueError("a value is not finite")
            if values[2] < 0:
                raise ValueError(f"threshold {values[2]} is negative")
            return (*values, layers)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise InvalidOptionError(f"sixbit: option calibration={cfg.calibration!r} is not a readable calibration "
                                     f"file ({type(err).__name__}: {err}); expected the JSON `accel calibrate` writes."
                                     ) from err

    def _linears(self, target: PatchTarget) -> list[tuple[str, torch.nn.Module, str, torch.nn.Linear]]:
        """(block name, block, layer name, layer) for every linear layer inside the denoisers' blocks
        (a second denoiser's names carry its component: "transformer_2.blocks.0.attn1.to_q")."""
        found = []
        for d in target.denoisers:
            prefix = f"{d.component}." if d is not target.denoisers[0] else ""
            for ref in d.adapter.blocks(d.module):
                for sub, layer in ref.module.named_modules():
                    if isinstance(layer, torch.nn.Linear):
                        found.append((prefix + ref.name, ref.module, f"{prefix}{ref.name}.{sub}", layer))
        return found

    def check(self, target: PatchTarget) -> None:
        super().check(target)
        self._calibrated()
        linears = self._linears(target)
        if self.config.weights:
            self._check_stored(linears)
        if not linears:
            raise UnsupportedModelError(f"accel: method 'sixbit' found no linear layer in the blocks of {target.describe()}.")
        bad = [name for _, _, name, layer in linears if not _divisible(layer, self.config.hadamard)]
        if bad and self.config.unsupported == "refuse":
            size = max(self.config.hadamard, 16)
            raise UnsupportedModelError(
                f"accel: method 'sixbit' blocks each weight row in {size}s; these layers' input sizes are not "
                f"multiples of {size}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Pass unsupported='skip' "
                "to leave them in full precision.")

    def _check_stored(self, linears: list[tuple[str, torch.nn.Module, str, torch.nn.Linear]]) -> None:
        """The `weights=` directory: readable, and a packed weight of the right shape for every layer."""
        where = f"sixbit: option weights={self.config.weights!r}"
        try:
            stored = _load_packed(Path(self.config.weights))
        except Exception as err:  # OSError, JSON, safetensors' own errors: all mean an unusable directory
            raise InvalidOptionError(f"{where} is not a directory written by accel.quant.save ({type(err).__name__}: "
                                     f"{err}).") from err
        rotation = json.loads((Path(self.config.weights) / "sixbit.json").read_text()).get("hadamard", 0)
        if int(rotation) != self.config.hadamard:
            raise InvalidOptionError(f"{where} was saved with hadamard={int(rotation)}; pass the same (got "
                                     f"hadamard={self.config.hadamard}): its weights are rotated that way.")
        self._stored = stored  # apply uses these (checked) weights
        for _, _, name, layer in linears:
            if not _divisible(layer, self.config.hadamard):
                continue
            if name not in stored:
                raise InvalidOptionError(f"{where} has no weights for {name}.")
            if stored[name].shape != (layer.out_features, layer.in_features):
                raise InvalidOptionError(f"{where}: {name} is stored as {stored[name].shape}, the model's layer is "
                                         f"{(layer.out_features, layer.in_features)}.")

    # ---- patching -------------------------------------------------------------------------------------

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        cfg = self.config
        self.tracker = tracker
        # under context parallelism the router's statistics are summed over the ranks before deciding
        self.parallel_setup = parallel.Watched(target, self.name)
        self.cp = self.parallel_setup.first()
        self.alpha, self.beta, self.threshold, per_layer = self._calibrated()
        self.blocks: dict[str, BlockState] = {}
        self.layers: list[LayerState] = []
        self._originals: dict[str, Any] = {}
        stored = self._stored if cfg.weights else None
        skipped = []
        device_is_cpu = True
        quantized = []
        for block_name, block, name, layer in self._linears(target):
            if not _divisible(layer, cfg.hadamard):
                skipped.append(name)
                continue
            device_is_cpu = layer.weight.device.type == "cpu"
            state = self.blocks.get(block_name)
            if state is None:
                state = self.blocks[block_name] = BlockState(block_name, block)
                self._hook_block(state, journal)
            weight = layer.weight.detach()
            if cfg.hadamard:
                weight = formats.rotate_blocks(weight.float(), cfg.hadamard)
            if stored is not None:
                packed = stored[name]
            else:
                packed = formats.quantize_nvfp4(weight.float())
            packed = packed.to(layer.weight.device)
            cached = cfg.int8_weights == "cached" and cfg.route != "nvfp4"  # an all-NVFP4 run never reads it
            int8 = formats.int8_from_nvfp4(packed) if cached else None
            x86 = formats.prepack_x86(int8) if int8 is not None else None
            alpha, beta = per_layer.get(name, (self.alpha, self.beta))
            lstate = LayerState(name, state, packed, int8, x86, layer.bias, alpha, beta)
            self.layers.append(lstate)
            state.layers.append(lstate)
            journal.set_attr(layer, "forward", self._forward(lstate))
            quantized.append((name, layer))
        self._stash_originals(quantized, journal, device_is_cpu)
        self.counters.update(self._memory())
        self.counters["predictor"] = {"alpha": self.alpha, "beta": self.beta, "threshold": self.threshold,
                                      "per_layer_lines": len(per_layer),
                                      "source": cfg.calibration or "options", "weights": cfg.weights or "quantized"}
        self.unsupported = skipped

    def _forward(self, layer: LayerState) -> Any:
        rotate = self.config.hadamard

        def forward(x: torch.Tensor) -> torch.Tensor:
            block = layer.block
            block.ran = True
            if rotate:
                x = formats.rotate_blocks(x, rotate)
            route = layer.route
            if route == "refresh":  # Purified Delta Refresh: outlier-heavy inputs are not quantized
                magnitude = x.detach().abs().float()
                route = "a16" if self._outliers(magnitude) else "int8"
            if route == "int8":
                out, path = self._int8(layer, x)
            elif route == "a16":
                out, _ = formats.nvfp4_linear(x, layer.nvfp4, layer.bias, activations="none")
                path = "w4a16-dequant"
            else:
                out, path = formats.nvfp4_linear(x, layer.nvfp4, layer.bias)
            layer.ran_as = route
            self._count(f"{route}_layer_calls")
            paths = self.counters.setdefault("paths", {})
            if path not in paths:
                logger.info("accel: sixbit runs %s (%s)", path, layer.name)
            paths[path] = paths.get(path, 0) + 1
            return out

        return forward

    @staticmethod
    def _int8(layer: LayerState, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The INT8 route: on a CPU through PyTorch's x86 int8 GEMM (weights prepacked once, or cast from
        NVFP4 and packed at each call), elsewhere `torch._int_mm`."""
        n = layer.nvfp4.shape[0]
        if layer.int8_x86 is not None:
            return formats.int8_linear_x86(x, layer.int8_x86, n, layer.bias)
        weight = layer.int8 if layer.int8 is not None else formats.int8_from_nvfp4(layer.nvfp4)
        packed = formats.prepack_x86(weight) if x.device.type == "cpu" else None
        if packed is not None:
            out, path = formats.int8_linear_x86(x, packed, n, layer.bias)
            return out, path + " (packed per call)"
        return formats.int8_linear(x, weight, layer.bias)

    def _outliers(self, magnitude: torch.Tensor) -> bool:
        """Purified Delta Refresh's test: the input's largest magnitude above `outlier_ratio` times its mean
        (over the whole sequence, every rank's shard, under context parallelism)."""
        if self.cp is None:
            return bool(magnitude.amax() > self.config.outlier_ratio * magnitude.mean())
        (peak,) = parallel.maxes(self.cp, [magnitude.amax()])
        total, count = parallel.sums(self.cp, [magnitude.sum(), torch.tensor(float(magnitude.numel()))])
        return peak > self.config.outlier_ratio * total / count

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _hook_block(self, state: BlockState, journal: Journal) -> None:
        """Before the block: its route for this step from Gamma(t-1); after: its Gamma, or None if skipped."""
        io = block_io(state.module)

        def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            branch = self.tracker.branch
            gamma = state.gamma.get(branch)
            # None (not missing): skipped at the previous step, so this is a refresh of the cached delta
            refresh = self.config.purified_refresh and branch in state.gamma and gamma is None
            for layer in state.layers:
                if self.config.route != "predictor":
                    layer.route = self.config.route
                elif refresh:
                    layer.route = "refresh"
                else:
                    volatile = gamma is None or layer.alpha * gamma + layer.beta > self.threshold
                    layer.route = "int8" if volatile else "nvfp4"
            state.ran = False
            args, kwargs = parallel.split_inputs(module, args, kwargs)  # the rank's shard, as the block sees it
            state.hidden_in = io.inputs(module, args, kwargs)[0]

        def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden_in, state.hidden_in = state.hidden_in, None
            step = self.tracker.step
            per_step = self.counters.setdefault("per_step", [])
            while len(per_step) <= step:
                per_step.append([0, 0, 0, 0])  # layer calls in NVFP4, INT8, A16; skipped blocks (all CFG branches)
            if not state.ran:
                state.gamma[self.tracker.branch] = None  # skipped (TDC): a refresh at the next computed step
                per_step[step][3] += 1
                self._count("skipped_block_calls")
                self.counters["skipped_layer_calls"] = self.counters.get("skipped_layer_calls", 0) + len(state.layers)
                return
            for layer in state.layers:
                per_step[step][("nvfp4", "int8", "a16").index(layer.ran_as)] += 1
            hidden_out = io.outputs(output)[0]
            if isinstance(hidden_in, torch.Tensor) and hidden_out.shape == hidden_in.shape:
                change = (hidden_out.float() - hidden_in.float()).abs().sum()
                base = hidden_in.float().abs().sum()
                if self.cp is None:
                    state.gamma[self.tracker.branch] = float(change / base.clamp_min(1e-12))
                else:  # the whole sequence's Gamma on every rank: the same route everywhere
                    change_all, base_all = parallel.sums(self.cp, [change, base])
                    state.gamma[self.tracker.branch] = change_all / max(base_all, 1e-12)

        disable = torch.compiler.disable
        journal.add_torch_hook(state.module.register_forward_pre_hook(disable(before), with_kwargs=True))
        journal.add_torch_hook(state.module.register_forward_hook(disable(after), with_kwargs=True))

    # ---- the full-precision originals -----------------------------------------------------------------

    def _stash_originals(self, layers: list[tuple[str, torch.nn.Linear]], journal: Journal, cpu_model: bool) -> None:
        """Move every quantized layer's weight off the device (or drop it), leaving an empty tensor of its
        dtype in the same Parameter; undo puts the same values back in the same Parameter."""
        where = self.config.originals
        if where == "auto":
            where = "disk" if cpu_model else "cpu"
        self.counters["originals"] = where
        params = {name: layer.weight for name, layer in layers}
        saved: dict[str, Any] = {}
        if where == "disk":
            from safetensors.torch import save_file

            fd, path = tempfile.mkstemp(prefix="accel-sixbit-", suffix=".safetensors")
            os.close(fd)
            save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, path)
            saved["file"] = path
            # the file goes with the patch: at unpatch, or when the patch is garbage-collected / at exit
            saved["remove"] = weakref.finalize(self, _remove, path)
        elif where == "cpu":
            saved["tensors"] = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        kinds = {n: (p.device, p.dtype) for n, p in params.items()}
        self._originals = saved

        def restore() -> None:
            if where == "disk":
                from safetensors.torch import load_file

                tensors = load_file(saved["file"])
                saved["remove"]()
            else:
                tensors = saved.get("tensors", {})
            for n, p in params.items():
                device, dtype = kinds[n]
                p.data = tensors[n].to(device=device, dtype=dtype)

        for p in params.values():  # the same Parameter stays (optimizers, tied weights); its values leave
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        journal.call_on_undo(restore)

    def before_unpatch(self) -> None:
        if self.counters.get("originals") == "drop":
            raise AccelError("accel: sixbit was patched with originals='drop': the full-precision weights were freed, "
                             "so unpatch cannot restore them; the patch stays in force. Reload the model instead.")

    # ---- stats ----------------------------------------------------------------------------------------

    def _memory(self) -> dict[str, Any]:
        held = sum(layer.nvfp4.nbytes + (layer.int8.nbytes if layer.int8 is not None else 0) for layer in self.layers)
        bf16 = sum(2 * layer.nvfp4.shape[0] * layer.nvfp4.shape[1] for layer in self.layers)
        return {"weight_bytes": held, "bf16_weight_bytes": bf16, "memory_ratio_vs_bf16": round(bf16 / max(held, 1), 3),
                "layers": len(self.layers)}

    def reset_run(self) -> None:
        keep = {k: self.counters[k] for k in ("weight_bytes", "bf16_weight_bytes", "memory_ratio_vs_bf16", "layers",
                                              "originals", "predictor") if k in self.counters}
        super().reset_run()
        self.counters.update(keep)
        self.parallel_setup.check()
        if self.unsupported:
            self.counters["unsupported_layers"] = len(self.unsupported)
        for block in self.blocks.values():
            block.gamma.clear()

    def end_branch(self, branch: str) -> None:
        for block in self.blocks.values():
            block.gamma.pop(branch, None)

    def needs_step_count(self) -> bool:
        return False

    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        nv, i8, a16 = (out.get(f"{r}_layer_calls", 0) for r in ("nvfp4", "int8", "a16"))
        if nv + i8 + a16:  # NVFP4 = 4 bits + an 8-bit scale per 16; A16 counted as 16 bits
            bits = 4.5 * nv + 8 * i8 + 16 * a16
            out["activation_bits"] = round(bits / (nv + i8 + a16), 3)
            # the paper's accounting ("W4A6"): a layer call that TDC skipped counts as zero bits
            out["activation_bits_with_skips"] = round(bits / (nv + i8 + a16 + out.get("skipped_layer_calls", 0)), 3)
        return out


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


# ---- saving and loading the packed weights -------------------------------------------------------------


def save(patched: Any, directory: str | os.PathLike) -> Path:
    """Write the packed NVFP4 weights of a sixbit patch (a `Patch` or the patched pipeline/denoiser) to
    `directory`/sixbit.safetensors, with the predictor's alpha, beta and threshold in sixbit.json. Load with
    `accel.patch(pipe, method="sixbit", weights=directory)`: nothing is quantized again."""
    from safetensors.torch import save_file

    from accel.patching import Patch, patch_of

    try:
        handle = patched if isinstance(patched, Patch) else patch_of(patched)
    except TypeError:  # not an object a patch can be attached to
        handle = None
    if handle is not None and not handle.active:
        raise AccelError("accel.quant.save: this sixbit patch was removed (unpatch); save while it is in force.")
    method = next((m for m in (handle.methods if handle else ()) if isinstance(m, SixBit)), None)
    if method is None:
        raise AccelError("accel.quant.save: the object carries no sixbit patch; patch it with method='sixbit' first.")
    tensors: dict[str, torch.Tensor] = {}
    for layer in method.layers:
        tensors.update(layer.nvfp4.state_dict(f"{layer.name}."))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / "sixbit.safetensors"))
    meta = {"alpha": method.alpha, "beta": method.beta, "threshold": method.threshold,
            "hadamard": method.config.hadamard, "layers": [layer.name for layer in method.layers]}
    (out / "sixbit.json").write_text(json.dumps(meta, indent=2))
    return out


def _load_packed(directory: Path) -> dict[str, formats.NVFP4Weight]:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "sixbit.safetensors"))
    names = json.loads((directory / "sixbit.json").read_text())["layers"]
    return {name: formats.NVFP4Weight.from_state_dict(tensors, f"{name}.") for name in names}
