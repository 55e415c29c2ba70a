"""`digits-vqa`: a LLaVA VLM (real `LlavaForConditionalGeneration`) trained here to answer where-is-which-digit
questions about a 2x2 grid of real handwritten digits.

    model = accel.zoo.load("digits-vqa")            # the model, its LlavaProcessor at `model.processor`
    inputs = model.processor(images=grid, text=prompt("which digit is at the top left?"), return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    answer = model.processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)  # "7"
    accel.zoo.evaluate("digits-vqa", model, n=200, seed=0)   # {"accuracy": ..., "n": 200}

`grid` is a 64x64 PIL image (`compose` builds them from digits). Each question names one quadrant, so a
right answer needs attention on that quadrant's 64 of the 256 image tokens: the property that
visual-token pruning (PyramidDrop) has to preserve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image

from . import digits

NAME = "digits-vqa"
CHECKPOINT = Path(__file__).parent / "checkpoints" / NAME / "model.safetensors"
SIDE = 2 * digits.SIDE  # the 64x64 grid image
PATCH = 4  # -> (64 / 4)^2 = 256 image tokens (CLS dropped by vision_feature_select_strategy="default")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # quadrant order in `compose`
TEMPLATES = (
    "which digit is at the {pos}?",
    "what is the digit in the {pos} corner?",
    "what number is shown at the {pos}?",
    "tell me the {pos} digit.",
)
SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
WORDS = ("USER", "ASSISTANT", ":", "?", ".", *(p.replace(" ", "-") for p in POSITIONS), *sorted({w for t in TEMPLATES for w in t.replace("{pos}", "").replace(
    "?", " ").replace(".", " ").split()} | {w for p in POSITIONS for w in p.split()}), *map(str, range(10)))


def prompt(question: str) -> str:
    """The chat format the model was trained on; the answer follows "ASSISTANT:"."""
    return f"USER: <image>\n{question} ASSISTANT:"


def reply(position: int, digit: int, restate: bool = False) -> str:
    """The answer: the digit alone, right after "ASSISTANT:" (like a LLaVA answer), so the prompt's last
    token is the one that must find the asked quadrant's image tokens (the query PyramidDrop ranks by).

    `restate=True` is the format of the first three training phases ("top-left 7"): the quadrant restated
    as one token puts it in the very token that predicts the digit, one attention hop. From scratch, the
    digit right after "ASSISTANT:" (two hops: question -> last token -> quadrant) sat at chance for 300+
    steps in every variant tried; from the restating checkpoint it is learned in a few hundred steps."""
    return f"{POSITIONS[position].replace(' ', '-')} {digit}" if restate else str(digit)


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer built in code (nothing to download): every word of the questions, the ten
    digits, and <image>, <s>, </s>, <pad> as special tokens; <s> is prepended, padding is on the left
    (batched generation)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate((*SPECIAL, *WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\w-]+|[^\w\s-]+"), behavior="removed", invert=True)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[
        ("<s>", vocab["<s>"])])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )


def processor() -> transformers.LlavaProcessor:
    """The real LlavaProcessor: a CLIP image processor fixed to the 64x64 grid (no resize or crop,
    pixels scaled to [-1, 1]) and the code-built tokenizer; it expands <image> to 256 image tokens."""
    images = transformers.CLIPImageProcessorPil(
        do_resize=False, do_center_crop=False, crop_size={"height": SIDE, "width": SIDE},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    return transformers.LlavaProcessor(
        image_processor=images, tokenizer=tokenizer(), patch_size=PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


LAYERS = 16  # the released model's LM depth; the first training phases ran at 8 (`TrainConfig.layers`)


def config(layers: int = LAYERS) -> transformers.LlavaConfig:
    """CLIP vision tower (2 layers, width 64, patch 4 on 64x64) -> 2-layer MLP projector -> Llama LM
    (`layers` layers, width 96, 4 heads); the last vision layer without its CLS token feeds the projector."""
    tok = tokenizer()
    vision = transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=SIDE, patch_size=PATCH, num_channels=3,
    )
    text = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=96, intermediate_size=256, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=(SIDE // PATCH) ** 2,
        tie_word_embeddings=True,
    )


def build(layers: int = LAYERS) -> transformers.LlavaForConditionalGeneration:
    """The untrained model with its processor attached and the tokenizer's special ids in its generation config."""
    cfg = config(layers)
    model = transformers.LlavaForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = cfg.text_config.pad_token_id
    model.generation_config.eos_token_id = cfg.text_config.eos_token_id
    model.generation_config.bos_token_id = cfg.text_config.bos_token_id
    model.processor = processor()
    return model


def init_positions(model: transformers.LlavaForConditionalGeneration) -> None:
    """Starts the vision tower's (learned, trainable) position embedding with explicit structure in its
    first 20 channels: a one-hot of the patch's quadrant and one-hots of its row and column inside the
    32x32 cell. From random codes, at-chance training did not find which image tokens a question's
    "top left" refers to within 300 steps; with the quadrant readable by one linear map it does."""
    emb = model.model.vision_tower.embeddings.position_embedding.weight
    side, cell = SIDE // PATCH, digits.SIDE // PATCH  # 16 patches per row, 8 per digit
    with torch.no_grad():
        for k in range(side * side):
            r, c = divmod(k, side)
            row = emb[k + 1]  # row 0 is the CLS token's
            row[:4 + 2 * cell] = 0.0
            row[2 * (r // cell) + c // cell] = 1.0
            row[4 + r % cell] = 1.0
            row[4 + cell + c % cell] = 1.0


def load(dtype: torch.dtype = torch.float32, path: Path = CHECKPOINT) -> transformers.LlavaForConditionalGeneration:
    """The trained model from the committed fp16 checkpoint (or another of this architecture at `path`;
    ValueError if it does not match), cast to `dtype`, in eval mode, with its LlavaProcessor at
    `model.processor` (built in code, so nothing but the weights is stored)."""
    model = _load_weights(build(), path)
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def _read(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ValueError (one line) for a missing path, a directory or another format."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} {'is a directory' if path.is_dir() else 'does not exist'}; expected a safetensors file")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors' SafetensorError, or the OS refusing the file
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, partial: bool = False) -> None:
    """Loads `state` (cast to float32) into `model`; ValueError naming what does not fit, in one line: tensors the
    model lacks, of another shape, or (unless `partial`) the model's tensors the file lacks (bar the tied lm_head)."""
    target = model.state_dict()
    unexpected = [k for k in state if k not in target]
    reshaped = [k for k in state if k in target and state[k].shape != target[k].shape]
    missing = [] if partial else [k for k in target if k not in state and k != "lm_head.weight"]
    if unexpected or reshaped or missing:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in (("unexpected tensors", unexpected),
                 ("tensors of another shape", reshaped), ("missing tensors", missing)) if v]
        raise ValueError(f"{path} does not match the digits-vqa architecture: {'; '.join(parts)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def _load_weights(model: transformers.LlavaForConditionalGeneration, path: Path) -> transformers.LlavaForConditionalGeneration:
    _load_into(model, _read(path), path)
    model.tie_weights()  # lm_head is tied to the input embedding
    return model


def grow(path: Path, layers: int) -> transformers.LlavaForConditionalGeneration:
    """The checkpoint at `path` with its LM deepened to `layers`: the stored layers first, then new ones
    whose output projections (attention `o_proj`, MLP `down_proj`) are zero, so that each starts as the
    identity on the residual stream and the deeper model computes exactly what the stored one did."""
    stored = 1 + max((int(k.split(".")[3]) for k in _read(path) if k.startswith("model.language_model.layers.")),
                     default=-1)
    if stored < 1:
        raise ValueError(f"grow: {path} holds no digits-vqa language-model layers")
    if layers < stored:
        raise ValueError(f"grow: {path} has {stored} LM layers; cannot shrink it to {layers}")
    model = build(layers)
    small = _load_weights(build(stored), path)
    state = {k: v for k, v in small.state_dict().items() if k != "lm_head.weight"}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        for layer in model.model.language_model.layers[stored:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.tie_weights()
    return model


VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


def with_vision_of(path: Path, layers: int) -> transformers.LlavaForConditionalGeneration:
    """A fresh model (`layers`-deep LM at random initialisation) whose vision tower and projector are the
    checkpoint's at `path`: LLaVA's own recipe of a trained vision encoder joined to a language model that
    is then trained at its full depth."""
    if layers < 1:
        raise ValueError(f"with_vision_of: layers={layers}; expected a positive LM depth")
    model = build(layers)
    state = {k: v for k, v in _read(path).items() if k.startswith(VISION_PREFIXES)}
    vision = [k for k in model.state_dict() if k.startswith(VISION_PREFIXES)]
    if set(state) != set(vision):
        raise ValueError(f"with_vision_of: {path} does not hold the digits-vqa vision tower and projector "
                         f"({len(state)} of their {len(vision)} tensors)")
    _load_into(model, state, path, partial=True)
    return model


@torch.no_grad()
def quadrant_attention(model: Any, n: int = 64, seed: int = 0) -> list[float]:
    """Where the model reads the image: per LM layer, the share of the last prompt token's attention to
    image tokens that falls on the asked quadrant's 64 tokens (0.25 is chance), averaged over heads and
    over n held-out questions. Runs eager attention (`output_attentions`) 16 questions at a time; the model
    is returned to its attention implementation afterwards. ValueError for n < 1, a model that is not a digits-vqa LLaVA,
    or one patched by accel (it measures the model itself; a pruned one has fewer image tokens per layer)."""
    import accel

    _count("quadrant_attention: n", n)
    given = model
    model = _model_and_processor(model)[0]
    if accel.patch_of(given) is not None or accel.patch_of(model) is not None:
        raise ValueError("quadrant_attention measures the unpatched model; call accel.unpatch(model) first")
    q = questions("test", n, seed)
    side, cell = SIDE // PATCH, digits.SIDE // PATCH
    rows, cols = torch.arange(side * side) // side, torch.arange(side * side) % side
    quadrant = 2 * (rows // cell) + cols // cell  # [256]: each image token's quadrant, `POSITIONS` order
    totals = torch.zeros(model.config.text_config.num_hidden_layers, dtype=torch.float64)
    chunk = 16  # questions per forward: the eager attention maps are [chunk, heads, L, L] per layer
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        for i in range(0, n, chunk):
            inputs = model_inputs(model, q.grids[i : i + chunk], q.questions[i : i + chunk])
            is_image = inputs["input_ids"] == model.config.image_token_id  # [b, L]; left padding: the last token is last
            asked = quadrant[None, :] == torch.tensor(q.positions[i : i + chunk])[:, None]  # [b, 256]
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
            out = model(**inputs, position_ids=positions, output_attentions=True)
            for k, attn in enumerate(out.attentions):  # [b, heads, L, L]
                row = attn[:, :, -1].float().mean(1)[is_image].view(len(asked), -1)  # the last token over the image
                totals[k] += ((row * asked).sum(-1) / row.sum(-1)).sum().item()
    finally:
        model.set_attn_implementation(before)
    return (totals / n).tolist()


def save(model: transformers.LlavaForConditionalGeneration, path: Path = CHECKPOINT) -> None:
    """fp16 safetensors without `lm_head.weight` (tied to the input embedding; safetensors refuses
    shared tensors, and `load` re-ties it)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(path))


def compose(images: torch.Tensor) -> torch.Tensor:
    """[N, 4, 1, 32, 32] digits in [-1, 1] -> [N, 64, 64] uint8 grids, quadrants in `POSITIONS` order."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, :, 0]
    top = torch.cat([pixels[:, 0], pixels[:, 1]], dim=-1)
    bottom = torch.cat([pixels[:, 2], pixels[:, 3]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def pixel_values(grids: torch.Tensor) -> torch.Tensor:
    """What `processor()` makes of uint8 grids, as a tensor op (training skips PIL): [N, 3, 64, 64]."""
    x = grids.float() / 255.0
    return ((x - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class Questions:
    """A batch of grids and one question per grid with its answer."""

    grids: torch.Tensor  # [N, 64, 64] uint8
    digits: torch.Tensor  # [N, 4] the grid's labels, `POSITIONS` order
    questions: list[str]
    answers: list[int]
    positions: list[int]  # index into POSITIONS


def questions(split: str, n: int, seed: int) -> Questions:
    """n grids of four random digits of `split`; question i asks about quadrant i % 4 with a random
    wording; deterministic for a seed."""
    data = digits.load(split)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data.labels), (n, 4), generator=g)
    templates = torch.randint(len(TEMPLATES), (n,), generator=g).tolist()
    labels = data.labels[idx]
    positions = [i % 4 for i in range(n)]
    texts = [TEMPLATES[t].format(pos=POSITIONS[p]) for t, p in zip(templates, positions, strict=True)]
    answers = [int(labels[i, p]) for i, p in enumerate(positions)]
    return Questions(compose(data.images[idx]), labels, texts, answers, positions)


def _count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive integer")


def _model_and_processor(model: Any) -> tuple[torch.nn.Module, transformers.LlavaProcessor]:
    """The LLaVA itself, also from a holder of it at `.model` (as accel.patch takes VLMs), and its processor."""
    if not isinstance(model, transformers.LlavaForConditionalGeneration) and isinstance(
            getattr(model, "model", None), transformers.LlavaForConditionalGeneration):
        model = model.model
    if not isinstance(model, transformers.LlavaForConditionalGeneration):
        raise ValueError(f"digits-vqa evaluates a LlavaForConditionalGeneration (accel.zoo.load('digits-vqa')), "
                         f"got {type(model).__name__}")
    return model, getattr(model, "processor", None) or processor()


def model_inputs(model: Any, grids: torch.Tensor, texts: list[str]) -> transformers.BatchFeature:
    """The processor's inputs for uint8 grids [N, 64, 64] and their questions (`prompt` added, left padding),
    pixel values in the model's dtype."""
    model, proc = _model_and_processor(model)
    images = [Image.fromarray(g.numpy(), mode="L") for g in grids]
    return proc(images=images, text=[prompt(q) for q in texts], return_tensors="pt", padding=True).to(model.dtype)


def answer(model: Any, grids: torch.Tensor, texts: list[str], batch: int = 50) -> list[str]:
    """Greedy answers of `model` (possibly accel-patched) through the standard processor -> generate path."""
    model, proc = _model_and_processor(model)
    out: list[str] = []
    for i in range(0, len(texts), batch):
        inputs = model_inputs(model, grids[i : i + batch], texts[i : i + batch])
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        out += [s.strip() for s in proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


def evaluate(model: Any, n: int = 200, seed: int = 0, batch: int = 50, **options: Any) -> dict[str, float]:
    """Exact-match answer accuracy (the digit, see `reply`) over n questions on held-out (test split)
    digits, deterministic for a seed, via greedy `generate`. Works on a model patched in place by accel (it just calls generate)."""
    if options:
        raise ValueError(f"digits-vqa evaluate takes n, seed and batch; got unknown options {sorted(options)}")
    _count("evaluate: n (questions)", n)
    _count("evaluate: batch", batch)
    q = questions("test", n, seed)
    got = answer(model, q.grids, q.questions, batch=batch)
    want = [reply(p, a) for p, a in zip(q.positions, q.answers, strict=True)]
    correct = sum(a == b for a, b in zip(got, want, strict=True))
    return {"accuracy": correct / n, "n": n}


def _training_batch(data: digits.Split, tok: Any, batch: int, g: torch.Generator,
                    single_class: float = 0.0, restate: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Grids of train digits, each asked about all four quadrants in shuffled order as four chat turns
    (four supervised answers for one image's cost); the first turn is exactly the evaluation prompt.
    Labels are -100 except on each answer (`reply`) and the </s> after it. A `single_class` fraction of
    grids holds four different images of one class, which teaches digit recognition first. Returns the
    model's inputs and the grids' digit labels [batch, 4] (`POSITIONS` order) for the auxiliary loss."""
    idx = torch.randint(len(data.labels), (batch, 4), generator=g)
    for b in torch.nonzero(torch.rand(batch, generator=g) < single_class).flatten().tolist():
        same = torch.nonzero(data.labels == data.labels[idx[b, 0]]).flatten()
        idx[b] = same[torch.randint(len(same), (4,), generator=g)]
    labels = data.labels[idx]
    texts = []
    for b in range(batch):
        turns = []
        for k, p in enumerate(torch.randperm(4, generator=g).tolist()):
            q = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=g))].format(pos=POSITIONS[p])
            turns.append((prompt(q) if k == 0 else f"USER: {q} ASSISTANT:") + f" {reply(p, int(labels[b, p]), restate)} </s>")
        texts.append(" ".join(turns).replace("<image>", "<image>" * (SIDE // PATCH) ** 2))
    enc = tok(texts, return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    colon, assistant = tok.convert_tokens_to_ids(":"), tok.convert_tokens_to_ids("ASSISTANT")
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, 2:] = (ids[:, 1:-1] == colon) & (ids[:, :-2] == assistant)
    answer = starts.clone()
    for shift in range(1, 3 if restate else 2):  # (the quadrant,) the digit and </s>
        answer[:, shift:] |= starts[:, :-shift]
    target = torch.where(answer, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": enc["attention_mask"], "labels": target,
            "pixel_values": pixel_values(compose(data.images[idx]))}, labels


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 500
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 100
    minutes: float = 22.0  # wall-clock cap; the checkpoint is saved whenever it stops
    threads: int = 1
    single_class: float = 0.3  # fraction of one-class grids at step 0, falling linearly to 0 at steps / 2
    init_from: str | None = None  # a checkpoint to continue from (with single_class=0) instead of random weights
    aux_weight: float = 0.0  # weight of the quadrant-classification loss on the projected image tokens
    restate: bool = True  # answers as "top-left 7" (phases 1-3) or the digit alone (the released format)
    layers: int = 8  # LM depth; a deeper model than init_from's gets new identity layers on top (`grow`)
    vision_from: str | None = None  # a checkpoint whose vision tower and projector start a fresh `layers`-deep LM

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "threads", "warmup", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name, ok in (("lr", self.lr > 0), ("minutes", self.minutes > 0), ("aux_weight", self.aux_weight >= 0),
                         ("single_class", 0 <= self.single_class <= 1)):
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: expected lr > 0, minutes > 0, "
                                 "aux_weight >= 0 and single_class in [0, 1]")
        for name in ("init_from", "vision_from"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not a checkpoint file")
        if self.init_from is not None and self.vision_from is not None:
            raise ValueError("TrainConfig: init_from (the whole model) and vision_from (its vision side only) "
                             "exclude each other")


def train(cfg: TrainConfig = TrainConfig(), log_every: int = 50) -> transformers.LlavaForConditionalGeneration:
    """Everything from scratch (vision tower, projector, LM): teacher forcing, cross-entropy on the
    answer tokens only, AdamW with warmup and cosine decay over `steps`, train-split digits only, a
    falling share of one-class grids first (see `_training_batch`)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    data = digits.load("train")
    if cfg.init_from is not None:
        model = grow(Path(cfg.init_from), cfg.layers)
    elif cfg.vision_from is not None:
        model = with_vision_of(Path(cfg.vision_from), cfg.layers)
    else:
        model = build(cfg.layers)
        init_positions(model)
    model.train()
    tok = tokenizer()
    tok.padding_side = "right"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))  # noqa: E731
    aux = QuadrantProbe(model) if cfg.aux_weight > 0 else None
    if aux is not None:
        opt.add_param_group({"params": aux.parameters()})
    start, run = time.time(), 0.0
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            single_class = cfg.single_class * max(0.0, 1 - step / (cfg.steps / 2))
            inputs, labels = _training_batch(data, tok, cfg.batch, g, single_class, cfg.restate)
            loss = model(**inputs).loss
            if aux is not None:
                loss = loss + cfg.aux_weight * aux.loss(labels)
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
    finally:  # the probe's hook never outlives training, even when it stops on an error
        if aux is not None:
            aux.remove()
    return model.eval()


class QuadrantProbe(torch.nn.Module):
    """Training-only auxiliary loss: a linear probe classifies each quadrant's mean projected image token
    (what the language model reads) as its digit. It teaches the vision tower and projector to carry the
    digit in every token of its quadrant directly, instead of only through the slow answer-token signal.
    Captured by a forward hook on the projector; removed (and never saved) after training."""

    def __init__(self, model: transformers.LlavaForConditionalGeneration) -> None:
        super().__init__()
        self.head = torch.nn.Linear(model.config.text_config.hidden_size, 10)
        self._tokens: torch.Tensor | None = None
        self._handle = model.model.multi_modal_projector.register_forward_hook(self._capture)

    def _capture(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        self._tokens = output

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the probe on the last forward's four quadrant means; labels [B, 4]."""
        cell = digits.SIDE // PATCH  # 8 patches per digit side
        x = self._tokens.reshape(len(labels), 2, cell, 2, cell, -1).mean((2, 4)).flatten(1, 2)  # [B, 4, D]
        return torch.nn.functional.cross_entropy(self.head(x).flatten(0, 1), labels.flatten())

    def remove(self) -> None:
        self._handle.remove()


def save_samples(model: Any, path: str, n: int = 8, seed: int = 1) -> None:
    """A docs PNG: n held-out grids, each with its question, the model's answer and the right one."""
    from PIL import ImageDraw

    q = questions("test", n, seed)
    got = answer(model, q.grids, q.questions)
    scale, text_h, pad = 3, 40, 8
    cell_w = SIDE * scale + 2 * pad + 60
    sheet = Image.new("L", (cell_w * min(n, 4), (SIDE * scale + text_h + 2 * pad) * math.ceil(n / 4)), 255)
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x, y = (i % 4) * cell_w + pad, (i // 4) * (SIDE * scale + text_h + 2 * pad) + pad
        grid = Image.fromarray(q.grids[i].numpy(), mode="L").resize((SIDE * scale,) * 2, Image.NEAREST)
        sheet.paste(grid, (x, y))
        draw.text((x, y + SIDE * scale + 3), q.questions[i], fill=0)
        draw.text((x, y + SIDE * scale + 18), f"answer {got[i]!r}, correct {q.answers[i]}", fill=0)
    sheet.save(path, optimize=True)


# The later phases of `reproduce`, each a warm restart from the previous phase's checkpoint on fresh
# batches: a short continuation, a long one with the auxiliary quadrant probe (`QuadrantProbe`), then the
# answer format changed to the digit alone, then the LM grown from 8 to 16 layers (`grow`).
CONTINUATION = TrainConfig(seed=1, steps=250, lr=1e-3, warmup=1, minutes=10.0, single_class=0.0)
PROBE_PHASE = TrainConfig(seed=3, steps=3000, lr=1e-3, warmup=20, minutes=48.0, single_class=0.0, aux_weight=1.0)
DIRECT_PHASE = TrainConfig(seed=4, steps=600, lr=5e-4, warmup=20, minutes=40.0, single_class=0.0, aux_weight=1.0,
                           restate=False, threads=2)
GROW_PHASE = replace(DIRECT_PHASE, seed=5, steps=400, layers=LAYERS)


# The full-depth comparison (not the released model): the committed vision tower and projector joined to a
# fresh 16-layer LM trained at its full depth, restating answers first, then the digit alone.
FULL_DEPTH_RESTATE = TrainConfig(seed=7, steps=600, lr=1e-3, warmup=20, minutes=40.0, single_class=0.0,
                                 aux_weight=1.0, threads=2, layers=LAYERS)
FULL_DEPTH_DIRECT = replace(DIRECT_PHASE, seed=8, steps=600, layers=LAYERS)


def train_full_depth(path: Path) -> transformers.LlavaForConditionalGeneration:
    """LLaVA's own recipe at this scale, for comparison with the released model (whose top 8 layers were
    grown onto an 8-layer model): `FULL_DEPTH_RESTATE` from the committed vision side (`with_vision_of`),
    then `FULL_DEPTH_DIRECT`; saves to `path` and returns the model. ValueError, before training, for a
    path that is not a .safetensors file in an existing folder or lies among the zoo's checkpoints.
    About 16 minutes on 2 threads. `accel bench --model digits-vqa --weights PATH` measures it."""
    path = Path(path)
    committed = CHECKPOINT.parent.parent.resolve()  # every zoo entry's checkpoints
    if path.suffix != ".safetensors" or path.is_dir() or not path.parent.is_dir():
        raise ValueError(f"train_full_depth: path={str(path)!r}; expected a .safetensors file in an existing folder")
    if path.resolve().is_relative_to(committed):
        raise ValueError(f"train_full_depth: {path} is inside the zoo's committed checkpoints ({committed}); "
                         "give a path elsewhere")
    save(train(replace(FULL_DEPTH_RESTATE, vision_from=str(CHECKPOINT)), log_every=25), path)
    model = train(replace(FULL_DEPTH_DIRECT, init_from=str(path)), log_every=25)
    save(model, path)
    return model


def reproduce(seed: int = 0, minutes: float = TrainConfig.minutes, steps: int = TrainConfig.steps) -> None:
    """`python -m accel.zoo.train digits-vqa`: train phase 1 from scratch, then `CONTINUATION`,
    `PROBE_PHASE`, `DIRECT_PHASE` and `GROW_PHASE`, each from the checkpoint before it; save, evaluate,
    write the sample sheet."""
    save(train(TrainConfig(seed=seed, steps=steps, minutes=minutes)))
    for k, phase in enumerate((CONTINUATION, PROBE_PHASE, DIRECT_PHASE, GROW_PHASE), start=2):
        save(train(replace(phase, seed=seed + phase.seed, init_from=str(CHECKPOINT)), log_every=25))
        if k < 4:  # the restating phases; `evaluate` asks for the released answer format
            continue
        print(f"phase {k}", evaluate(_load_weights(build(phase.layers), CHECKPOINT), n=200, seed=0), flush=True)
    finish()


def finish() -> None:
    """Evaluates the committed checkpoint (n=200, seed 0) and rewrites docs/digits-vqa-samples.png."""
    model = load()
    print("evaluate", evaluate(model, n=200, seed=0), flush=True)
    save_samples(model, "docs/digits-vqa-samples.png")
