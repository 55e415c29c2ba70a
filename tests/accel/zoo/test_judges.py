"""The digit judge's Fréchet distance (FID with the judge's features): exact on constructed feature sets,
and `digits_image.fd` judges the same samples as `evaluate`."""

from __future__ import annotations

import pytest
import torch

from accel.zoo import digits, digits_image, judges


def test_frechet_distance_matches_its_closed_form():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    assert judges.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = torch.arange(8, dtype=torch.float64) / 4
    assert judges.frechet_distance(x + shift, x) == pytest.approx(float(shift @ shift), rel=1e-9)  # same covariance
    # 2x against x: |mean|^2 + tr(4S + S - 2 * 2S) = |mean|^2 + tr(S)
    mean, cov = x.mean(0), torch.cov(x.T)
    assert judges.frechet_distance(2 * x, x) == pytest.approx(float(mean @ mean + cov.trace()), rel=1e-9)
    assert judges.frechet_distance(2 * x, x) == pytest.approx(judges.frechet_distance(x, 2 * x), rel=1e-9)


def test_real_digits_are_nearer_the_training_digits_than_degraded_ones():
    judge = judges.load()
    train = judges.features(judge, digits.load("train").images)
    test = digits.load("test").images
    assert judges.features(judge, test).shape == (len(test), 256)
    clean = judges.frechet_distance(judges.features(judge, test), train)
    blurred = judges.frechet_distance(judges.features(judge, torch.nn.functional.avg_pool2d(test, 3, 1, 1)), train)
    assert 0 < clean < blurred


def test_fd_judges_the_same_samples_as_evaluate():
    pipe = digits_image.load()
    got = digits_image.fd(pipe, n=10, seed=0, steps=4)
    assert got["accuracy"] == digits_image.evaluate(pipe, n=10, seed=0, steps=4)["accuracy"]
    assert got["fd"] > 0 and got["n"] == 10
    for n in (0, 1):  # one sample has no covariance
        with pytest.raises(ValueError, match=f"fd: n={n}"):
            digits_image.fd(pipe, n=n)
    with pytest.raises(ValueError, match="N, M >= 2"):
        judges.frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))
