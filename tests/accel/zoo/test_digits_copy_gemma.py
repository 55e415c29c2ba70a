"""digits-copy-gemma: the DiffusionGemma checkpoint loads offline into a real DiffusionGemmaPipeline, copies
held-out digit strings (the judge's bar), FlashBlock's exact setting keeps its answers, and its training
batches corrupt only the canvas."""

from __future__ import annotations

import pytest
import torch

import accel
import accel.zoo
from accel.zoo import digits_copy, digits_copy_gemma, dllm

ACCEPTANCE = 0.90  # the bar for the trained entry's exact-match accuracy


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return accel.zoo.load("digits-copy-gemma")


def test_loads_as_a_diffusion_gemma_pipeline_and_meets_the_bar(pipe):
    assert type(pipe).__name__ == "DiffusionGemmaPipeline"
    assert pipe.model.config.canvas_length == digits_copy_gemma.CANVAS
    plain = accel.zoo.evaluate("digits-copy-gemma", pipe, n=20, seed=0)
    assert plain["n"] == 20 and plain["accuracy"] >= ACCEPTANCE
    with accel.patch(pipe, method="flashblock", refresh=1):  # exact: the same answers
        assert accel.zoo.evaluate("digits-copy-gemma", pipe, n=20, seed=0) == plain


def test_training_batch_corrupts_only_the_canvas():
    tok = dllm.tokenizer()
    tok.chat_template = dllm.CHAT_TEMPLATE
    context, noisy, clean = digits_copy_gemma._training_batch(tok, 4, torch.Generator().manual_seed(1))
    assert noisy.shape == clean.shape == (4, digits_copy_gemma.CANVAS)
    words = tok.convert_ids_to_tokens(context[0].tolist())
    assert "copy" in words and words.index("=") >= words.index("copy") + digits_copy.DIGITS + 1  # the prompt, clean
    answer = context[:, words.index("=") + 1 :]
    assert answer.shape[1] % digits_copy_gemma.CANVAS == 0  # whole earlier canvases, clean


def test_evaluate_refuses_bad_arguments(pipe):
    with pytest.raises(ValueError, match="unknown options"):
        accel.zoo.evaluate("digits-copy-gemma", pipe, n=4, steps=3)
    with pytest.raises(ValueError, match="positive"):
        digits_copy_gemma.evaluate(pipe, n=0)
