"""The trained reference checkpoints load offline, reproduce a stored output, and the judge is accurate."""

from __future__ import annotations

import torch

import accel.zoo
from accel.zoo import digits, digits_image, judges

# digits_image.sample(load("digits-image"), [0, 7], seed=0, steps=4): mean and four pixels, on float32 CPU.
FINGERPRINT = [-0.175896, -0.924869, 0.434851, -0.493100, 0.377851]


def _fingerprint(images: torch.Tensor) -> list[float]:
    flat = images.flatten()
    return [images.mean().item(), *flat[[100, 600, 1500, 2000]].tolist()]


def test_judge_scores_held_out_digits() -> None:
    test = digits.load("test")
    assert len(test.labels) == 359
    assert judges.accuracy(judges.load(), test.images, test.labels) >= 0.95


def test_digits_image_loads_and_reproduces_fingerprint() -> None:
    torch.set_num_threads(2)
    pipe = accel.zoo.load("digits-image")
    assert isinstance(pipe, __import__("diffusers").DiTPipeline)
    assert pipe.transformer.config.sample_size ** 2 >= 256  # image tokens at patch size 1
    images = digits_image.sample(pipe, [0, 7], seed=0, steps=4)
    assert images.shape == (2, 1, 32, 32)
    again = digits_image.sample(pipe, [0, 7], seed=0, steps=4)
    assert torch.equal(images, again)
    if FINGERPRINT is not None:
        assert _fingerprint(images) == __import__("pytest").approx(FINGERPRINT, abs=1e-3)


def test_zoo_inputs_work_for_trained_entry() -> None:
    pipe = accel.zoo.load("digits-image")
    out = accel.zoo.generate(pipe, steps=2)
    assert out.shape[-2:] == (16, 16)
