"""Task-accuracy judges: a small CNN trained on real digits that scores generated images by class.

PSNR against an unaccelerated run says nothing about whether a digit is still the right digit; a judge
trained on real data does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import digits

CHECKPOINT = Path(__file__).parent / "checkpoints" / "judge" / "digits-judge.safetensors"


class DigitJudge(nn.Module):
    """Classifies [B, 1, H, W] images in [-1, 1] (any H, W: resized to 32x32) into 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.resize(x))

    @staticmethod
    def resize(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (digits.SIDE, digits.SIDE):
            x = nn.functional.interpolate(x, size=(digits.SIDE, digits.SIDE), mode="bilinear")
        return x

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval()(x.float()).argmax(-1)


def train_judge(seed: int = 0, epochs: int = 40) -> DigitJudge:
    """Trains on the train split with small random shifts, so it tolerates imperfect generated digits."""
    torch.manual_seed(seed)
    data = digits.load("train")
    model = DigitJudge()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(data.labels))
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            x = data.images[idx]
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            loss = nn.functional.cross_entropy(model(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: DigitJudge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model.predict(images) == labels).float().mean().item()


def held_out_accuracy(model: DigitJudge | None = None) -> dict[str, float]:
    """The judge's own accuracy on the real digits' test split: what a generator whose samples were as
    legible as real digits would score (a higher score means samples more prototypical than real ones)."""
    test = digits.load("test")
    return {"accuracy": accuracy(model or load(), test.images, test.labels), "n": len(test.labels)}


@torch.no_grad()
def features(model: DigitJudge, images: torch.Tensor) -> torch.Tensor:
    """The judge's penultimate activations (what its classifier layer reads): [N, 256] float32 for
    [N, 1, H, W] images in [-1, 1]."""
    return model.eval().net[:-1](model.resize(images.float()))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (N, M > 1):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64. This is FID (Heusel et
    al., 2017, eq. 6) with the digit judge's features in place of Inception's; like FID it is biased
    upwards at small N, so compare values computed over the same number of samples."""
    if a.dim() != 2 or b.dim() != 2 or min(len(a), len(b)) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature sets of shapes {tuple(a.shape)} and {tuple(b.shape)}; expected "
                         "[N, D] and [M, D] with N, M >= 2 (a covariance needs two samples)")
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)

    def sqrt_psd(m: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh((m + m.T) / 2)
        return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T

    root = sqrt_psd(sa)
    cross = torch.linalg.eigvalsh(root @ sb @ root).clamp(min=0).sqrt().sum()
    return max(0.0, float(mu @ mu + sa.trace() + sb.trace() - 2 * cross))  # >= 0 up to rounding


def save(model: DigitJudge, path: Path = CHECKPOINT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))


def load(path: Path = CHECKPOINT) -> DigitJudge:
    """The committed judge, in float32, eval mode."""
    model = DigitJudge()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()
