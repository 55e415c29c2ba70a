"""digits-copy: the block-diffusion checkpoint loads offline into a real LLaDA2Pipeline, copies held-out
digit strings (the judge's bar), and its training batches mask only the answer, block by block."""

from __future__ import annotations

import pytest
import torch

import accel
import accel.zoo
from accel.zoo import digits_copy, dllm

ACCEPTANCE = 0.90  # the bar for the trained entry's exact-match accuracy


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return accel.zoo.load("digits-copy")


def test_loads_as_a_block_causal_llada2_pipeline(pipe):
    assert type(pipe).__name__ == "LLaDA2Pipeline"
    assert pipe.model.config._attn_implementation == dllm.BLOCK_CAUSAL
    assert pipe.model.config.block_length == digits_copy.BLOCK
    prompts, digits = digits_copy.problems(2, seed=3)
    out = digits_copy.answers(pipe, prompts)
    assert out.shape == (2, digits_copy.GEN_LENGTH)
    assert torch.equal(out, digits_copy.answers(pipe, prompts))  # greedy: deterministic


def test_meets_acceptance_accuracy_and_survives_a_patch(pipe):
    plain = accel.zoo.evaluate("digits-copy", pipe, n=40, seed=0)
    assert plain["n"] == 40 and plain["accuracy"] >= ACCEPTANCE
    with accel.patch(pipe, method="flashblock", refresh=1):  # exact: the same answers
        assert accel.zoo.evaluate("digits-copy", pipe, n=40, seed=0) == plain


def test_training_batch_masks_only_the_answer():
    tok = dllm.tokenizer()
    batch = digits_copy._training_batch(tok, 8, torch.Generator().manual_seed(0))
    labels, noisy = batch["labels"], batch["input_ids"]  # labels: the original token where masked
    masked = labels != -100
    assert masked.any(dim=1).all()  # every sequence has something to learn
    assert (noisy[masked] == tok.mask_token_id).all() and (noisy[~masked] != tok.mask_token_id).all()
    equals = tok.convert_tokens_to_ids("=")
    for b in range(8):
        answer_start = int((noisy[b] == equals).nonzero()[0]) + 1
        assert not masked[b, :answer_start].any()  # the prompt is never noised
        digits = [int(t) for t in tok.convert_ids_to_tokens(labels[b][masked[b]].tolist()) if t.isdigit()]
        prompt = tok.convert_ids_to_tokens(noisy[b, answer_start - 1 - digits_copy.DIGITS : answer_start - 1].tolist())
        answer = [int(p) for p in prompt]
        where = (masked[b].nonzero().flatten() - answer_start).tolist()
        assert digits == [answer[i] for i in where if i < digits_copy.DIGITS]
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        digits_copy.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown options"):
        accel.zoo.evaluate("digits-copy", None, n=4, steps=3)
