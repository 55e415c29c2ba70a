"""`digits-copy-gemma`: the digits-copy task (`digits_copy.py`) in diffusers' `DiffusionGemmaPipeline`, with a
real transformers `DiffusionGemmaForBlockDiffusion` trained here.

    pipe = accel.zoo.load("digits-copy-gemma")               # DiffusionGemmaPipeline, model at pipe.model
    out = pipe(**digits_copy_gemma.call_args([...]))          # out.sequences: the 32 digits, then <eos>
    accel.zoo.evaluate("digits-copy-gemma", pipe, n=100, seed=0)

The prompt (0-64 fillers, `copy :`, 32 digits; the chat template appends `=`) goes through the causal
encoder into the pipeline's KV cache; the answer (the digits, then `<eos>` to 40 tokens) is denoised in
canvases of 8 tokens, 8 steps each, from uniformly random tokens (DiffusionGemma's uniform corruption:
`BlockRefinementScheduler` commits one token per step, `threshold` above 1, and renoises the rest), the
decoder attending to the cached context (the block-external attention FlashBlock reuses) and to the canvas.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import digits_copy, dllm

NAME = "digits-copy-gemma"
CHECKPOINT = Path(__file__).parent / "checkpoints" / NAME / "model.safetensors"
CANVAS = digits_copy.BLOCK
STEPS = digits_copy.STEPS
SIZE = dllm.Size(layers=4, width=128, heads=4, kv_heads=2, mlp=256, block_length=CANVAS, prompt_tokens=0,
                 gen_length=digits_copy.GEN_LENGTH, steps=STEPS)


def content(prompt: str) -> str:
    """The user turn of a digits-copy prompt: without its final `=`, which the chat template appends."""
    return prompt.removesuffix(" =")


def pipeline(model: Any) -> Any:
    import diffusers

    pipe = dllm.gemma_pipeline(model)
    pipe.scheduler = diffusers.BlockRefinementScheduler(threshold=1.5)  # one token committed per step
    return pipe


def call_args(prompts: list[str], **overrides: Any) -> dict[str, Any]:
    """The judge's call: greedy, every step of every canvas (no early stop), token ids out."""
    users = [content(p) for p in prompts]
    args = {"prompt": users if len(users) > 1 else users[0], "gen_length": digits_copy.GEN_LENGTH,
            "num_inference_steps": STEPS, "temperature": 0.0, "confidence_threshold": None,
            "eos_early_stop": False, "output_type": "seq", "generator": torch.Generator().manual_seed(0)}
    return {**args, **overrides}


def load(dtype: torch.dtype = torch.float32) -> Any:
    """The trained pipeline from the committed fp16 checkpoint."""
    from safetensors.torch import load_file

    with torch.random.fork_rng(devices=[]):
        model = dllm.build_gemma(SIZE)
    state = {k: v.float() for k, v in load_file(str(CHECKPOINT)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(dllm.tied_keys(model)):
        raise ValueError(f"{CHECKPOINT} does not match the {NAME} config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return pipeline(model.to(dtype).eval())


def evaluate(pipe: Any, n: int = 100, seed: int = 0, batch: int = 50, **options: Any) -> dict[str, float]:
    """Exact-match accuracy of the 32 digits and the first `<eos>` over n held-out prompts (digits-copy's
    held-out stream), through `pipe(**call_args(prompts))`. Prompts of one filler length share a batch
    (the pipeline pads no batch)."""
    if options:
        raise ValueError(f"{NAME} evaluate takes n, seed and batch; got unknown options {sorted(options)}")
    if n < 1:
        raise ValueError(f"n must be a positive number of prompts, got {n}")
    prompts, digits = digits_copy.problems(n, 10_000 + seed)
    tok = pipe.processor
    want = torch.tensor([tok.convert_tokens_to_ids([str(d) for d in row] + ["<eos>"]) for row in digits.tolist()])
    got = torch.empty(n, digits_copy.DIGITS + 1, dtype=torch.long)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p.split()), []).append(i)
    for rows in groups.values():
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            out = pipe(**call_args([prompts[i] for i in part])).sequences.reshape(len(part), -1)
            got[part] = out[:, : digits_copy.DIGITS + 1].cpu()
    return {"accuracy": float((got == want).all(dim=1).float().mean()), "n": n}


# ---- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    self_conditioning: float = 0.5  # the share of steps trained with the model's own previous logits
    minutes: float = 30.0  # wall-clock cap; the checkpoint is saved whenever it stops
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")


def _training_batch(tok: Any, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One canvas position and one filler length for the whole batch (no padding): (context ids [b, L]:
    the templated prompt and the answer's earlier canvases, clean; noisy canvas [b, 8]; clean canvas
    [b, 8]). Each sample draws a corruption rate t ~ U(0, 1] and replaces each canvas token by a uniformly
    random token with probability t (DiffusionGemma's uniform corruption)."""
    digits = torch.randint(10, (batch, digits_copy.DIGITS), generator=g)
    filler = int(torch.randint(digits_copy.MAX_FILLER + 1, (1,), generator=g))
    canvas = int(torch.randint(digits_copy.GEN_LENGTH // CANVAS, (1,), generator=g))
    eos = [tok.eos_token_id] * (digits_copy.GEN_LENGTH - digits_copy.DIGITS)
    rows = []
    for d in digits.tolist():
        prompt = tok.apply_chat_template([{"role": "user", "content": content(digits_copy.prompt(d, filler))}],
                                         add_generation_prompt=True, return_dict=True)["input_ids"]
        rows.append(prompt + tok.convert_tokens_to_ids([str(x) for x in d]) + eos)
    ids = torch.tensor(rows)
    split = ids.shape[1] - digits_copy.GEN_LENGTH + canvas * CANVAS
    context, clean = ids[:, :split], ids[:, split : split + CANVAS]
    rate = torch.rand(batch, 1, generator=g).clamp_min(1e-3)
    noise = torch.randint(len(tok), clean.shape, generator=g)
    noisy = torch.where(torch.rand(clean.shape, generator=g) < rate, noise, clean)
    return context, noisy, clean


def train(cfg: TrainConfig = TrainConfig(), log_every: int = 100) -> Any:
    """From scratch: the encoder writes the clean context into a `DynamicCache`, the decoder predicts the
    clean canvas from the noisy one (cross-entropy on every canvas token), with self-conditioning on the
    model's own detached logits in `cfg.self_conditioning` of the steps; AdamW, warmup, cosine decay."""
    from transformers import DynamicCache

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = dllm.build_gemma(SIZE).train()
    tok = dllm.tokenizer()
    tok.chat_template = dllm.CHAT_TEMPLATE
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))  # noqa: E731
    start, run = time.time(), 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        context, noisy, clean = _training_batch(tok, cfg.batch, g)
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        length = context.shape[1]
        model.model.encoder(input_ids=context, attention_mask=torch.ones_like(context), cache=cache,
                            position_ids=torch.arange(length).unsqueeze(0))
        positions = torch.arange(length, length + CANVAS).unsqueeze(0)
        previous = None
        if float(torch.rand(1, generator=g)) < cfg.self_conditioning:
            with torch.no_grad():
                previous = model(decoder_input_ids=noisy, cache=cache, decoder_position_ids=positions).logits
        logits = model(decoder_input_ids=noisy, cache=cache, self_conditioning_logits=previous,
                       decoder_position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), clean.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if step == 0 else 0.95 * run + 0.05 * loss.item()
        if step % log_every == 0:
            print(f"step {step} loss {run:.4f} lr {lr_at(step):.2e} {time.time() - start:.0f}s", flush=True)
        if time.time() - start > cfg.minutes * 60:
            print(f"time cap reached at step {step}", flush=True)
            break
    return model.eval()


def reproduce(seed: int = 0, minutes: float = TrainConfig.minutes, steps: int = TrainConfig.steps) -> None:
    """`python -m accel.zoo.train digits-copy-gemma`: train, save, evaluate."""
    dllm.save_weights(train(TrainConfig(seed=seed, steps=steps, minutes=minutes)), CHECKPOINT)
    print("evaluate", evaluate(load(), n=200, seed=0), flush=True)
