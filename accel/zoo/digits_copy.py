"""`digits-copy`: a block-diffusion language model (real `Qwen2ForCausalLM`, block-causal, in diffusers'
`LLaDA2Pipeline`) trained here to copy a string of 32 digits.

    pipe = accel.zoo.load("digits-copy")                 # LLaDA2Pipeline, model at pipe.model
    out = pipe(**digits_copy.call_args(["copy : 3 1 4 ... ="]))   # out.sequences: the 32 digits, then <eos>
    accel.zoo.evaluate("digits-copy", pipe, n=100, seed=0)         # {"accuracy": ..., "n": 100}

The prompt is a run of 0-64 filler tokens ("."), then `copy :`, the digits and `=`; the answer is the
digits again, then `<eos>` up to the generated length. Generation runs in blocks of 8 (5 blocks of
answer), 8 refinement steps per block, so each answer token's query must find its digit in the prompt:
the block-external attention that FlashBlock reuses across a block's steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import dllm

NAME = "digits-copy"
CHECKPOINT = Path(__file__).parent / "checkpoints" / NAME / "model.safetensors"
DIGITS = 32
GEN_LENGTH = 40  # the digits, <eos>, and <eos> padding to the block
BLOCK = 8
STEPS = 8  # refinement steps per block
MAX_FILLER = 64
SIZE = dllm.Size(layers=4, width=128, heads=4, kv_heads=2, mlp=256, block_length=BLOCK, prompt_tokens=0,
                 gen_length=GEN_LENGTH, steps=STEPS)


def prompt(digits: list[int], filler: int) -> str:
    return " ".join(["."] * filler + ["copy", ":", *map(str, digits), "="])


def problems(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """n prompts and their digits [n, 32], deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    digits = torch.randint(10, (n, DIGITS), generator=g)
    fillers = torch.randint(MAX_FILLER + 1, (n,), generator=g)
    return [prompt(d.tolist(), int(f)) for d, f in zip(digits, fillers, strict=True)], digits


def call_args(prompts: list[str], **overrides: Any) -> dict[str, Any]:
    """The pipeline call the judge makes: greedy, blocks of 8, 8 steps each committing one token per step
    (`threshold` above 1: the scheduler's top-k schedule, LLaDA's low-confidence remasking; every step a
    model call, the most a step cache can reuse), no editing, no early stop (the shapes stay fixed),
    token ids out."""
    args = {"prompt": prompts if len(prompts) > 1 else prompts[0], "gen_length": GEN_LENGTH, "block_length": BLOCK,
            "num_inference_steps": STEPS, "threshold": 1.5, "editing_threshold": None, "temperature": 0.0,
            "eos_early_stop": False, "output_type": "seq", "use_chat_template": False}
    return {**args, **overrides}


def load(dtype: torch.dtype = torch.float32) -> Any:
    """The trained pipeline from the committed fp16 checkpoint."""
    from safetensors.torch import load_file

    model = dllm.build_model(SIZE)
    state = {k: v.float() for k, v in load_file(str(CHECKPOINT)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(dllm.tied_keys(model)):
        raise ValueError(f"{CHECKPOINT} does not match the digits-copy config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return dllm.pipeline(model.to(dtype).eval(), BLOCK)


def answers(pipe: Any, prompts: list[str], batch: int = 50, **overrides: Any) -> torch.Tensor:
    """The generated token ids [n, 40] of `pipe` (possibly accel-patched) for `prompts`."""
    out = []
    for i in range(0, len(prompts), batch):
        out.append(pipe(**call_args(prompts[i : i + batch], **overrides)).sequences.reshape(-1, GEN_LENGTH))
    return torch.cat(out)


def evaluate(pipe: Any, n: int = 100, seed: int = 0, batch: int = 50, **options: Any) -> dict[str, float]:
    """Exact-match accuracy: the 32 digits followed by <eos>, over n held-out prompts (seeded apart from
    training's), through the pipeline call `call_args` makes."""
    if options:
        raise ValueError(f"digits-copy evaluate takes n, seed and batch; got unknown options {sorted(options)}")
    if n < 1:
        raise ValueError(f"n must be a positive number of prompts, got {n}")
    prompts, digits = problems(n, 10_000 + seed)
    tok = pipe.tokenizer
    want = torch.tensor([tok.convert_tokens_to_ids([str(d) for d in row] + ["<eos>"]) for row in digits.tolist()])
    got = answers(pipe, prompts, batch)[:, : DIGITS + 1].cpu()
    return {"accuracy": float((got == want).all(dim=1).float().mean()), "n": n}


# ---- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 800
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    minutes: float = 30.0  # wall-clock cap; the checkpoint is saved whenever it stops
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")


def _training_batch(tok: Any, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Prompt + answer sequences (right-padded), the answer's tokens masked block by block: each block of
    8 positions draws its own masking rate t ~ U(0, 1] and masks each answer token in it with
    probability t (at least one per sequence); labels are the masked tokens (masked diffusion's loss)."""
    digits = torch.randint(10, (batch, DIGITS), generator=g)
    fillers = torch.randint(MAX_FILLER + 1, (batch,), generator=g)
    rows, answer_at = [], []
    for d, f in zip(digits.tolist(), fillers.tolist(), strict=True):
        ids = tok(prompt(d, f))["input_ids"]
        answer_at.append(len(ids))
        rows.append(ids + tok.convert_tokens_to_ids([str(x) for x in d]) + [tok.eos_token_id] * (GEN_LENGTH - DIGITS))
    length = max(map(len, rows))
    ids = torch.full((batch, length), tok.pad_token_id)
    attention = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
        attention[b, : len(row)] = 1
    position = torch.arange(length)
    answer = (position >= torch.tensor(answer_at)[:, None]) & attention.bool()
    rate = torch.rand(batch, length // BLOCK + 1, generator=g).clamp_min(1e-3)[:, position // BLOCK]
    masked = answer & (torch.rand(batch, length, generator=g) < rate)
    first = answer.float().argmax(dim=1)
    masked[torch.arange(batch), first] |= ~masked.any(dim=1)
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    noisy = torch.where(masked, torch.full_like(ids, tok.mask_token_id), ids)
    return {"input_ids": noisy, "attention_mask": attention, "labels": labels,
            "position_ids": position.expand(batch, -1)}


def train(cfg: TrainConfig = TrainConfig(), log_every: int = 100) -> Any:
    """From scratch: the masked-diffusion loss on the answer (block-causal attention, so each block
    conditions on the clean prompt and on the earlier answer blocks, noised at their own rates), AdamW
    with warmup and cosine decay. Returns the model (eval mode)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = dllm.build_model(SIZE).train()
    tok = dllm.tokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))  # noqa: E731
    start, run = time.time(), 0.0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch = _training_batch(tok, cfg.batch, g)
        labels = batch.pop("labels")
        logits = model(**batch).logits  # position i predicts token i (masked diffusion), not token i + 1
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
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
    """`python -m accel.zoo.train digits-copy`: train, save, evaluate."""
    dllm.save_weights(train(TrainConfig(seed=seed, steps=steps, minutes=minutes)), CHECKPOINT)
    print("evaluate", evaluate(load(), n=200, seed=0), flush=True)
