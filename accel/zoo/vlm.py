"""Offline VLMs: the real transformers 5.x classes of five vision-language families, with small random
weights and processors built in code (nothing is downloaded), for visual-token pruning (FastV, PyramidDrop).

    model = accel.zoo.load("llava-next", size="tiny", seed=0)    # eval(), LlavaNextProcessor at model.processor
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)         # the processor's BatchFeature
    out = model(**x)                                            # or model.generate(**x, max_new_tokens=4)
    ids = accel.zoo.image_token_ids(model)                      # (image id[, video id]) from the config
    visual = torch.isin(x["input_ids"], torch.tensor(ids))      # where the visual tokens are

Entries (`NAMES`) and their classes:

- "llava": LlavaForConditionalGeneration + LlavaProcessor (CLIP tower, Llama LM; multi-head attention).
- "llava-next": LlavaNextForConditionalGeneration + LlavaNextProcessor (CLIP tower, Llama LM with GQA; anyres:
  a base view plus crops on the LLaVA-1.6 grid, one image_newline token per feature row, `image_sizes`).
- "llava-onevision": LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor (SigLIP tower, Qwen2 LM
  with GQA; anyres_max_9 for one image per prompt, the base view plus one newline per image for several).
- "qwen2-vl": Qwen2VLForConditionalGeneration + Qwen2VLProcessor (M-RoPE: 3-D position ids; the processor
  returns `image_grid_thw` and `mm_token_type_ids`).
- "qwen2.5-vl": Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor (windowed vision attention).

Sizes (`SHAPES` holds every number): "tiny" (4 LM layers, hidden 64, 4 heads, head dim 16, 1-2 vision
layers, 30-60 image tokens; a `generate` of a few tokens takes well under a second) and "bench" (8 LM layers,
hidden 384, 6 heads of dim 64, a 1-layer vision tower of width 64, and real image-token counts: 576 for
LLaVA, 2,928 for LLaVA-NeXT's 672x672 image = 576 base + 4 crops x 576 + 48 image_newline tokens, 2,214
for LLaVA-OneVision's 384x768 image, 1,296 / 2,304 for Qwen2-VL / Qwen2.5-VL), so the language model's
prefill is most of the cost.

Weights are seeded (`load(..., seed=)`: the same seed gives bit-identical weights; the caller's global RNG
is restored). Tokenizers are word-level, built in code from a small vocabulary (`WORDS`) plus each family's
special tokens; unknown words become <unk>. Each processor carries a chat template in its family's format
(`prompt` renders one); images come from `image`, seeded noise with a few shapes. The Qwen and OneVision
processors need a video processor: the real one needs torchvision, so without it a bare
`VideoProcessorMixin` stands in (images work; passing `videos=` does not).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw

NAMES = ("llava", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl")
SIZES = ("tiny", "bench")

# Which entry built a model (model -> (name, size)), for `vlm_inputs`; weak keys so models can be freed.
BUILT: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()

MODEL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava-next": "LlavaNextForConditionalGeneration",
    "llava-onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2-vl": "Qwen2VLForConditionalGeneration",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
}


@dataclass(frozen=True)
class Shape:
    """One entry at one size. LM: layers, hidden, heads, kv_heads (< heads: GQA), intermediate. Vision tower:
    vision_layers, vision_width, vision_heads, crop (the tower's input side; LLaVA families) and patch.
    images: the (height, width) of the images `vlm_inputs` makes, the first by default, the others in turn
    with vary=True (for anyres and Qwen they give other image-token counts)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_layers: int
    vision_width: int
    vision_heads: int
    crop: int
    patch: int
    images: tuple[tuple[int, int], ...]


def _shape(size: str, kv_heads: int, vision_layers: int, crop: int, patch: int,
           images: tuple[tuple[int, int], ...]) -> Shape:
    if size == "tiny":
        return Shape(4, 64, 4, kv_heads, 128, vision_layers, 32, 2, crop, patch, images)
    return Shape(8, 384, 6, kv_heads, 1024, 1, 64, 2, crop, patch, images)


SHAPES: dict[str, dict[str, Shape]] = {
    # fixed size (resize + center crop): 6x6 = 36 tokens tiny, 24x24 = 576 bench
    "llava": {"tiny": _shape("tiny", 4, 1, 48, 8, ((48, 48), (64, 48), (48, 80))),
              "bench": _shape("bench", 6, 1, 336, 14, ((336, 336), (480, 640), (640, 480)))},
    # anyres on the LLaVA-1.6 grid (crop x {1x2, 2x1, 2x2, 3x1, 1x3}): tiny 48x48 -> 9 + 4 x 9 + 6 newlines = 51
    "llava-next": {"tiny": _shape("tiny", 2, 1, 24, 8, ((48, 48), (24, 48), (72, 24))),
                   "bench": _shape("bench", 2, 1, 336, 14, ((672, 672), (336, 672), (1008, 336)))},
    # anyres_max_9 on the OneVision grid (crop x {1..6} x {1..6}): tiny 48x48 -> 9 + 36 + 6 = 51
    "llava-onevision": {"tiny": _shape("tiny", 2, 1, 24, 8, ((48, 48), (24, 48), (48, 72))),
                        "bench": _shape("bench", 2, 1, 384, 14, ((384, 768), (768, 768), (384, 384)))},
    # 28x28 pixels per token (patch 14, 2x2 merge): tiny 168x168 -> 36 tokens, bench 1008x1008 -> 1,296
    "qwen2-vl": {"tiny": _shape("tiny", 2, 1, 0, 14, ((168, 168), (112, 224), (224, 140))),
                 "bench": _shape("bench", 2, 1, 0, 14, ((1008, 1008), (784, 1344), (1344, 784)))},
    # tiny: a windowed and a full-attention vision layer, like the real model's pattern; bench 1344^2 -> 2,304
    "qwen2.5-vl": {"tiny": _shape("tiny", 2, 2, 0, 14, ((168, 168), (112, 224), (224, 140))),
                   "bench": _shape("bench", 2, 1, 0, 14, ((1344, 1344), (1008, 1344), (1344, 1008)))},
}

QUESTIONS = (  # distinct lengths, so that vary=True pads
    "what is in the image?",
    "describe this picture.",
    "what color is the square in the middle?",
    "how many shapes can you see in this picture, and where are they?",
    "is there a circle?",
)
WORDS = tuple(sorted(
    {w for q in QUESTIONS for w in q.replace("?", " ").replace(".", " ").replace(",", " ").split()}
    | {"USER", "ASSISTANT", "system", "user", "assistant", "you", "are", "a", "helpful", "again", "yes", "no",
       "red", "green", "blue", "one", "two", "three", "left", "right", "top", "bottom"}
)) + (":", "?", ".", ",")
LLAMA_SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<image>", "<video>", "<unk>")

# Chat templates in each family's format (the checkpoints' own, minus Qwen's default system turn and the
# training-only generation markers): images first for LLaVA, in place for Qwen.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ '\n' + message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _check(name: str, size: str) -> None:
    if name not in NAMES:
        raise ValueError(f"Unknown zoo VLM {name!r}. Valid names: {', '.join(NAMES)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown zoo size {size!r} for {name!r}. Valid sizes: {', '.join(SIZES)}.")


def tokenizer(style: str) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer built in code (the approach of digits-vqa): `WORDS` plus the special tokens.

    style "llama" (LLaVA, LLaVA-NeXT): <s> prepended, </s> eos, <pad>, image token <image>.
    style "qwen" (Qwen2-VL, Qwen2.5-VL): Qwen2's chat and vision tokens, <|im_end|> eos, <|endoftext|> pad,
    image/video tokens <|image_pad|>/<|video_pad|>. style "onevision": the same vocabulary, with <image>
    and <video> as the image and video tokens (LLaVA-OneVision's Qwen2 tokenizer). Padding is on the left.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    special = LLAMA_SPECIAL if style == "llama" else QWEN_SPECIAL
    vocab = {token: i for i, token in enumerate((*special, *WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\w-]+|[^\w\s-]+"), behavior="removed", invert=True)
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    if style == "llama":
        core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                            special_tokens=[("<s>", vocab["<s>"])])
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
            extra_special_tokens={"image_token": "<image>"}, padding_side="left",
        )
    if style not in ("qwen", "onevision"):
        raise ValueError(f"tokenizer style is 'llama', 'qwen' or 'onevision', got {style!r}")
    image, video = ("<|image_pad|>", "<|video_pad|>") if style == "qwen" else ("<image>", "<video>")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|endoftext|>", unk_token="<unk>", eos_token="<|im_end|>",
        extra_special_tokens={"image_token": image, "video_token": video}, padding_side="left",
    )


def _video_processor(name: str, **kwargs: Any) -> Any:
    """The family's real video processor when torchvision is there; otherwise a bare `VideoProcessorMixin`
    (the base class of every video processor) with the same merge and patch sizes: the processors only read
    those, but videos cannot be processed then."""
    try:
        cls = transformers.LlavaOnevisionVideoProcessor if name == "llava-onevision" else transformers.Qwen2VLVideoProcessor
        return cls(**kwargs)
    except ImportError:
        from transformers.video_processing_utils import VideoProcessorMixin

        return VideoProcessorMixin(**kwargs)


def _with_video(cls: type, **kwargs: Any) -> Any:
    """Builds processor `cls`. Its argument check looks up `transformers.VideoProcessorMixin`, which is only
    exported with torchvision installed, so without torchvision the real class is exported while it runs."""
    from unittest import mock

    from transformers.video_processing_utils import VideoProcessorMixin

    with mock.patch.object(transformers, "VideoProcessorMixin", VideoProcessorMixin, create=True):
        return cls(**kwargs)


def processor(name: str, size: str = "tiny") -> transformers.ProcessorMixin:
    """The entry's real processor with a PIL image processor (deterministic, no torchvision) sized to the
    vision tower, the code-built tokenizer and the family's chat template."""
    _check(name, size)
    s = SHAPES[name][size]
    if name == "llava":
        images = transformers.CLIPImageProcessorPil(
            size={"shortest_edge": s.crop}, crop_size={"height": s.crop, "width": s.crop})
        return transformers.LlavaProcessor(
            image_processor=images, tokenizer=tokenizer("llama"), patch_size=s.patch,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    if name == "llava-next":
        images = transformers.LlavaNextImageProcessorPil(
            size={"shortest_edge": s.crop}, crop_size={"height": s.crop, "width": s.crop},
            image_grid_pinpoints=_pinpoints(name, s.crop))
        return transformers.LlavaNextProcessor(
            image_processor=images, tokenizer=tokenizer("llama"), patch_size=s.patch,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    if name == "llava-onevision":
        images = transformers.LlavaOnevisionImageProcessorPil(
            size={"height": s.crop, "width": s.crop}, image_grid_pinpoints=_pinpoints(name, s.crop),
            image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return _with_video(
            transformers.LlavaOnevisionProcessor, image_processor=images, tokenizer=tokenizer("onevision"),
            video_processor=_video_processor(name),
            num_image_tokens=(s.crop // s.patch) ** 2, vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9", chat_template=ONEVISION_TEMPLATE)
    merge = {"patch_size": s.patch, "temporal_patch_size": 2, "merge_size": 2}
    most = max(h * w for h, w in s.images)  # no image of the entry is resized
    images = transformers.Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": most}, **merge)
    cls = transformers.Qwen2VLProcessor if name == "qwen2-vl" else transformers.Qwen2_5_VLProcessor
    return _with_video(cls, image_processor=images, tokenizer=tokenizer("qwen"),
                       video_processor=_video_processor(name, **merge), chat_template=QWEN_TEMPLATE)


def _pinpoints(name: str, crop: int) -> list[list[int]]:
    """The checkpoints' anyres grids in units of the crop: LLaVA-1.6's five, OneVision's 6x6."""
    if name == "llava-next":
        return [[crop * a, crop * b] for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
    return [[crop * a, crop * b] for a in range(1, 7) for b in range(1, 7)]


def config(name: str, size: str = "tiny") -> transformers.PreTrainedConfig:
    """The entry's config: the LM and vision-tower shapes of `SHAPES`, the token ids of `tokenizer`."""
    _check(name, size)
    s = SHAPES[name][size]
    proc = processor(name, size)
    tok = proc.tokenizer
    lm = dict(vocab_size=len(tok), hidden_size=s.hidden, intermediate_size=s.intermediate,
              num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
              max_position_embeddings=4096 if size == "tiny" else 8192, pad_token_id=tok.pad_token_id,
              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    vision = dict(hidden_size=s.vision_width, intermediate_size=2 * s.vision_width, num_hidden_layers=s.vision_layers,
                  num_attention_heads=s.vision_heads, image_size=s.crop, patch_size=s.patch)
    if name in ("llava", "llava-next"):
        common = dict(vision_config=transformers.CLIPVisionConfig(**vision), text_config=transformers.LlamaConfig(**lm),
                      image_token_id=tok.image_token_id, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", tie_word_embeddings=False)
        if name == "llava":
            return transformers.LlavaConfig(**common, image_seq_length=(s.crop // s.patch) ** 2)
        return transformers.LlavaNextConfig(**common, image_grid_pinpoints=_pinpoints(name, s.crop),
                                            image_seq_length=(s.crop // s.patch) ** 2)
    if name == "llava-onevision":
        return transformers.LlavaOnevisionConfig(
            vision_config=transformers.SiglipVisionConfig(**vision, vision_use_head=False),
            text_config=transformers.Qwen2Config(**lm), image_token_id=tok.image_token_id,
            video_token_id=tok.video_token_id, vision_feature_layer=-1, vision_feature_select_strategy="full",
            image_grid_pinpoints=_pinpoints(name, s.crop), vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=False)
    head_dim = s.hidden // s.heads  # M-RoPE sections (t, h, w) in the real 16:24:24 ratio over head_dim / 2
    mrope = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]
    text = dict(lm, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope})
    ids = dict(image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"), tie_word_embeddings=False)
    if name == "qwen2-vl":
        return transformers.Qwen2VLConfig(
            vision_config=dict(depth=s.vision_layers, embed_dim=s.vision_width, hidden_size=s.hidden, mlp_ratio=2,
                               num_heads=s.vision_heads, patch_size=s.patch, spatial_merge_size=2,
                               temporal_patch_size=2),
            text_config=text, **ids)
    return transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=s.vision_layers, hidden_size=s.vision_width, intermediate_size=2 * s.vision_width,
                           out_hidden_size=s.hidden, num_heads=s.vision_heads, patch_size=s.patch,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[s.vision_layers - 1] if s.vision_layers > 1 else []),
        text_config=text, **ids)


def load(name: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The entry's model with weights seeded by `seed` (bit-identical for a seed; the global RNG is restored
    afterwards), cast to `dtype`, in eval(), its processor at `model.processor` and the tokenizer's
    pad/bos/eos ids in its generation config."""
    _check(name, size)
    cfg = config(name, size)
    cls = getattr(transformers, MODEL_CLASSES[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg)
    text = cfg.text_config
    model.generation_config.pad_token_id = text.pad_token_id
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.bos_token_id = text.bos_token_id
    model.processor = processor(name, size)
    if dtype != torch.float32:
        model = model.to(dtype)
    BUILT[model] = (name, size)
    return model.eval()


def built_from(model: Any) -> tuple[str, str] | None:
    """(name, size) of the VLM entry that built `model`, or None."""
    return BUILT.get(model)


def image_token_ids(model: Any) -> tuple[int, ...]:
    """The input ids that mark visual tokens (the image token, then the video token where the family has
    one), read from the model's config: every position holding one is replaced by a visual feature,
    LLaVA-NeXT/OneVision's image_newline rows included."""
    cfg = model.config
    ids = []
    for key in ("image_token_id", "video_token_id"):
        value = getattr(cfg, key, None)
        if value is not None:
            ids.append(int(value))
    if not ids:
        raise ValueError(f"{type(model).__name__}'s config has no image_token_id")
    return tuple(ids)


def image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image: seeded low-contrast noise with a few filled rectangles and ellipses."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(96, 160, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(img)
    for k in range(3):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if k % 2 == 0 else draw.ellipse)((x0, y0, x1 + 1, y1 + 1), fill=color)
    return img


def _entry(model: Any) -> tuple[str, str]:
    built = BUILT.get(model)
    if built is None:
        raise ValueError(f"vlm_inputs needs a VLM built by accel.zoo.load (one of {', '.join(NAMES)}); "
                         f"got a {type(model).__name__} it did not build")
    return built


def prompt(model: Any, question: str, images: int = 1) -> str:
    """One user turn with `images` images and `question`, then the assistant's turn opened, rendered with the
    processor's chat template ("USER: <image>\\n{question} ASSISTANT:" for LLaVA and LLaVA-NeXT,
    "<|im_start|>user <image>\\n{question}<|im_end|><|im_start|>assistant\\n" for OneVision,
    "<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n"
    for Qwen)."""
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return model.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)


def vlm_inputs(model: Any, batch: int = 1, images_per_prompt: int = 1, seed: int = 0, padding_side: str = "left",
               vary: bool = False) -> transformers.BatchFeature:
    """The processor's BatchFeature for `batch` prompts with `images_per_prompt` images each, ready for
    `model(**x)` and `model.generate(**x)`; floating tensors are in the model's dtype.

    Deterministic for a seed. Without `vary` every prompt asks `QUESTIONS[0]` about images of the entry's
    default size (`SHAPES[name][size].images[0]`), so no padding appears. With `vary`, prompt i asks
    `QUESTIONS[i % 5]` (other lengths: padding on `padding_side`, "left" or "right") and image j of prompt i
    has size `images[(i + j) % 3]` (other image-token counts for LLaVA-NeXT, OneVision and Qwen; OneVision
    gives each image of a several-image prompt its base view and one newline only, whatever its size).
    Images are passed per prompt (a list of lists), as the processors expect for several images.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side is 'left' or 'right', got {padding_side!r}")
    if batch < 1 or images_per_prompt < 1:
        raise ValueError(f"batch and images_per_prompt must be >= 1, got {batch} and {images_per_prompt}")
    name, size = _entry(model)
    sizes = SHAPES[name][size].images
    texts, images = [], []
    for i in range(batch):
        question = QUESTIONS[i % len(QUESTIONS)] if vary else QUESTIONS[0]
        texts.append(prompt(model, question, images_per_prompt))
        picks = [sizes[(i + j) % len(sizes)] if vary else sizes[0] for j in range(images_per_prompt)]
        images.append([image(h, w, seed=seed * 1_000_003 + i * 101 + j) for j, (h, w) in enumerate(picks)])
    x = model.processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side=padding_side)
    return x.to(model.dtype)
