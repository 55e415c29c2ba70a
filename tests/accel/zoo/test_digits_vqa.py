"""digits-vqa: the LLaVA checkpoint loads offline, keeps its shape (16 LM layers, 256 image tokens),
reproduces a stored output, answers held-out questions, and survives an accel patch."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

import accel
import accel.zoo
from accel.zoo import digits, digits_vqa

# digits_vqa.load(), first 4 of questions("test", 8, seed=0), greedy generate: the answers, and the
# first generated step's (the digit's) logits at ids 30..35 of the first question, on float32 CPU.
FINGERPRINT_ANSWERS = ['6', '2', '4', '3']
FINGERPRINT_LOGITS = [1.10943, 1.660464, -0.182593, 0.617674, -0.148243, 2.472829]


@pytest.fixture(scope="module")
def model() -> transformers.LlavaForConditionalGeneration:
    torch.set_num_threads(2)
    return accel.zoo.load("digits-vqa")


def _first_step(model: transformers.LlavaForConditionalGeneration, q: digits_vqa.Questions):
    proc = model.processor
    images = [Image.fromarray(g.numpy(), mode="L") for g in q.grids]
    inputs = proc(images=images, text=[digits_vqa.prompt(t) for t in q.questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return inputs, out


def test_architecture_and_image_tokens(model: transformers.LlavaForConditionalGeneration) -> None:
    assert isinstance(model, transformers.LlavaForConditionalGeneration)
    assert isinstance(model.processor, transformers.LlavaProcessor)
    assert model.config.text_config.num_hidden_layers == digits_vqa.LAYERS == 16
    assert model.config.text_config.model_type == "llama"
    q = digits_vqa.questions("test", 2, seed=0)
    inputs, _ = _first_step(model, q)
    n_image = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert n_image.tolist() == [256, 256]
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert [tuple(f.shape) for f in feats] == [(256, model.config.text_config.hidden_size)] * 2


def test_processor_round_trip() -> None:
    proc = digits_vqa.processor()
    q = digits_vqa.questions("test", 3, seed=5)
    images = [Image.fromarray(g.numpy(), mode="L") for g in q.grids]
    inputs = proc(images=images, text=[digits_vqa.prompt(t) for t in q.questions], return_tensors="pt", padding=True)
    assert torch.equal(inputs["pixel_values"], digits_vqa.pixel_values(q.grids))  # training's tensor path
    tokens = proc.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    words = digits_vqa.prompt(q.questions[0]).replace("?", " ?").replace(".", " .").replace(":", " :").split()
    assert [t for t in tokens if t not in ("<pad>", "<s>", "<image>")] == [w for w in words if w != "<image>"]
    ids = proc.tokenizer([digits_vqa.reply(3, 7) + " </s>"], add_special_tokens=False)["input_ids"][0]
    assert len(ids) == 2 and proc.decode(ids, skip_special_tokens=True).strip() == "7"
    ids = proc.tokenizer([digits_vqa.reply(3, 7, restate=True) + " </s>"], add_special_tokens=False)["input_ids"][0]
    assert len(ids) == 3 and proc.decode(ids, skip_special_tokens=True).strip() == "bottom-right 7"
    assert proc.tokenizer.unk_token_id not in inputs["input_ids"].flatten().tolist()


def test_compose_puts_each_digit_in_its_quadrant() -> None:
    data = digits.load("test")
    four = data.images[:4].unsqueeze(0)
    grid = digits_vqa.compose(four)[0]
    pixels = digits_vqa.compose(torch.stack([four[0, i : i + 1].expand(4, -1, -1, -1) for i in range(4)]))
    for i, (r, c) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        assert torch.equal(grid[r : r + 32, c : c + 32], pixels[i, :32, :32])
    assert digits_vqa.POSITIONS == ("top left", "top right", "bottom left", "bottom right")


@pytest.mark.parametrize("restate", [False, True])
def test_training_batch_supervises_only_answers(restate: bool) -> None:
    tok = digits_vqa.tokenizer()
    tok.padding_side = "right"
    data = digits.load("train")
    batch, grid_digits = digits_vqa._training_batch(data, tok, 3, torch.Generator().manual_seed(0), restate=restate)
    labels, ids = batch["labels"], batch["input_ids"]
    assert grid_digits.shape == (3, 4)
    quadrants = [p.replace(" ", "-") for p in digits_vqa.POSITIONS]
    width = 3 if restate else 2  # (quadrant,) digit, </s>
    for b in range(3):
        tokens = tok.convert_ids_to_tokens(ids[b].tolist())
        # the quadrant each turn asks, read from its question's words
        turns = [i for i, t in enumerate(tokens) if t == "ASSISTANT"]
        starts = [tokens.index("USER")] + [i + 2 + width for i in turns[:-1]]
        asked = ["-".join(w for w in tokens[s:e] if w in ("top", "bottom", "left", "right"))
                 for s, e in zip(starts, turns, strict=True)]
        assert sorted(asked) == sorted(quadrants)  # all four quadrants asked, one turn each
        supervised = tok.convert_ids_to_tokens(labels[b][labels[b] != -100].tolist())
        assert len(supervised) == 4 * width and supervised[width - 1::width] == ["</s>"] * 4
        if restate:
            assert supervised[0::3] == asked
        digits_said = supervised[width - 2::width]
        assert digits_said == [str(int(grid_digits[b, quadrants.index(q)])) for q in asked]
        assert all((labels[b][i + 2: i + 2 + width] != -100).all() for i in turns)  # right after "ASSISTANT :"
        first_turn = tokens[: turns[0] + 2]
        prompts = [digits_vqa.prompt(t.format(pos=asked[0].replace("-", " "))).replace("<image>", "<image>" * 256)
                   for t in digits_vqa.TEMPLATES]
        assert first_turn in [tok.convert_ids_to_tokens(tok(x)["input_ids"]) for x in prompts]  # = evaluation prompt
    assert (ids == tok.convert_tokens_to_ids("<image>")).sum(dim=1).tolist() == [256] * 3
    assert tok.unk_token_id not in ids.flatten().tolist()
    assert batch["pixel_values"].shape == (3, 3, 64, 64)


def test_quadrant_probe_pools_each_quadrant_and_leaves_no_hook() -> None:
    model = digits_vqa.build()
    probe = digits_vqa.QuadrantProbe(model)
    # projected image tokens whose value is their quadrant's index (row-major 16x16 patches)
    quadrant = torch.tensor([[2 * (r // 8) + c // 8 for c in range(16)] for r in range(16)], dtype=torch.float32)
    probe._tokens = quadrant.reshape(1, 256, 1).expand(1, 256, model.config.text_config.hidden_size)
    with torch.no_grad():
        probe.head.weight.zero_()
        probe.head.weight[:4, 0] = torch.tensor([0.0, 10.0, 20.0, 30.0])  # logit of class c = c * 10 * token value
        probe.head.bias.zero_()
    # the mean token of quadrant i is i, so the probe's logits there are [0, 10i, 20i, 30i, 0...]: class 3
    # wins except in quadrant 0 (all zero); the loss is small only if each quadrant is pooled on its own
    low = probe.loss(torch.tensor([[0, 3, 3, 3]])).item()
    high = probe.loss(torch.tensor([[0, 0, 0, 0]])).item()
    assert low < 0.7 < 5 < high
    probe.remove()
    assert not model.model.multi_modal_projector._forward_hooks


def test_fingerprint(model: transformers.LlavaForConditionalGeneration) -> None:
    q = digits_vqa.questions("test", 8, seed=0)
    inputs, out = _first_step(model, digits_vqa.Questions(q.grids[:4], q.digits[:4], q.questions[:4],
                                                            q.answers[:4], q.positions[:4]))
    answers = model.processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    logits = out.logits[0][0, 30:36].tolist()
    again = _first_step(model, digits_vqa.Questions(q.grids[:4], q.digits[:4], q.questions[:4], q.answers[:4],
                                                   q.positions[:4]))[1]
    assert torch.equal(out.logits[0], again.logits[0])
    if FINGERPRINT_ANSWERS is not None:
        assert [a.strip() for a in answers] == FINGERPRINT_ANSWERS
        assert logits == pytest.approx(FINGERPRINT_LOGITS, abs=1e-3)


# The acceptance bar (evaluate n=200, seed=0 measures the checkpoint; docs/reference-models.md).
ACCEPTANCE = 0.90


@pytest.fixture(scope="module")
def plain(model: transformers.LlavaForConditionalGeneration) -> dict[str, float]:
    return accel.zoo.evaluate("digits-vqa", model, n=40, seed=0)


def test_held_out_accuracy_and_patched_model(model: transformers.LlavaForConditionalGeneration,
                                             plain: dict[str, float]) -> None:
    assert plain["n"] == 40 and plain["accuracy"] >= 0.2  # chance is 0.1
    handle = accel.patch(model, method="none")  # hooks on the model; evaluate must run through them
    try:
        assert accel.zoo.evaluate("digits-vqa", model, n=40, seed=0) == plain
    finally:
        handle.unpatch()


def test_meets_acceptance_accuracy(plain: dict[str, float]) -> None:
    assert plain["accuracy"] >= ACCEPTANCE


def test_answer_follows_the_asked_quadrant(model: transformers.LlavaForConditionalGeneration) -> None:
    """The same grid asked about each quadrant: the answers are that grid's four digits in turn (the
    model reads the asked quadrant, not one fixed place)."""
    q = digits_vqa.questions("test", 6, seed=3)
    grids = q.grids.repeat_interleave(4, dim=0)
    texts = [digits_vqa.TEMPLATES[i % 4].format(pos=p) for i in range(6) for p in digits_vqa.POSITIONS]
    got = digits_vqa.answer(model, grids, texts)
    want = [str(d) for d in q.digits.flatten().tolist()]
    assert all(a in "0123456789" and len(a) == 1 for a in got)
    assert sum(a == w for a, w in zip(got, want, strict=True)) >= 22  # of 24
    assert len({tuple(got[4 * i : 4 * i + 4]) for i in range(6)}) > 1


def test_grow_appends_identity_layers(model: transformers.LlavaForConditionalGeneration) -> None:
    """`grow` (the last training phase's start): new layers with zero output projections leave the
    model's function unchanged."""
    deeper = digits_vqa.grow(digits_vqa.CHECKPOINT, digits_vqa.LAYERS + 2).eval()
    assert deeper.config.text_config.num_hidden_layers == digits_vqa.LAYERS + 2
    q = digits_vqa.questions("test", 2, seed=0)
    a, b = _first_step(model, q)[1], _first_step(deeper, q)[1]
    assert torch.allclose(a.logits[0], b.logits[0], atol=1e-5)
    with pytest.raises(ValueError, match="cannot shrink"):
        digits_vqa.grow(digits_vqa.CHECKPOINT, 4)


def test_with_vision_of_keeps_the_vision_side_and_starts_a_fresh_lm() -> None:
    stored = digits_vqa.load().state_dict()
    fresh = digits_vqa.with_vision_of(digits_vqa.CHECKPOINT, 4).state_dict()
    vision = [k for k in fresh if k.startswith(digits_vqa.VISION_PREFIXES)]
    assert vision and all(torch.equal(fresh[k], stored[k]) for k in vision)
    lm = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert fresh[lm].shape == stored[lm].shape and not torch.equal(fresh[lm], stored[lm])
    assert sum(k.startswith("model.language_model.layers.") for k in fresh) == 4 * 9  # 4 layers of 9 tensors
    with pytest.raises(ValueError, match="exclude each other"):
        digits_vqa.TrainConfig(init_from=str(digits_vqa.CHECKPOINT), vision_from=str(digits_vqa.CHECKPOINT))


def test_quadrant_attention_measures_where_the_model_reads(model: transformers.LlavaForConditionalGeneration) -> None:
    """Per layer, the asked quadrant's share of the last prompt token's image attention: in [0, 1], one
    per LM layer, well above chance (0.25) somewhere (the model reads the asked quadrant: the answers
    follow it), and the model keeps its attention implementation."""
    before = model.config._attn_implementation
    shares = digits_vqa.quadrant_attention(model, n=16)
    assert len(shares) == digits_vqa.LAYERS and all(0.0 <= s <= 1.0 for s in shares)
    assert max(shares) > 0.4 and min(shares) < 0.3
    assert model.config._attn_implementation == before
    with pytest.raises(ValueError, match="n=0"):
        digits_vqa.quadrant_attention(model, n=0)
    handle = accel.patch(model, method="pyramid-drop")
    try:
        with pytest.raises(ValueError, match="unpatched model"):
            digits_vqa.quadrant_attention(model, n=4)
    finally:
        handle.unpatch()


def test_bad_input_is_refused(model: transformers.LlavaForConditionalGeneration) -> None:
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration"):
        digits_vqa.evaluate(object(), n=4)
    for options in ({"n": 0}, {"n": 2.5}, {"n": True}, {"batch": 0}):
        with pytest.raises(ValueError, match="expected a positive integer"):
            digits_vqa.evaluate(model, **options)
    with pytest.raises(ValueError, match="unknown options"):
        accel.zoo.evaluate("digits-vqa", model, n=4, steps=20)
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        digits_vqa.TrainConfig(steps=0)
    for bad in ({"warmup": 0}, {"layers": 0}, {"lr": -1.0}, {"minutes": 0.0}, {"single_class": 2.0},
                {"aux_weight": -1.0}, {"init_from": "/nonexistent.safetensors"}, {"vision_from": "/"}):
        with pytest.raises(ValueError, match=f"TrainConfig.{next(iter(bad))}"):
            digits_vqa.TrainConfig(**bad)


def test_other_checkpoints_are_refused_in_one_line(tmp_path) -> None:
    """A missing file, a folder, another format and another model's checkpoint: ValueError, one line, from
    `load`, `with_vision_of` and `grow`; `train_full_depth` refuses a path among the zoo's checkpoints or
    not a .safetensors file in an existing folder before it trains."""
    (tmp_path / "notes.safetensors").write_text("not safetensors")
    other = digits_vqa.CHECKPOINT.parent.parent / "judge" / "digits-judge.safetensors"  # another model's file
    for path, message in ((tmp_path / "missing.safetensors", "does not exist"), (tmp_path, "is a directory"),
                          (tmp_path / "notes.safetensors", "not a readable safetensors file"),
                          (other, "does not match the digits-vqa architecture|no digits-vqa language-model|vision tower")):
        for call in (lambda p: digits_vqa.load(path=p), lambda p: digits_vqa.with_vision_of(p, 2),
                     lambda p: digits_vqa.grow(p, 16)):
            with pytest.raises(ValueError, match=message) as err:
                call(path)
            assert "\n" not in str(err.value) and len(str(err.value)) < 400
    with pytest.raises(ValueError, match="layers=0"):
        digits_vqa.with_vision_of(digits_vqa.CHECKPOINT, 0)
    for path in (other, digits_vqa.CHECKPOINT, tmp_path / "x.pt", tmp_path / "no" / "x.safetensors", tmp_path):
        with pytest.raises(ValueError, match="train_full_depth"):
            digits_vqa.train_full_depth(path)


def test_training_with_the_probe_runs_and_removes_its_hook() -> None:
    model = digits_vqa.train(digits_vqa.TrainConfig(steps=2, batch=2, warmup=1, aux_weight=1.0, minutes=5.0),
                             log_every=100)
    assert not model.training and not model.model.multi_modal_projector._forward_hooks
    assert set(model.state_dict()) == set(digits_vqa.build(8).state_dict())  # the probe is not part of the model
