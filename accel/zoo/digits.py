"""Real handwritten digits (scikit-learn's bundled 8x8 set), upsampled, with a fixed held-out split.

Trained reference models need real data that ships offline; this is the only source, so every model
and judge draws its images from here and tests never see the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIDE = 32  # upsampled image side
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Images in [-1, 1], shape [N, 1, SIDE, SIDE], and their class labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor


def load(split: str = "train", side: int = SIDE) -> Split:
    """The train or test split, the same for every call (a fixed permutation of all 1,797 digits)."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(len(y) * TEST_FRACTION)
    idx = order[:n_test] if split == "test" else order[n_test:]
    x = F.interpolate(x[idx], size=(side, side), mode="bilinear", align_corners=False)
    return Split(images=x.clamp(0, 1) * 2 - 1, labels=y[idx])
