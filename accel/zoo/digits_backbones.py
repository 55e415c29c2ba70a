"""The shared recipe behind "digits-dico", "digits-lego", "digits-dit" and "digits-dit-p2": backbones of about
equal parameter count, trained on the same digits with the same budget, so they can be compared fairly.

    pipe = accel.zoo.load("digits-dico")                    # DiCoPipeline; "digits-lego": LEGOPipeline,
    accel.zoo.evaluate("digits-dico", pipe, n=100, seed=0)  # "digits-dit", "digits-dit-p2": DiTPipeline
    python -m accel.zoo.train digits-dico --overwrite       # or: python -m accel.models.train dico --overwrite

The entries are this module's functions with their kind bound (`reference.TRAINED`); this module holds
what they share, and everything it can take from `digits_image` it imports from there:

- **latent space**: `digits_image`'s 32x32 digits through its weight-free `PixelShuffleVAE`, so every
  model works on a 4x16x16 latent, class-conditional over the 10 digits;
- **objective**: DDPM epsilon prediction on `digits_image`'s schedule (squaredcos_cap_v2, 1000 steps),
  with its training batches (`digits_image.noisy_batch`) and each model's own label dropout (p = 0.1 in
  train mode) teaching the null class for guidance. LEGO supervises **every brick**: the loss is the
  mean over the bricks' outputs (the paper's joint loss, notes section 2.3), which is what makes the stack
  without its top brick a denoiser (`accel.patch(pipe, method="lego-skip")`). LEGO's paper trains with
  EDM preconditioning; here it uses the epsilon objective so that all of them sample with the same
  scheduler (the notes, section 3.3: the bricks do not depend on the parameterisation);
- **budget**: the same optimizer steps, batch, learning-rate schedule (AdamW, linear warm-up, cosine to
  5%) and EMA for all of them, on 2 threads, with a wall-clock cap (`TrainConfig.minutes`). The schedule
  follows the larger of step and time progress, so a run stopped by the cap still ends its decay;
  `reproduce` says when the cap, not the step budget, stopped a run (the budgets then differ);
- **sampling and judging**: `digits_image`'s DDIM scheduler, 20 steps, guidance 4, and its `evaluate`
  (the digit judge's class accuracy).

Two DiTs, the same but for the patch size. "digits-dit" is `digits_image`'s config (4 layers of width 96,
3 heads, patch 1: 256 tokens, as many as DiT-S/2 has on a 256 px image's 32x32 latent); "digits-dit-p2" takes
patch 2 (64 tokens), the patch the DiCo paper's DiTs use, which puts its forward cost beside DiCo's (32.1 M
multiply-accumulates against DiCo's 29.6 M; the paper's pairs: DiCo 0.70-0.74 of DiT-S/B/XL-2) where the
patch-1 DiT costs 5.5x DiCo's (`forward_macs`).

Sizes (`reachable_parameters`): DiT 828,964 (1,209,124 in all, but 990 rows of each block's 1,001-row label
table are never read: the model has 10 classes, and `DiTPipeline` asks for the null class as id 1000), DiT
patch 2 831,280 (its patch embedding and output layer are 4x wider), DiCo 838,900, LEGO 804,040 (plus 23,232
frozen position-table values). Checkpoints are fp16 safetensors without the unread label rows:
about 1.6-1.7 MB each.

Like `backbones`, this module imports from accel (`accel.models`): the backbones are accel's own models.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import digits_image

KINDS = ("dico", "lego", "dit", "dit-p2")
DIT_PATCH = {"dit": 1, "dit-p2": 2}  # the DiT kinds and their patch sizes
CHECKPOINTS = Path(__file__).parent / "checkpoints"
STEPS, GUIDANCE = digits_image.STEPS, digits_image.GUIDANCE
NUM_CLASSES = 10
SAMPLE_SIZE, CHANNELS = 16, 4  # PixelShuffleVAE's latent of a 32x32 digit

# DiCo: the paper's U-shaped layout (levels C/2C/4C at 16x16, 8x8 and 4x4; top decoder at 2C), scaled
# down from DiCo-S (C 128, depths 5,4,4,4,4) in width and depth; no learned variance (DDIM needs none).
DICO_CONFIG: dict[str, Any] = {"hidden_size": 24, "depths": (3, 3, 2, 3, 3), "mlp_ratio": 2.0, "learn_sigma": False}
# LEGO: a progressive-growth stack, LEGO-XL-PG-32's bricks (4 -> 16 -> 32, patches 2, 8, 2) halved for the
# 16x16 latent: 2x2 regions of single-latent tokens, 8x8 regions of 4x4 patches, then the whole latent at
# patch 1 (256 tokens, as the DiT). The top brick holds 3 of the 5 blocks: skipping it saves about 73% of
# a forward (LEGO-XL-PG-32: 73%).
LEGO_CONFIG: dict[str, Any] = {"hidden_size": 88, "num_heads": 2, "brick_sizes": (2, 8, 16), "patch_sizes": (1, 4, 1),
                               "depths": (1, 1, 3), "mlp_ratio": 4.0}
_LABEL_TABLE = "class_embedder.embedding_table.weight"  # DiT's per-block label tables


class CheckpointMissingError(FileNotFoundError):
    """An entry's checkpoint is not there (it has not been trained yet): the message names the command."""


def entry_name(kind: str) -> str:
    """"dico" -> "digits-dico"; raises `ValueError` for a kind not in `KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown backbone {kind!r}; expected one of {', '.join(KINDS)}")
    return f"digits-{kind}"


def checkpoint(kind: str) -> Path:
    """Where the entry's fp16 transformer weights live."""
    return CHECKPOINTS / entry_name(kind) / "transformer.safetensors"


def build(kind: str) -> torch.nn.Module:
    """A freshly initialised model of the entry's config (from the global RNG), in train mode."""
    from accel.models import DiCoModel, LEGOModel

    entry_name(kind)
    common = {"sample_size": SAMPLE_SIZE, "in_channels": CHANNELS, "num_classes": NUM_CLASSES}
    if kind in DIT_PATCH:
        return digits_image.digits_image_transformer(patch_size=DIT_PATCH[kind])
    model = DiCoModel(**common, **DICO_CONFIG) if kind == "dico" else LEGOModel(**common, **LEGO_CONFIG)
    _label_init_as_dit(model)
    return model


def _label_init_as_dit(model: torch.nn.Module) -> None:
    """The label embeddings initialised as diffusers' DiT initialises its own (`nn.Embedding`'s N(0, 1)),
    not N(0, 0.02) as the DiCo and LEGO papers (and DiT's paper) do: one convention for all of them, so that
    the equal budget compares architectures. With N(0, 0.02) and this short budget the label signal stays
    50x weaker than DiT's: measured, DiCo's output moved 0.006 between two labels at t=900 after 600 steps
    (the trained DiT: 0.036, DiCo with N(0, 1): 0.034), and DiCo trained to 13% accuracy (chance: 10%). The
    null row stays as the model made it (LEGO's one-hot Linear has none)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("y_embedder"):
                param.normal_(0.0, 1.0)


def _unread_label_rows(name: str, param: torch.Tensor) -> int:
    """Rows of a DiT label table that no call reads: all but the 10 classes and the last (null) row."""
    return param.shape[0] - NUM_CLASSES - 1 if name.endswith(_LABEL_TABLE) and param.shape[0] > NUM_CLASSES + 1 else 0


def reachable_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters a forward over the 10 digits (and the null class) can read: every trainable
    parameter except the rows of DiT's 1,001-row label tables that stand for classes 10..999. This is the
    count the entries are matched on."""
    return sum(p.numel() - _unread_label_rows(n, p) * p.shape[-1] for n, p in model.named_parameters() if p.requires_grad)


def model_macs(model: torch.nn.Module, x: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> int:
    """Multiply-accumulates of one no-grad forward of a DiT-style `model` on `x`, counted by
    `torch.utils.flop_counter.FlopCounterMode` (its FLOPs / 2) with attention on SDPA's math kernel, whose
    matmuls the counter sees (it has no formula for the CPU flash kernel, and would leave attention out)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, timestep=timestep, class_labels=class_labels)
    return counter.get_total_flops() // 2


def forward_macs(kind: str) -> int:
    """Multiply-accumulates of one forward of the entry's model over one latent ([1, 4, 16, 16], a class
    label, one timestep; `model_macs`): the per-sample cost that an equal training-compute budget is
    matched on (a training step costs about three forwards for every backbone). Measured: DiT 164.2 M (113.9 M
    without attention), DiT patch 2 32.1 M, DiCo 29.6 M, LEGO 136.7 M. Deterministic; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        model = build(kind).eval()
        x = torch.zeros(1, CHANNELS, SAMPLE_SIZE, SAMPLE_SIZE)
        return model_macs(model, x, torch.tensor([500]), torch.tensor([0]))


def pipeline(kind: str, transformer: torch.nn.Module) -> Any:
    """The entry's pipeline around `transformer` (eval mode), with `digits_image`'s VAE and scheduler."""
    from accel.models import DiCoPipeline, LEGOPipeline

    if kind in DIT_PATCH:
        return digits_image.pipeline(transformer)
    cls = DiCoPipeline if kind == "dico" else LEGOPipeline
    pipe = cls(transformer=transformer.eval(), scheduler=digits_image.scheduler(), vae=digits_image.PixelShuffleVAE())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- checkpoints ---------------------------------------------------------------------------------
def save(model: torch.nn.Module, path: Path) -> None:
    """fp16 safetensors of the state dict, DiT's label tables cut to their read rows (10 classes + null)."""
    from safetensors.torch import save_file

    state = {}
    for key, value in model.state_dict().items():
        if _unread_label_rows(key, value):
            value = torch.cat([value[:NUM_CLASSES], value[-1:]])
        state[key] = (value.half() if value.is_floating_point() else value).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load `save`'s file into `model` (float32); the label rows it left out are zeros (never read).

    Raises `CheckpointMissingError` when the file is absent."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointMissingError(f"checkpoint {path} is missing: this entry has not been trained yet")
    target = model.state_dict()
    state = {}
    for key, value in load_file(str(path)).items():
        value = value.float() if value.is_floating_point() else value
        if key in target and value.shape != target[key].shape and _unread_label_rows(key, target[key]):
            full = torch.zeros_like(target[key])
            full[:NUM_CLASSES], full[-1] = value[:NUM_CLASSES], value[-1]
            value = full
        state[key] = value
    model.load_state_dict(state)
    return model


def load(kind: str, dtype: torch.dtype = torch.float32) -> Any:
    """The trained entry's pipeline from its committed checkpoint (fp16 storage, cast to `dtype`).

    Raises `CheckpointMissingError` (a `FileNotFoundError`) naming the training command when the
    checkpoint has not been trained yet."""
    path = checkpoint(kind)
    if not path.is_file():
        raise CheckpointMissingError(
            f"{entry_name(kind)}: checkpoint {path} is missing: it has not been trained yet. Train it with "
            f"`python -m accel.zoo.train {entry_name(kind)}` (about 10 minutes on 2 CPU threads)."
        )
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; keep the caller's RNG
        model = load_weights(build(kind), path)
    if dtype != torch.float32:
        model = model.to(dtype)
    return pipeline(kind, model)


def evaluate(pipe: Any, n: int = 100, seed: int = 0, **options: Any) -> dict[str, float]:
    """`digits_image.evaluate`: the judge's class accuracy over n samples (labels cycling 0..9), DDIM 20
    steps and guidance 4 unless `options` (steps, guidance, batch) say otherwise."""
    return digits_image.evaluate(pipe, n=n, seed=seed, **options)


# ---- training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """The one budget the entries train with."""

    seed: int = 0
    steps: int = 1200  # optimizer steps: the budget (LEGO, the slowest per step, fits in ~10 min on 2 threads)
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 50  # linear warm-up steps
    final_lr: float = 0.05  # the cosine ends at this fraction of `lr`
    ema: float = 0.995
    minutes: float = 40.0  # a safety cap, not the budget (steps are): the checkpoint is saved whenever training stops
    threads: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch < 1 or self.minutes <= 0:
            raise ValueError(f"TrainConfig: steps={self.steps}, batch={self.batch} and minutes={self.minutes} "
                             "must be positive")


def lr_factor(cfg: TrainConfig, step: int, seconds: float) -> float:
    """The learning-rate multiplier at `step` after `seconds`: linear warm-up over `cfg.warmup` steps, then a
    cosine from 1 to `cfg.final_lr` over the run's progress, the larger of step/steps and seconds/cap."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, max(step / cfg.steps, seconds / (cfg.minutes * 60)))
    return cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def brick_outputs(model: torch.nn.Module, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Every LEGO brick's full-resolution prediction from one forward of the stack (read by forward hooks on
    the bricks, so they are exactly what the stack computes), bottom brick first."""
    outputs: list[torch.Tensor] = []
    handles = [brick.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for brick in model.model]
    try:
        model(xt, timestep=t, class_labels=y)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def losses(kind: str, model: torch.nn.Module, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
           noise: torch.Tensor) -> list[torch.Tensor]:
    """The supervised outputs' epsilon MSEs: one per brick for LEGO (bottom first), one otherwise. The
    training loss is their mean."""
    if kind == "lego":
        return [F.mse_loss(out, noise) for out in brick_outputs(model, xt, t, y)]
    pred = model(xt, timestep=t, class_labels=y).sample
    return [F.mse_loss(pred[:, : noise.shape[1]], noise)]


@dataclass
class Trained:
    """A finished run: the trained model and its EMA (the one saved), and what happened."""

    model: torch.nn.Module
    ema: torch.nn.Module
    steps: int  # optimizer steps taken
    seconds: float
    capped: bool  # stopped by the wall-clock cap before the step budget
    history: list[tuple[int, list[float]]] = field(default_factory=list)  # (step, per-output losses)


def train(kind: str, cfg: TrainConfig = TrainConfig(), log: Callable[[str], None] | None = print) -> Trained:
    """Train the entry's model with the shared recipe (module docstring). `log` gets a line every 100 steps."""
    from .train import update_ema

    entry_name(kind)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    latents, labels = digits_image.training_latents()
    model = build(kind).train()
    ema = copy.deepcopy(model).eval()
    abar = digits_image.scheduler().alphas_cumprod
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    start = time.time()
    run = Trained(model=model, ema=ema, steps=0, seconds=0.0, capped=False)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, step, time.time() - start)
        xt, t, y, noise = digits_image.noisy_batch(latents, labels, abar, cfg.batch)
        parts = losses(kind, model, xt, t, y, noise)
        loss = torch.stack(parts).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        update_ema(ema, model, step, decay=cfg.ema)
        run.steps = step + 1
        if step % 100 == 0 or step == cfg.steps - 1:
            run.history.append((step, [p.item() for p in parts]))
            if log:
                per = " ".join(f"{p.item():.4f}" for p in parts)
                log(f"{entry_name(kind)} step {step} loss {loss.item():.4f} ({per}) {time.time() - start:.0f}s")
        if time.time() - start > cfg.minutes * 60 and step < cfg.steps - 1:
            run.capped = True
            if log:
                log(f"{entry_name(kind)}: time cap reached at step {step} of {cfg.steps}: this run's budget is "
                    "smaller than the others'; rerun with a larger --minutes for equal budgets")
            break
    run.seconds = time.time() - start
    return run


def reproduce(kind: str, seed: int = 0, minutes: float = TrainConfig.minutes, steps: int = TrainConfig.steps,
              threads: int = TrainConfig.threads, out: Path | None = None) -> None:
    """`python -m accel.zoo.train digits-<kind>`: train with the shared budget, save the checkpoint, then
    evaluate (n=100, timed; LEGO also with lego-skip) and write `docs/digits-<kind>-samples.png`. With
    `out`, the checkpoint goes to out/digits-<kind>/transformer.safetensors and the figure to out/docs/,
    the zoo's committed files left as they are.

    Run it alone: two threads beside another multi-threaded job slow each step many times over (OpenMP
    threads wait for each other), and the wall-clock cap then cuts the budget."""
    from .train import save_grid

    name = entry_name(kind)
    weights = checkpoint(kind) if out is None else out / name / "transformer.safetensors"
    figure = Path("docs" if out is None else out / "docs") / f"{name}-samples.png"
    run = train(kind, TrainConfig(seed=seed, minutes=minutes, steps=steps, threads=threads))
    save(run.ema, weights)
    size = weights.stat().st_size
    print(f"{name}: {reachable_parameters(run.model):,} parameters, {run.steps} steps in {run.seconds:.0f}s"
          f"{' (time cap)' if run.capped else ''}; checkpoint {size / 1e6:.2f} MB", flush=True)
    with torch.random.fork_rng(devices=[]):
        pipe = pipeline(kind, load_weights(build(kind), weights))
    begin = time.perf_counter()
    print("evaluate", evaluate(pipe, n=100, seed=0), f"sampling {time.perf_counter() - begin:.1f}s", flush=True)
    if kind == "lego":
        import accel

        with accel.patch(pipe, method="lego-skip"):
            begin = time.perf_counter()
            print("evaluate lego-skip", evaluate(pipe, n=100, seed=0),
                  f"sampling {time.perf_counter() - begin:.1f}s", flush=True)
    labels = [c for _ in range(4) for c in range(10)]  # 4 rows of 0..9
    figure.parent.mkdir(parents=True, exist_ok=True)
    save_grid(digits_image.sample(pipe, labels, seed=1), str(figure), rows=4)
