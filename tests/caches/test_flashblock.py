"""`method="flashblock"` (caches/flashblock.py) on diffusers' `LLaDA2Pipeline` with the zoo's block-causal
Qwen2: the prefix KV cache gives the stock pipeline's tokens in every calling mode; the split-and-merge
attention is exact when it has nothing to reuse; reuse and refresh happen at the steps the options say;
state is per call; models and calls it cannot serve exactly are refused before they run."""

from __future__ import annotations

import pytest
import torch
import transformers

import accel
from accel.caches.flashblock import FlashBlock, FlashBlockConfig, LayerState, attention_with_lse
from accel.errors import InvalidOptionError, UnsupportedInputError, UnsupportedModelError
from accel.sparse_attn.methods.sdpa_route import SDPACall
from accel.zoo import dllm


@pytest.fixture
def pipe():
    torch.set_num_threads(2)
    return accel.zoo.load("llada2", size="tiny")


CALLS = {
    "batch 1": dict(batch=1),
    "left padding": dict(batch=3, vary=True),
    "editing": dict(batch=2, vary=True, threshold=0.7, editing_threshold=0.5, max_post_steps=4),
    "eos stop": dict(batch=2, eos_early_stop=True, eos_token_id=5),  # token 5 (":") shows up: rows finish
    "sampling": dict(batch=2, temperature=1.0, top_k=4, sampling_method="multinomial"),
}


def _args(pipe, batch=1, vary=False, **overrides):
    args = {**dllm.call_inputs(pipe, batch=batch, vary=vary), **overrides}
    if args.get("temperature"):
        args["generator"] = torch.Generator().manual_seed(0)
    return args


@pytest.mark.parametrize("case", CALLS)
def test_the_prefix_cache_gives_the_stock_pipelines_tokens(pipe, case):
    options = dict(CALLS[case])
    stock = pipe(**_args(pipe, **options)).sequences
    with accel.patch(pipe, method="flashblock", refresh=1) as handle:
        cached = pipe(**_args(pipe, **options)).sequences
        stats = handle.stats()["flashblock"]
    assert torch.equal(cached, stock)
    assert stats["prefix_tokens_fed"] < stats["window_tokens"] / 3  # the prefix ran once, not every step
    assert stats["cache_MB"] > 0 and "external_reuses" not in stats


def test_split_and_merge_equals_the_dense_attention_when_nothing_is_reused(pipe):
    """One refinement step per block: the external part is always fresh, so FlashBlock's merged attention
    must give the stock tokens (the merge itself exact up to rounding)."""
    args = _args(pipe, batch=2, vary=True, num_inference_steps=1)
    stock = pipe(**args).sequences
    with accel.patch(pipe, method="flashblock", refresh=0) as handle:
        merged = pipe(**args).sequences
        stats = handle.stats()["flashblock"]
    assert torch.equal(merged, stock)
    assert stats["path"] == "cpu-flash" and "external_reuses" not in stats and stats["external_refreshes"] > 0


@pytest.mark.parametrize("refresh,layers", [(0, "all"), (2, "all"), (0, "1")])
def test_reuse_and_refresh_follow_the_options(pipe, refresh, layers):
    steps, blocks, n_layers = 4, 2, 2  # threshold > 1: exactly `steps` calls per block
    args = _args(pipe, num_inference_steps=steps, threshold=1.5)
    with accel.patch(pipe, method="flashblock", refresh=refresh, layers=layers) as handle:
        out = pipe(**args).sequences
        stats = handle.stats()["flashblock"]
    assert stats["calls"] == steps * blocks and out.shape == (1, dllm.SIZES["tiny"].gen_length)
    reusing = n_layers if layers == "all" else 1
    fresh_per_block = 1 if refresh == 0 else steps // refresh
    assert stats["external_reuses"] == reusing * blocks * (steps - fresh_per_block)
    assert stats["external_refreshes"] == blocks * (reusing * fresh_per_block + (n_layers - reusing) * steps)


def test_state_is_per_call_and_released_after_it(pipe):
    first, second = _args(pipe, batch=2, vary=True), _args(pipe)
    second["prompt"] = "1 2 3 " * 11
    with accel.patch(pipe, method="flashblock") as handle:
        method, outs = handle.methods[0], []
        for args in (first, second, first):
            outs.append(pipe(**args).sequences)
            assert method._run is None  # the KV cache and stored attention went with the call
    with accel.patch(pipe, method="flashblock"):
        fresh = pipe(**first).sequences
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[0], fresh)  # nothing carried between calls


def test_unpatch_restores_the_model_and_outside_calls_pass_through(pipe):
    args = _args(pipe, batch=2, vary=True)
    stock = pipe(**args).sequences
    ids = torch.randint(pipe.model.config.vocab_size, (1, 24))
    with torch.no_grad():
        logits = pipe.model(ids).logits
    handle = accel.patch(pipe, method="flashblock")
    with torch.no_grad():
        assert torch.equal(pipe.model(ids).logits, logits)  # no pipeline on the stack: the model as it is
    pipe(**args)
    handle.unpatch()
    assert "forward" not in vars(pipe.model)
    assert all("forward" not in vars(layer.self_attn) for layer in pipe.model.model.layers)
    assert torch.equal(pipe(**args).sequences, stock)


def _variant(pipe, attn: str, causal: bool = True):
    cfg = pipe.model.config
    cfg = transformers.Qwen2Config(**{**cfg.to_dict(), "is_causal": causal})
    cfg._attn_implementation = attn
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    model.load_state_dict(pipe.model.state_dict())
    return dllm.pipeline(model, dllm.SIZES["tiny"].block_length)


def test_models_it_cannot_serve_exactly_are_refused_before_any_change(pipe):
    bidirectional = _variant(pipe, "sdpa", causal=False)
    with pytest.raises(UnsupportedModelError, match="block-causal"):
        accel.patch(bidirectional, method="flashblock")
    assert accel.patch_of(bidirectional) is None and "forward" not in vars(bidirectional.model)
    with pytest.raises(UnsupportedModelError, match="attention implementation 'eager'"):
        accel.patch(_variant(pipe, "eager"), method="flashblock")
    with pytest.raises(UnsupportedModelError, match="LLaDA2Pipeline"):
        accel.patch(accel.zoo.load("pixart-alpha", size="tiny"), method="flashblock")
    for options, match in [({"refresh": -1}, "refresh"), ({"layers": "2"}, "layers"), ({"layers": "a"}, "layers")]:
        with pytest.raises(InvalidOptionError, match=match):
            accel.patch(pipe, method="flashblock", **options)
        assert accel.patch_of(pipe) is None


def test_a_token_causal_model_is_prefix_cached_exactly(pipe):
    causal = _variant(pipe, "sdpa")  # plain causal attention: finished tokens never change either
    args = _args(causal, batch=2, vary=True)
    stock = causal(**args).sequences
    with accel.patch(causal, method="flashblock", refresh=1):
        assert torch.equal(causal(**args).sequences, stock)


def test_a_block_length_the_model_is_not_block_causal_at_is_refused_at_the_call(pipe):
    with accel.patch(pipe, method="flashblock"):
        with pytest.raises(UnsupportedInputError, match="block length 4"):
            pipe(**_args(pipe, block_length=4))  # the model's blocks are 8: a 4-block shares its keys


def test_attention_with_lse_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    keep = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    keep[0, 0, 2] = False  # a row that keeps nothing
    out, lse, path = attention_with_lse(q, k, v, keep, 0.35)
    scores = (q @ k.transpose(-1, -2) * 0.35).masked_fill(~keep, float("-inf"))
    want_lse = torch.logsumexp(scores, -1)
    want = torch.nan_to_num(torch.softmax(scores, -1)) @ v
    assert path == "cpu-flash"
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)
    assert torch.isneginf(lse[0, :, 2]).all() and (out[0, :, 2] == 0).all()


@pytest.mark.parametrize("refresh,prefix_cache", [(0, True), (0, False), (1, True), (1, False)])
def test_a_prompt_shorter_than_a_block(pipe, refresh, prefix_cache):
    """The first block then has no prefix keys: no external part to compute (a 0-key attention)."""
    args = _args(pipe, num_inference_steps=1)
    args["prompt"] = "1 2 3"
    stock = pipe(**args).sequences
    with accel.patch(pipe, method="flashblock", refresh=refresh, prefix_cache=prefix_cache):
        assert torch.equal(pipe(**args).sequences, stock)


@pytest.mark.parametrize("kind", ["causal", "mask", "gqa"])
def test_split_attention_equals_the_dense_call(kind):
    """Fresh external + internal, merged, against the call as the model made it: transformers' causal
    path (`is_causal=True`, no mask; the window's rows before the active block included), a boolean
    block-causal mask with padding, and grouped-query attention."""
    g = torch.Generator().manual_seed(0)
    block, sq, sk = 4, 12, 12
    q = torch.randn(2, 4, sq, 8, generator=g)
    heads = 2 if kind == "gqa" else 4
    k, v = torch.randn(2, heads, sk, 8, generator=g), torch.randn(2, heads, sk, 8, generator=g)
    if kind == "causal":
        call = SDPACall(q, k, v, is_causal=True)
    else:
        keep = (torch.arange(sq)[:, None] // block >= torch.arange(sk)[None] // block)[None, None].repeat(2, 1, 1, 1)
        keep[1, ..., :2] = False  # left padding of the second row
        call = SDPACall(q, k, v, attn_mask=keep, enable_gqa=kind == "gqa")
    method = FlashBlock(FlashBlockConfig(refresh=0))
    method._block = block
    out = method._split_attention(call, LayerState(), reuse=True)
    torch.testing.assert_close(out, call.dense(), atol=1e-5, rtol=1e-5)
    assert method.counters["external_refreshes"] == 1


def test_a_token_causal_model_with_flashblock_merges_exactly(pipe):
    """A plain causal model (accepted: prefix-exact) at one step per block, weights scaled up so that wrong
    attention would change tokens: the merged path gives the stock tokens."""
    causal = _variant(pipe, "sdpa")
    with torch.no_grad():
        for p in causal.model.parameters():
            p.mul_(4.0)
    args = _args(causal, batch=2, vary=True, num_inference_steps=1)
    stock = causal(**args).sequences
    for prefix_cache in (True, False):
        with accel.patch(causal, method="flashblock", refresh=0, prefix_cache=prefix_cache):
            assert torch.equal(causal(**args).sequences, stock)


def test_a_callback_calling_the_model_gets_the_model_as_it_is(pipe):
    seen = {}

    def callback(p, step, timestep, kwargs):
        with torch.no_grad():
            seen.setdefault("logits", p.model(kwargs["block_x"]).logits)
        return {}

    args = _args(pipe)
    with accel.patch(pipe, method="flashblock") as handle:
        pipe(**args, callback_on_step_end=callback)
        stats = handle.stats()["flashblock"]
    assert seen["logits"].shape[1] > dllm.SIZES["tiny"].block_length  # every position, not the last block
    assert stats["calls"] == 8 and stats["prefix_tokens_fed"] < stats["window_tokens"]


def test_denoising_methods_refuse_a_block_diffusion_language_pipeline(pipe):
    for method in ("tdc", "delta-dit", "sixbit", ["flashblock", "delta-dit"]):
        with pytest.raises(UnsupportedModelError, match="language model"):
            accel.patch(pipe, method=method)
        assert accel.patch_of(pipe) is None and "forward" not in vars(pipe.model)


# ---- DiffusionGemmaPipeline: the pipeline caches the context; FlashBlock reuses the canvas' attention to it --


@pytest.fixture
def gemma():
    torch.set_num_threads(2)
    return accel.zoo.load("diffusion-gemma", size="tiny")


def _gemma_args(pipe, **overrides):
    return {**dllm.call_inputs(pipe, batch=2), **overrides}  # a new canvas generator per call


def test_on_diffusion_gemma_refresh_1_is_the_stock_pipeline_and_nothing_reused_is_exact(gemma):
    stock = gemma(**_gemma_args(gemma)).sequences
    with accel.patch(gemma, method="flashblock", refresh=1) as handle:
        assert torch.equal(gemma(**_gemma_args(gemma)).sequences, stock)
        assert "external_reuses" not in handle.stats()["flashblock"]
    one_step = gemma(**_gemma_args(gemma, num_inference_steps=1)).sequences
    with accel.patch(gemma, method="flashblock") as handle:  # one step per canvas: split + merge, never reuse
        assert torch.equal(gemma(**_gemma_args(gemma, num_inference_steps=1)).sequences, one_step)
        stats = handle.stats()["flashblock"]
    assert stats["path"] == "cpu-flash" and "external_reuses" not in stats


@pytest.mark.parametrize("window", [4096, 6])  # 6: the sliding layers' keys stop growing between canvases
@pytest.mark.parametrize("refresh", [0, 2])
def test_on_diffusion_gemma_reuse_follows_the_canvases_and_the_options(gemma, refresh, window):
    size = dllm.SIZES["tiny"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = dllm.gemma_pipeline(dllm.build_gemma(size, sliding_window=window))
    canvases, layers = size.gen_length // size.block_length, size.layers
    with accel.patch(pipe, method="flashblock", refresh=refresh) as handle:
        out = pipe(**_gemma_args(pipe)).sequences
        stats = handle.stats()["flashblock"]
    fresh = 1 if refresh == 0 else size.steps // refresh
    assert out.shape == (2, size.gen_length) and stats["calls"] == canvases * size.steps
    assert stats["external_refreshes"] == layers * canvases * fresh
    assert stats["external_reuses"] == layers * canvases * (size.steps - fresh)
    assert 0 < stats["stored_MB"] and 0 < stats["attention_saved"] < 1


def test_on_diffusion_gemma_state_is_per_call_and_unpatch_restores(gemma):
    stock = gemma(**_gemma_args(gemma)).sequences
    ids = torch.randint(gemma.model.config.text_config.vocab_size, (1, 12))
    handle = accel.patch(gemma, method="flashblock")
    method = handle.methods[0]
    outs = [gemma(**_gemma_args(gemma)).sequences for _ in range(2)]
    assert method._run is None and torch.equal(outs[0], outs[1])  # nothing held or carried between calls
    with torch.no_grad():  # outside the pipeline: the model as it is
        assert gemma.model(input_ids=ids).logits.shape[1] == dllm.SIZES["tiny"].block_length
    handle.unpatch()
    assert "forward" not in vars(gemma.model)
    assert all("forward" not in vars(layer.self_attn) for layer in gemma.model.model.decoder.layers)
    assert torch.equal(gemma(**_gemma_args(gemma)).sequences, stock)


def test_on_diffusion_gemma_a_static_cache_is_refused_unless_exact(gemma):
    """The static cache's keys are the whole buffer (context, canvas, unused slots): the last block of keys
    is not the canvas, so reuse would freeze the canvas' own attention; refresh=1 stays exact."""
    static = _gemma_args(gemma, cache_implementation="static")
    stock = gemma(**static).sequences
    with accel.patch(gemma, method="flashblock"):
        with pytest.raises(UnsupportedInputError, match="static"):
            gemma(**_gemma_args(gemma, cache_implementation="static"))
    with accel.patch(gemma, method="flashblock", refresh=1):
        assert torch.equal(gemma(**_gemma_args(gemma, cache_implementation="static")).sequences, stock)


def test_on_diffusion_gemma_turning_its_own_cache_off_is_refused(gemma):
    with pytest.raises(InvalidOptionError, match="prefix_cache=False"):
        accel.patch(gemma, method="flashblock", prefix_cache=False)
    assert accel.patch_of(gemma) is None and "forward" not in vars(gemma.model)


# ---- AnyFlowFARPipeline: a chunk's steps reuse their attention to the KV cache of the earlier chunks -------


@pytest.fixture
def far():
    torch.set_num_threads(2)
    return accel.zoo.load("anyflow-far", size="tiny")


def _far_args(pipe, **overrides):
    return {**accel.zoo.far.call_inputs(pipe, batch=2, guidance_scale=3.0), **overrides}  # CFG: 4 rows


def _close(out, ref):  # flex (stock) against SDPA: the same attention, fp32 rounding apart
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)


def test_on_anyflow_far_refresh_1_and_nothing_reused_give_the_stock_video(far):
    stock = far(**_far_args(far)).frames
    with accel.patch(far, method="flashblock", refresh=1) as handle:
        _close(far(**_far_args(far)).frames, stock)
        stats = handle.stats()["flashblock"]
    assert stats["path"] == "sdpa" and "external_reuses" not in stats
    one_step = far(**_far_args(far, num_inference_steps=1)).frames
    with accel.patch(far, method="flashblock") as handle:  # one step per chunk: split + merge, never reuse
        _close(far(**_far_args(far, num_inference_steps=1)).frames, one_step)
        assert "external_reuses" not in handle.stats()["flashblock"]


@pytest.mark.parametrize("refresh", [0, 2])
def test_on_anyflow_far_reuse_follows_the_chunks_and_the_options(far, refresh):
    size = accel.zoo.far.SIZES["tiny"]
    stock = far(**_far_args(far)).frames
    with accel.patch(far, method="flashblock", refresh=refresh) as handle:
        out = far(**_far_args(far)).frames
        stats = handle.stats()["flashblock"]
    reading, layers = len(size.chunks) - 1, size.layers  # the first chunk has no cache to read
    fresh = 1 if refresh == 0 else size.steps // refresh
    assert stats["calls"] == len(size.chunks) * size.steps and stats["path"] == "cpu-flash"
    assert stats["external_refreshes"] == layers * reading * fresh
    assert stats["external_reuses"] == layers * reading * (size.steps - fresh)
    err = ((out - stock).abs().max() / stock.abs().max()).item()
    assert 0 < err < 0.05  # reused, so not the stock output, but near it


def test_on_anyflow_far_state_is_per_call_and_unpatch_restores(far):
    stock = far(**_far_args(far)).frames
    handle = accel.patch(far, method="flashblock")
    method = handle.methods[0]
    outs = [far(**_far_args(far)).frames for _ in range(2)]
    assert method._run is None and torch.equal(outs[0], outs[1])
    with pytest.raises(UnsupportedInputError, match="use_kv_cache"):
        far(**_far_args(far, use_kv_cache=False))
    handle.unpatch()
    assert "forward" not in vars(far.transformer)
    for block in far.transformer.blocks:
        assert "forward" not in vars(block.attn1) and "_attention_backend" not in vars(block.attn1.processor)
    assert torch.equal(far(**_far_args(far)).frames, stock)


def test_on_anyflow_far_turning_its_own_cache_off_is_refused(far):
    with pytest.raises(InvalidOptionError, match="prefix_cache=False"):
        accel.patch(far, method="flashblock", prefix_cache=False)
    assert accel.patch_of(far) is None and "forward" not in vars(far.transformer)
