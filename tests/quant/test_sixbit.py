"""`method="sixbit"` (quant/sixbit.py) on the tiny zoo pipelines: routing by the predictor, step by step;
composition with TDC; unpatch restores bit-identical weights (from disk or CPU memory) or refuses when they
were freed; save/load of the packed weights; memory; refusals; `accel calibrate`."""

from __future__ import annotations

import json

import pytest
import torch

import accel
from accel.adapters.block_io import block_io
from accel.errors import AccelError, InvalidOptionError, UnsupportedModelError
from accel.zoo import generate


def _blocks(pipe):
    return [ref.module for ref in accel.adapters.adapter_for(pipe.transformer).blocks(pipe.transformer)]


def _routes_and_gammas(pipe, handle, steps):
    """Per block call: the route the method chose (its layers share one line here, so one route), and
    Gamma of that block's previous call in the same branch as measured here, independently, from the
    block's own input and output."""
    method = handle.methods[0]
    states = {id(s.module): s for s in method.blocks.values()}
    seen, last, hooks = [], {}, []
    for block in _blocks(pipe):
        io = block_io(block)

        def before(module, args, kwargs, io=io):
            state = states[id(module)]
            key = (id(module), handle.tracker.branch)
            routes = {layer.route for layer in state.layers}
            assert len(routes) == 1
            seen.append((routes.pop(), last.get(key), handle.tracker.step))
            module._test_in = io.inputs(module, args, kwargs)[0]

        def after(module, args, kwargs, output, io=io):
            key = (id(module), handle.tracker.branch)
            state = states[id(module)]
            x, y = module.__dict__.pop("_test_in").float(), io.outputs(output)[0].float()
            last[key] = float((y - x).abs().sum() / x.abs().sum()) if state.ran else None

        hooks += [block.register_forward_pre_hook(before, with_kwargs=True),
                  block.register_forward_hook(after, with_kwargs=True)]
    try:
        generate(pipe, steps=steps)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("model", ["pixart-alpha", "wan"])
def test_routing_follows_the_predictor_step_by_step(model):
    pipe = accel.zoo.load(model, size="tiny")
    alpha, beta, threshold = 1.0, 0.0, 0.5
    with accel.patch(pipe, method="sixbit", alpha=alpha, beta=beta, threshold=threshold) as handle:
        seen = _routes_and_gammas(pipe, handle, steps=4)
        stats = handle.stats()["sixbit"]
    for route, gamma, step in seen:
        expected = "int8" if gamma is None or alpha * gamma + beta > threshold else "nvfp4"
        assert route == expected, (route, gamma, step)
    assert {r for r, _, _ in seen} == {"int8", "nvfp4"}  # the threshold splits this run
    assert all(r == "int8" for r, _, s in seen if s == 0)  # no Gamma at the first step
    layers = stats["layers"] * (2 if model == "wan" else 1)  # Wan: cond and uncond calls
    assert stats["per_step"][0] == [0, layers, 0, 0] and sum(stats["per_step"][-1]) == layers
    assert set(stats["paths"]) <= {"int8-x86-dynamic (packed per call)", "int8-int-mm", "nvfp4-dequant", "w4a16-dequant"}
    assert 4.5 <= stats["activation_bits"] <= 8


def test_with_tdc_a_block_skipped_at_the_previous_step_runs_int8():
    pipe = accel.zoo.load("wan", size="tiny")
    with accel.patch(pipe, method=["sixbit", "tdc"]) as handle:  # composable by name
        assert [m.name for m in handle.methods] == ["sixbit", "tdc"]
    from accel.caches.tdc import TDCConfig
    from accel.quant.sixbit import SixBitConfig

    with accel.patch(pipe, method=[SixBitConfig(threshold=10.0), TDCConfig(threshold=10.0, warmup=1,
                                                                           protected_blocks=0)]) as handle:
        seen = _routes_and_gammas(pipe, handle, steps=6)
        stats = handle.stats()
    assert stats["tdc"]["blocks_skipped"] > 0 and stats["sixbit"]["skipped_block_calls"] > 0
    after_skip = [route for route, gamma, step in seen if gamma is None and step > 0]
    assert after_skip and all(route == "refresh" for route in after_skip)  # INT8 or A16, per layer (below)
    assert any(route == "nvfp4" for route, _, _ in seen)


@pytest.mark.parametrize("purified,ratio", [(True, 25.0), (True, 1.0), (False, 1.0)])
def test_purified_delta_refresh_runs_outlier_layers_unquantized_after_a_skip(purified, ratio):
    """At a block's first computed step after a TDC skip each layer runs A16 exactly when its input's
    max|x| / mean|x| exceeds outlier_ratio, else INT8; off, such steps run INT8 (the plain predictor)."""
    from accel.caches.tdc import TDCConfig
    from accel.quant.sixbit import SixBitConfig

    pipe = accel.zoo.load("wan", size="tiny")
    sixbit = SixBitConfig(threshold=10.0, purified_refresh=purified, outlier_ratio=ratio)
    with accel.patch(pipe, method=[sixbit, TDCConfig(threshold=10.0, warmup=1, protected_blocks=0)]) as handle:
        method, calls, hooks = handle.methods[0], [], []
        for layer in method.layers:
            def record(module, args, output, layer=layer):
                x = args[0].abs().float()
                calls.append((layer.route, layer.ran_as, float(x.amax() / x.mean())))
            hooks.append(pipe.transformer.get_submodule(layer.name).register_forward_hook(record))
        generate(pipe, steps=6)
        for h in hooks:
            h.remove()
        stats = handle.stats()["sixbit"]
    assert stats["skipped_block_calls"] > 0
    refresh = [(ran, r) for route, ran, r in calls if route == "refresh"]
    if not purified:
        assert not refresh and stats.get("a16_layer_calls", 0) == 0
        return
    assert refresh and all(ran == ("a16" if r > ratio else "int8") for ran, r in refresh)
    assert stats.get("a16_layer_calls", 0) == sum(ran == "a16" for ran, _ in refresh)
    computed = sum(stats.get(f"{r}_layer_calls", 0) for r in ("nvfp4", "int8", "a16"))
    bits = 4.5 * stats.get("nvfp4_layer_calls", 0) + 8 * stats.get("int8_layer_calls", 0) + 16 * stats.get(
        "a16_layer_calls", 0)
    assert stats["activation_bits_with_skips"] == round(bits / (computed + stats["skipped_layer_calls"]), 3)
    assert stats["skipped_layer_calls"] == stats["skipped_block_calls"] * len(method.blocks["blocks.0"].layers)
    assert sum(row[2] for row in stats["per_step"]) == stats.get("a16_layer_calls", 0)
    if ratio == 1.0:
        assert all(ran == "a16" for ran, _ in refresh) and "w4a16-dequant" in stats["paths"]
    assert all(ran in ("nvfp4", "int8") for route, ran, _ in calls if route != "refresh")


@pytest.mark.parametrize("originals", ["auto", "cpu", "disk"])
def test_unpatch_restores_the_same_parameters_bit_exactly(originals):
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    baseline = generate(pipe, steps=2)
    params = {n: (p, p.detach().clone()) for n, p in pipe.transformer.named_parameters()}
    handle = accel.patch(pipe, method="sixbit", originals=originals)
    stats = handle.stats()["sixbit"]
    assert stats["originals"] == ("disk" if originals == "auto" else originals)
    emptied = [n for n, (p, _) in params.items() if p.numel() == 0]
    assert len(emptied) == stats["layers"]  # the quantized layers' weights left the model
    quantized = generate(pipe, steps=2)
    assert not torch.equal(quantized, baseline) and torch.isfinite(quantized).all()
    handle.unpatch()
    for name, (p, saved) in params.items():
        assert dict(pipe.transformer.named_parameters())[name] is p and torch.equal(p, saved), name
    assert torch.equal(generate(pipe, steps=2), baseline)


def test_dropped_originals_make_unpatch_refuse_and_change_nothing():
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    handle = accel.patch(pipe, method="sixbit", originals="drop")
    before = generate(pipe, steps=2)
    with pytest.raises(AccelError, match="originals='drop'"):
        handle.unpatch()
    assert handle.active and torch.equal(generate(pipe, steps=2), before)


def test_memory_and_save_load_round_trip(tmp_path):
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    with accel.patch(pipe, method="sixbit") as handle:
        stats = handle.stats()["sixbit"]
        assert stats["memory_ratio_vs_bf16"] >= 3.5  # 16 bits against 4 + 8/16 (+ one fp32 per tensor)
        out = generate(pipe, steps=3)
        accel.quant.save(handle, tmp_path)
        packed = [(layer.nvfp4.packed.clone(), layer.nvfp4.scales.view(torch.uint8).clone())
                  for layer in handle.methods[0].layers]
    with accel.patch(pipe, method="sixbit", weights=str(tmp_path)) as handle:
        loaded = [(layer.nvfp4.packed, layer.nvfp4.scales.view(torch.uint8)) for layer in handle.methods[0].layers]
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(packed, loaded, strict=True))
        assert torch.equal(generate(pipe, steps=3), out)


@pytest.mark.parametrize("options,error,match", [
    ({"threshold": -1.0}, InvalidOptionError, "threshold"),
    ({"originals": "gpu"}, InvalidOptionError, "originals"),
    ({"calibration": "/nonexistent/cal.json"}, InvalidOptionError, "calibration"),
    ({"weights": "/nonexistent"}, InvalidOptionError, "weights"),
    ({"hadamard": 128}, UnsupportedModelError, "multiples of 128"),  # tiny layers are 32/64 wide
    ({"hadamard": True}, InvalidOptionError, "hadamard"),
])
def test_bad_options_and_unsupported_layers_are_refused_before_any_change(options, error, match):
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    weights = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    with pytest.raises(error, match=match):
        accel.patch(pipe, method="sixbit", **options)
    assert accel.patch_of(pipe) is None
    assert all(torch.equal(p, weights[n]) for n, p in pipe.transformer.named_parameters())
    assert not any("forward" in vars(m) for m in pipe.transformer.modules())


def test_calibrate_fits_the_predictor_and_the_method_reads_it(tmp_path):
    from accel.cli import main

    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "pixart-alpha", "--steps", "4", "--seeds", "0", "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["samples"] > 10 and all(map(torch.isfinite, torch.tensor([cal["alpha"], cal["beta"]])))
    assert len(cal["layers"]) == 2 * 10  # tiny PixArt: 2 blocks of 10 linear layers, each its own line
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    with accel.patch(pipe, method="sixbit", calibration=str(out)) as handle:
        method = handle.methods[0]
        assert (method.alpha, method.beta, method.threshold) == (cal["alpha"], cal["beta"], cal["threshold"])
        assert {layer.name: [layer.alpha, layer.beta] for layer in method.layers} == cal["layers"]
        generate(pipe, steps=4)
        assert handle.stats()["sixbit"]["nvfp4_layer_calls"] > 0


@pytest.mark.parametrize("route", ["nvfp4", "int8"])
def test_fixed_routes_for_ablations(route):
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    with accel.patch(pipe, method="sixbit", route=route) as handle:
        generate(pipe, steps=3)
        stats = handle.stats()["sixbit"]
    assert stats.get(f"{'int8' if route == 'nvfp4' else 'nvfp4'}_layer_calls", 0) == 0
    assert stats["activation_bits"] == (4.5 if route == "nvfp4" else 8)


def test_int8_paths_on_cpu_cast_or_cached():
    """On a CPU the INT8 route runs PyTorch's x86 int8 GEMM: prepacked once with int8_weights='cached', cast
    from NVFP4 and packed per call by default; `_int_mm` only where that engine is missing."""
    if not {"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines):
        pytest.skip("this PyTorch has no x86 quantized engine")
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    runs = {}
    for mode in ("cast", "cached"):
        with accel.patch(pipe, method="sixbit", route="int8", int8_weights=mode) as handle:
            runs[mode] = generate(pipe, steps=2)
            runs[mode + "-paths"] = set(handle.stats()["sixbit"]["paths"])
    assert runs["cast-paths"] == {"int8-x86-dynamic (packed per call)"}
    assert runs["cached-paths"] == {"int8-x86-dynamic"}
    assert torch.equal(runs["cast"], runs["cached"])  # the same INT8 weights, packed once or each time


def test_stored_weights_and_calibration_files_are_checked_like_options(tmp_path):
    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    with accel.patch(pipe, method="sixbit") as handle:
        accel.quant.save(handle, tmp_path / "saved")
    with pytest.raises(AccelError, match="removed"):
        accel.quant.save(handle, tmp_path / "again")
    with pytest.raises(AccelError, match="no sixbit patch"):
        accel.quant.save(42, tmp_path / "int")
    other = accel.zoo.load("pixart-alpha", size="tiny")
    layer = other.transformer.transformer_blocks[0].attn1.to_q
    other.transformer.transformer_blocks[0].attn1.to_q = torch.nn.Linear(layer.in_features, 2 * layer.out_features)
    with pytest.raises(InvalidOptionError, match="to_q is stored as"):
        accel.patch(other, method="sixbit", weights=str(tmp_path / "saved"))
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "sixbit.safetensors").write_bytes(b"not a safetensors file")
    for bad in ({"alpha": float("nan"), "beta": 0}, [1, 2], {"alpha": 1, "beta": 0, "threshold": -1}):
        (tmp_path / "cal.json").write_text(json.dumps(bad))
        with pytest.raises(InvalidOptionError, match="calibration"):
            accel.patch(pipe, method="sixbit", calibration=str(tmp_path / "cal.json"))
    with pytest.raises(InvalidOptionError, match="weights"):
        accel.patch(pipe, method="sixbit", weights=str(tmp_path / "garbage"))
    assert accel.patch_of(pipe) is None and accel.patch_of(other) is None
    with accel.patch(pipe, method="sixbit", route="nvfp4", int8_weights="cached") as handle:
        stats = handle.stats()["sixbit"]
        assert stats["memory_ratio_vs_bf16"] >= 3.5  # no INT8 copy for an all-NVFP4 run
        assert stats["predictor"]["source"] == "options" and stats["predictor"]["threshold"] == 0.25


def test_calibrate_with_two_steps():
    from accel.quant.calibrate import calibrate

    result = calibrate(accel.zoo.load("pixart-alpha", size="tiny"), seeds=(0,), steps=2)
    assert result["samples"] > 0 and result["layers"] == {}  # one sample per layer: the global line serves


def test_hadamard_rotation_is_exact_in_full_precision_and_runs():
    """The rotation changes nothing but the quantization: rotated weights times rotated activations equal
    the original product (checked on the layers' own weights), and a rotated run gives finite latents."""
    from accel.quant import formats

    pipe = accel.zoo.load("pixart-alpha", size="tiny")
    layer = pipe.transformer.transformer_blocks[0].attn1.to_q
    x = torch.randn(5, layer.in_features)
    w = layer.weight.detach()
    rotated = formats.rotate_blocks(x, 32) @ formats.rotate_blocks(w, 32).T
    torch.testing.assert_close(rotated, x @ w.T, atol=1e-5, rtol=1e-5)
    with accel.patch(pipe, method="sixbit", hadamard=32):
        assert torch.isfinite(generate(pipe, steps=2)).all()


def test_calibrate_names_the_call_that_works_on_the_model(tmp_path, capsys):
    """digits-lego has layers whose input size does not block into 16s: the printed call carries
    unsupported='skip', and that call patches the model with the file."""
    from accel.cli import main

    out = tmp_path / "cal.json"
    assert main(["calibrate", "--model", "digits-lego", "--steps", "4", "--seeds", "0", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"accel.patch(pipe, method='sixbit', calibration='{out}', unsupported='skip')" in said
    pipe = accel.zoo.load("digits-lego")
    with pytest.raises(accel.UnsupportedModelError, match="unsupported='skip'"):
        accel.patch(pipe, method="sixbit", calibration=str(out))
    with accel.patch(pipe, method="sixbit", calibration=str(out), unsupported="skip") as handle:
        generate(pipe, steps=2)
        assert handle.stats()["sixbit"]["unsupported_layers"] > 0
