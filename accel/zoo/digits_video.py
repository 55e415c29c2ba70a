"""`digits-video`: a Wan-architecture image-to-video generator (real `WanImageToVideoPipeline`, Wan 2.2
TI2V style) of one real digit moving.

A 16x16 digit moves 1 px per frame across a 32x32 canvas for 13 frames, in one of four directions. The
first frame is given (a held-out digit at its start position); the model generates the other 12. The
prompt is two learned tokens, the digit's class and the direction; a learned null prompt is the negative
one, so CFG runs as Wan runs it, two transformer calls per step.

    pipe = accel.zoo.load("digits-video")
    clips = digits_video.make_videos("test", 2, seed=0)
    videos = digits_video.sample(pipe, clips.videos[:, 0], clips.labels, clips.directions)  # [2, 13, 1, 32, 32]
    accel.zoo.evaluate("digits-video", pipe, n=100, seed=0)   # {"accuracy", "motion", "n"}

Token layout: `FramePackVAE` packs 4 frames into the channels (Wan's 1 + 4k frame rule: 13 frames ->
4 latent frames), so the transformer sees 4 latent frames x 16x16 patches = 1,024 video tokens. As in
Wan 2.2 TI2V (`expand_timesteps=True`), the first latent frame holds the given frame, clean, at timestep 0.

Why image-to-video: Wan has no absolute position embedding (RoPE only), so a small Wan trained text-to-
video on CPU learned the motion but drew digits of no particular class (per-frame accuracy 0.16 after
88 minutes: the class token barely changed its predictions). Given the first frame, the task is the one
a video model is for: keep the subject and move it as the prompt says.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.utils import BaseOutput
from torch import nn

from . import calls, digits, judges

NAME = "digits-video"
CHECKPOINT = Path(__file__).parent / "checkpoints" / NAME / "model.safetensors"
STEPS, GUIDANCE = 20, 2.0  # CFG 2: 0.905 per generated frame, CFG 4: 0.878 (n=100, docs/reference-models.md)
CANVAS, DIGIT, FRAMES = 32, 16, 13  # canvas side, digit side (px), video frames (1 + 4k, as Wan)
SPEED = 1  # px per frame: the digit travels (FRAMES - 1) * SPEED = 12 px
DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # name -> (dy, dx)
TEXT_DIM, TEXT_TOKENS = 32, 2  # prompt: [class token, direction token]
TEMPORAL = 4  # frames per latent frame
LATENT_FRAMES = (FRAMES - 1) // TEMPORAL + 1
FIRST_FRAME_TOKENS = (CANVAS // 2) ** 2  # latent frame 0 after the (1, 2, 2) patching: the given first frame
TOKENS = LATENT_FRAMES * FIRST_FRAME_TOKENS

# Motion check (see `motion_ok`): tolerances in pixels over the clip.
MIN_PROGRESS = 0.5  # of the commanded travel, along the commanded direction
MAX_DRIFT = 3.0  # sideways, off the commanded direction
MAX_RESIDUAL = 1.5  # RMS distance of the centroids from their straight-line fit


@dataclass
class FramePackEncoding(BaseOutput):
    """What `FramePackVAE.encode` returns: diffusers' `retrieve_latents` reads `.latents`."""

    latents: torch.Tensor


class FramePackVAE(diffusers.ModelMixin, ConfigMixin):
    """A lossless, weight-free "VAE" with Wan's 1 + 4k frame layout: frame 0 repeated 4 times, then each
    4 frames, are stacked into the channels. The Wan pipelines' decode path (latents_mean/std, z_dim, the
    scale factors) runs unchanged, and the transformer gets a 4-channel latent of 4 frames per 13."""

    @register_to_config
    def __init__(self, z_dim: int = TEMPORAL, scale_factor_temporal: int = TEMPORAL, scale_factor_spatial: int = 1,
                 latents_mean: tuple = (0.0,) * TEMPORAL, latents_std: tuple = (1.0,) * TEMPORAL) -> None:
        # z_dim = frames per latent frame (1 channel each); pixels in [-1, 1] are already unit-scale.
        super().__init__()
        self.register_buffer("_device_anchor", torch.zeros(1), persistent=False)

    def encode_pixels(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 1, F, H, W] with F = 1 + 4k -> [B, 4, 1 + k, H, W]."""
        b, c, f, h, w = video.shape
        k = self.config.scale_factor_temporal
        if c != 1 or f % k != 1:
            raise ValueError(f"FramePackVAE takes [B, 1, 1 + {k}n, H, W] videos; got shape {tuple(video.shape)}.")
        padded = torch.cat([video[:, :, :1].expand(b, 1, k - 1, h, w), video], dim=2)
        return padded.reshape(b, (f + k - 1) // k, k, h, w).transpose(1, 2).contiguous()

    def encode(self, video: torch.Tensor, return_dict: bool = True) -> FramePackEncoding | tuple:
        """The pipeline's path for the given first frame ([B, 1, 1, H, W] -> one latent frame)."""
        z = self.encode_pixels(video)
        return FramePackEncoding(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        b, k, lf, h, w = z.shape
        video = z.transpose(1, 2).reshape(b, 1, lf * k, h, w)[:, :, k - 1 :]
        return DecoderOutput(sample=video) if return_dict else (video,)


class DigitPrompts(nn.Module):
    """The learned "text encoder": one token per class, one per direction, and a null prompt for CFG."""

    def __init__(self) -> None:
        super().__init__()
        self.classes = nn.Parameter(torch.randn(10, TEXT_DIM))
        self.directions = nn.Parameter(torch.randn(len(DIRECTIONS), TEXT_DIM))
        self.null = nn.Parameter(torch.randn(TEXT_TOKENS, TEXT_DIM))

    def forward(self, labels: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """[B] class labels, [B] direction indices -> prompt embeddings [B, 2, TEXT_DIM]."""
        return torch.stack([self.classes[labels], self.directions[directions]], dim=1)

    def negative(self, batch: int) -> torch.Tensor:
        return self.null.unsqueeze(0).expand(batch, -1, -1)


def digits_video_transformer() -> diffusers.WanTransformer3DModel:
    """Wan DiT, 4 layers of 3 heads x 32, patch (1, 2, 2): 4 x 16 x 16 = 1,024 tokens for 13 frames."""
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=3,
        attention_head_dim=32,
        in_channels=TEMPORAL,
        out_channels=TEMPORAL,
        text_dim=TEXT_DIM,
        freq_dim=64,
        ffn_dim=384,
        num_layers=4,
    )


def scheduler() -> diffusers.FlowMatchEulerDiscreteScheduler:
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0)


# Pipelines built by `load` -> their prompt table (the pipeline itself stays a plain WanImageToVideoPipeline).
PROMPTS: weakref.WeakKeyDictionary[Any, DigitPrompts] = weakref.WeakKeyDictionary()


def load(dtype: torch.dtype = torch.float32) -> diffusers.WanImageToVideoPipeline:
    """The trained pipeline from the committed checkpoint (fp16 storage, cast to `dtype`)."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(CHECKPOINT)).items()}
    transformer, prompts = digits_video_transformer(), DigitPrompts()
    transformer.load_state_dict({k[12:]: v for k, v in state.items() if k.startswith("transformer.")})
    prompts.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("prompts.")})
    transformer = (transformer if dtype == torch.float32 else transformer.to(dtype)).eval()
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=FramePackVAE(), scheduler=scheduler(), transformer=transformer,
        image_encoder=None, image_processor=None, expand_timesteps=True,
    )
    pipe.set_progress_bar_config(disable=True)
    PROMPTS[pipe] = prompts.eval().to(dtype)
    calls.OWN_INPUTS[pipe] = call_inputs
    return pipe


def _direction_ids(directions: list[str], n: int) -> torch.Tensor:
    names = list(DIRECTIONS)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or len(directions) != n:
        raise ValueError(
            f"directions must be {n} of {', '.join(names)} (one per label); got {directions!r}."
        )
    return torch.tensor([names.index(d) for d in directions])


def prompt_kwargs(pipe: Any, labels: list[int], directions: torch.Tensor, guidance: float) -> dict[str, Any]:
    """prompt_embeds (and the null negative_prompt_embeds when CFG is on) for `pipe(...)`."""
    if pipe not in PROMPTS:
        raise ValueError("This pipeline was not loaded by accel.zoo.load('digits-video'): it has no prompt table.")
    table = PROMPTS[pipe]
    with torch.no_grad():
        kw = {"prompt_embeds": table(torch.as_tensor(labels), directions), "guidance_scale": guidance}
        if guidance > 1.0:  # the Wan pipelines run CFG only above 1
            kw["negative_prompt_embeds"] = table.negative(len(labels))
    return kw


def call_inputs(pipe: Any, *, batch_size: int, seed: int, guidance_scale: float | None, **sizes: int | None
                ) -> dict[str, Any]:
    """`accel.zoo.inputs` for this entry: a seeded held-out first frame with its class/direction prompt, and
    the trained sizes. The pipeline conditions a whole batch on one image, so a batch repeats one clip."""
    clip = make_videos("test", 1, seed)
    scale = GUIDANCE if guidance_scale is None else float(guidance_scale)
    kw = prompt_kwargs(pipe, clip.labels.repeat(batch_size).tolist(), clip.directions.repeat(batch_size), scale)
    defaults = {"height": CANVAS, "width": CANVAS, "num_frames": FRAMES}
    return kw | {"image": to_unit(clip.videos[:, 0])} | {
        k: defaults[k] if sizes.get(k) is None else sizes[k] for k in defaults
    }


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], the range diffusers' image processors take for tensors."""
    return (frames + 1) / 2


def sample(pipe: Any, first_frames: torch.Tensor, labels: torch.Tensor | list[int],
           directions: torch.Tensor | list[str], seed: int = 0, steps: int = STEPS,
           guidance: float = GUIDANCE) -> torch.Tensor:
    """Videos in [-1, 1], [N, FRAMES, 1, CANVAS, CANVAS], continuing the given first frames [N, 1, CANVAS,
    CANVAS] (in [-1, 1]) with the class and direction prompts (directions as indices or names; a first
    frame's start position fits its direction, see `trajectory_starts`). One pipeline call per video (the
    pipeline conditions a whole batch on one image); video i's generator is seeded with seed + i."""
    labels = torch.as_tensor(labels)
    dirs = directions if isinstance(directions, torch.Tensor) else _direction_ids(directions, len(labels))
    out = []
    for i in range(len(labels)):
        kw = prompt_kwargs(pipe, labels[i : i + 1].tolist(), dirs[i : i + 1], guidance)
        with torch.no_grad():
            frames = pipe(image=to_unit(first_frames[i : i + 1]), **kw, height=CANVAS, width=CANVAS,
                          num_frames=FRAMES, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(seed + i), output_type="pt").frames
        out.append(frames.float())
    return torch.cat(out) * 2 - 1


# --- data: real digits moving at constant velocity --------------------------------------------------------


@dataclass(frozen=True)
class MotionVideos:
    """Videos [N, FRAMES, 1, CANVAS, CANVAS] in [-1, 1], class labels [N], direction indices [N]."""

    videos: torch.Tensor
    labels: torch.Tensor
    directions: torch.Tensor


def trajectory_starts(directions: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Top-left corner (y, x) at frame 0 [N, 2]: the start edge's 5 px band along the motion, and 5..11 px
    across it, so the whole 12 px path stays on the canvas."""
    n = len(directions)
    room = CANVAS - DIGIT  # 16: top-left positions 0..16
    travel = (FRAMES - 1) * SPEED
    along = torch.randint(0, room - travel + 1, (n,), generator=g)
    across = torch.randint(5, 12, (n,), generator=g)
    steps = torch.tensor([DIRECTIONS[d] for d in DIRECTIONS])[directions]  # [N, 2] (dy, dx)
    start_along = torch.where(steps.sum(-1) > 0, along, room - along)  # moving up/left: start at the far side
    return torch.where(steps != 0, start_along[:, None], across[:, None])


def render(tiles: torch.Tensor, starts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Pastes each [1, DIGIT, DIGIT] tile at start + t * SPEED * direction, frame by frame."""
    n = len(tiles)
    steps = torch.tensor([DIRECTIONS[d] for d in DIRECTIONS])[directions]
    videos = torch.full((n, FRAMES, 1, CANVAS, CANVAS), -1.0)
    for t in range(FRAMES):
        pos = starts + t * SPEED * steps
        for i in range(n):
            y, x = pos[i].tolist()
            videos[i, t, :, y : y + DIGIT, x : x + DIGIT] = tiles[i]
    return videos


def make_videos(split: str, n: int, seed: int, directions: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> MotionVideos:
    """n moving-digit videos from the digits of `split`, deterministic for a seed; `labels` picks each
    video's class (a random digit of that class), else the digits are drawn at random."""
    data = digits.load(split, side=DIGIT)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data.labels), (n,), generator=g)
    if labels is not None:
        pools = [torch.nonzero(data.labels == c).flatten() for c in range(10)]
        idx = torch.stack([pools[c][i % len(pools[c])] for c, i in zip(labels.tolist(), idx.tolist(), strict=True)])
    dirs = torch.randint(len(DIRECTIONS), (n,), generator=g) if directions is None else directions
    videos = render(data.images[idx], trajectory_starts(dirs, g), dirs)
    return MotionVideos(videos, data.labels[idx], dirs)


# --- judging: class per frame, and the trajectory -----------------------------------------------------------


def centroids(videos: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centroid (y, x) of every frame, [N, F, 2], in pixels. Ink is brightness above a
    quarter of the range; a frame with (almost) no ink gets the canvas centre."""
    ink = ((videos[:, :, 0] + 1) / 2 - 0.25).clamp(min=0)  # [N, F, H, W]
    mass = ink.sum((-2, -1))
    coords = torch.arange(videos.shape[-1], dtype=ink.dtype)
    cy = (ink.sum(-1) * coords).sum(-1) / mass.clamp(min=1e-6)
    cx = (ink.sum(-2) * coords).sum(-1) / mass.clamp(min=1e-6)
    centre = (videos.shape[-1] - 1) / 2
    empty = mass < 1.0
    return torch.stack([cy.masked_fill(empty, centre), cx.masked_fill(empty, centre)], dim=-1)


def motion_ok(videos: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per video: does the digit follow the commanded straight line? The centroids are fitted by a
    least-squares line in time; the video passes when the fitted travel along the commanded direction is
    at least MIN_PROGRESS of the commanded 12 px, the sideways drift at most MAX_DRIFT px, and the RMS
    residual of the fit at most MAX_RESIDUAL px. A static digit fails the first test."""
    c = centroids(videos)  # [N, F, 2]
    t = torch.arange(c.shape[1], dtype=c.dtype)
    tc = t - t.mean()
    slope = (tc[None, :, None] * (c - c.mean(1, keepdim=True))).sum(1) / tc.pow(2).sum()  # [N, 2] px/frame
    fit = c.mean(1, keepdim=True) + tc[None, :, None] * slope[:, None]
    residual = (c - fit).pow(2).sum(-1).mean(-1).sqrt()
    unit = torch.tensor([DIRECTIONS[d] for d in DIRECTIONS], dtype=c.dtype)[directions]
    span = t[-1] - t[0]
    along = (slope * unit).sum(-1) * span
    across = (slope * unit.flip(-1)).sum(-1).abs() * span
    travel = (FRAMES - 1) * SPEED
    return (along >= MIN_PROGRESS * travel) & (across <= MAX_DRIFT) & (residual <= MAX_RESIDUAL)


def frame_crops(videos: torch.Tensor) -> torch.Tensor:
    """Every frame cropped to DIGIT x DIGIT around its centroid (clamped to the canvas): [N * F, 1, D, D],
    the view the 32x32 judge was trained on."""
    n, f = videos.shape[:2]
    c = centroids(videos).round().long() - DIGIT // 2
    c = c.clamp(0, CANVAS - DIGIT)
    frames = videos.reshape(n * f, 1, CANVAS, CANVAS)
    pos = c.reshape(n * f, 2).tolist()
    return torch.stack([frames[i, :, y : y + DIGIT, x : x + DIGIT] for i, (y, x) in enumerate(pos)])


def judge_videos(videos: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor) -> dict[str, float]:
    """Per-frame class accuracy of the generated frames 1.. (judge on centroid crops; frame 0 is the given
    one) and the fraction of videos with correct motion (over the whole clip)."""
    judge = judges.load()
    generated = videos[:, 1:]
    per_frame = labels.repeat_interleave(generated.shape[1])
    return {
        "accuracy": judges.accuracy(judge, frame_crops(generated), per_frame),
        "motion": motion_ok(videos, directions).float().mean().item(),
    }


def evaluate(pipe: Any, n: int = 100, seed: int = 0, **options: Any) -> dict[str, float]:
    """Task accuracy of a (possibly accel-patched) pipeline over n held-out clips (test-split digits, never
    trained on), labels cycling 0..9 and directions cycling per ten (so n=40 covers every class x
    direction pair); the model continues each clip's first frame. Deterministic for a seed.
    `options`: steps, guidance (see `sample`)."""
    labels = torch.arange(n) % 10
    directions = (torch.arange(n) // 10) % len(DIRECTIONS)
    clips = make_videos("test", n, seed, directions=directions, labels=labels)
    videos = sample(pipe, clips.videos[:, 0], labels, directions, seed=seed, **options)
    return judge_videos(videos, labels, directions) | {"n": n}


# --- training ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 100000
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 100  # steps of linear warm-up
    final_lr: float = 0.05  # of `lr`, reached by a cosine decay at the wall-clock cap (or at `steps`)
    minutes: float = 55.0  # wall-clock cap; the checkpoint is saved whenever it stops
    threads: int = 1
    null_prob: float = 0.1  # prompt dropped to the null prompt, for CFG
    noise_shift: float = 3.0  # s -> k s / (1 + (k - 1) s): k > 1 trains more at high noise (where the motion is set)
    snapshot: str | None = None  # where to save the EMA weights every 1,000 steps (None: only at the end)


class _Trainable(nn.Module):
    """The transformer and the prompt table, trained (and EMA-averaged, saved) together."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = digits_video_transformer()
        self.prompts = DigitPrompts()


def train(cfg: TrainConfig = TrainConfig(), init: Path | None = None) -> nn.Module:
    """Rectified flow (Wan's objective): x_t = (1 - s) x0 + s noise, predict noise - x0, s from a
    logit-normal mixed with uniform. Fresh moving-digit videos every step from the train split only.
    `init`: a checkpoint to fine-tune from. Keeps an EMA of the weights. The learning rate decays along
    a cosine in wall-clock time (the run's length is a time cap, so the step count is not known ahead)."""
    from safetensors.torch import load_file

    from .train import save_state, update_ema

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = digits.load("train", side=DIGIT)
    vae = FramePackVAE()
    model = _Trainable().train()
    if init is not None:
        model.load_state_dict({k: v.float() for k, v in load_file(str(init)).items()})
    ema = _Trainable().eval()
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(len(data.labels), (cfg.batch,), generator=g)
        dirs = torch.randint(len(DIRECTIONS), (cfg.batch,), generator=g)
        videos = render(data.images[idx], trajectory_starts(dirs, g), dirs)
        x0 = vae.encode_pixels(videos.transpose(1, 2))
        s = torch.where(torch.rand(cfg.batch, generator=g) < 0.25, torch.rand(cfg.batch, generator=g),
                        torch.sigmoid(torch.randn(cfg.batch, generator=g)))
        s = cfg.noise_shift * s / (1 + (cfg.noise_shift - 1) * s)
        noise = torch.randn(x0.shape, generator=g)
        xt = (1 - s.view(-1, 1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1, 1) * noise
        xt[:, :, 0] = x0[:, :, 0]  # the given first frame, clean (as WanImageToVideoPipeline with expand_timesteps)
        timestep = (s * 1000)[:, None].repeat(1, TOKENS)
        timestep[:, :FIRST_FRAME_TOKENS] = 0
        prompt = model.prompts(data.labels[idx], dirs)
        drop = torch.rand(cfg.batch, generator=g) < cfg.null_prob
        prompt = torch.where(drop[:, None, None], model.prompts.negative(cfg.batch), prompt)
        pred = model.transformer(xt, timestep=timestep, encoder_hidden_states=prompt, return_dict=False)[0]
        loss = nn.functional.mse_loss(pred[:, :, 1:], (noise - x0)[:, :, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        progress = min(1.0, max(step / cfg.steps, (time.time() - start) / (cfg.minutes * 60)))
        cosine = cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * cosine
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        update_ema(ema, model, step)
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {lr:.2e} {time.time() - start:.0f}s", flush=True)
        if cfg.snapshot is not None and step % 1000 == 999:
            save_state(ema, Path(cfg.snapshot))
        if time.time() - start > cfg.minutes * 60:
            print(f"time cap reached at step {step}", flush=True)
            break
    return ema


def save_samples(pipe: Any, path: str = "docs/digits-video-samples.png", seed: int = 1) -> None:
    """The docs figure: 8 videos (rows; held-out first frames of classes 0..7, directions cycling right,
    left, down, up), 13 frames each (columns)."""
    from .train import save_grid

    clips = make_videos("test", 8, seed, directions=torch.arange(8) % len(DIRECTIONS), labels=torch.arange(8))
    videos = sample(pipe, clips.videos[:, 0], clips.labels, clips.directions, seed=seed)
    save_grid(videos.reshape(-1, 1, CANVAS, CANVAS), path, rows=len(videos))


def reproduce(seed: int = 0, minutes: float = 58.0, threads: int = 2) -> None:
    """`python -m accel.zoo.train digits-video`: the committed recipe on `threads` threads in `minutes`,
    split 10:5:3 over three stages, each with a fresh warm-up and cosine: from scratch at 1e-3, a fine-tune
    at 3e-4, then one at 1e-4 without the noise shift (it trains the low-noise end, where the strokes are
    cleaned up; +2 points per frame). The learning rates follow the wall clock, so the step counts and
    the weights depend on the machine's speed. Saves, evaluates (n = 100) and writes the sample grid."""
    from .train import save_state

    stages = [
        TrainConfig(seed=seed, minutes=minutes * 10 / 18, threads=threads),
        TrainConfig(seed=seed + 1, lr=3e-4, warmup=20, minutes=minutes * 5 / 18, threads=threads),
        TrainConfig(seed=seed + 2, lr=1e-4, warmup=20, minutes=minutes * 3 / 18, threads=threads, noise_shift=1.0),
    ]
    previous = None
    for i, cfg in enumerate(stages):
        out = CHECKPOINT if i == len(stages) - 1 else CHECKPOINT.with_name(f"stage{i + 1}.safetensors")
        save_state(train(cfg, init=previous), out)
        if previous is not None:
            previous.unlink()
        previous = out
    pipe = load()
    torch.set_num_threads(2)
    print("evaluate", evaluate(pipe, n=100, seed=0), flush=True)
    save_samples(pipe)
