"""`digits-video`: the committed Wan image-to-video checkpoint loads offline, has >= 1,024 video tokens, keeps
the given first frame, reproduces a stored output, and its judges (per-frame class, trajectory) tell real
moving digits from wrong ones."""

from __future__ import annotations

import diffusers
import pytest
import torch

import accel.zoo
from accel.zoo import digits_video as dv

# _two_videos(load("digits-video")): the mean, and frames 6 and 12 of each video, float32 CPU.
FINGERPRINT = [-0.827942, -0.829729, -0.807162, -0.836513, -0.855635]


def _two_videos(pipe: diffusers.WanImageToVideoPipeline, steps: int = 4) -> torch.Tensor:
    clips = dv.make_videos("test", 2, seed=0, directions=torch.tensor([0, 3]), labels=torch.tensor([0, 7]))
    return dv.sample(pipe, clips.videos[:, 0], clips.labels, ["right", "up"], seed=0, steps=steps)


def _fingerprint(videos: torch.Tensor) -> list[float]:
    return [videos.mean().item(), *(videos[i, t].mean().item() for i in (0, 1) for t in (6, 12))]


@pytest.fixture(scope="module")
def pipe() -> diffusers.WanImageToVideoPipeline:
    torch.set_num_threads(2)
    return accel.zoo.load("digits-video")


def test_loads_real_wan_with_at_least_1024_video_tokens(pipe: diffusers.WanImageToVideoPipeline) -> None:
    assert isinstance(pipe, diffusers.WanImageToVideoPipeline) and pipe.config.expand_timesteps
    assert isinstance(pipe.transformer, diffusers.WanTransformer3DModel)
    seen: list[torch.Size] = []
    timesteps: list[torch.Tensor] = []

    def record(_module: torch.nn.Module, _args: tuple, kw: dict) -> None:
        seen.append(kw["hidden_states"].shape)
        timesteps.append(kw["timestep"])

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        accel.zoo.generate(pipe, steps=1)
    finally:
        hook.remove()
    _, _, frames, h, w = seen[0]
    p = pipe.transformer.config.patch_size
    tokens = frames // p[0] * (h // p[1]) * (w // p[2])
    assert (frames, h // p[1], w // p[2]) == (4, 16, 16)
    assert tokens >= 1024
    assert len(seen) == 2  # CFG as Wan runs it: a cond and an uncond call per step
    # Wan 2.2 TI2V: a timestep per token, 0 on the given first latent frame.
    assert timesteps[0].shape == (1, tokens)
    first, rest = timesteps[0][:, : dv.FIRST_FRAME_TOKENS], timesteps[0][:, dv.FIRST_FRAME_TOKENS :]
    assert (first == 0).all() and (rest > 0).all()


def test_sample_shape_determinism_and_fingerprint(pipe: diffusers.WanImageToVideoPipeline) -> None:
    videos = _two_videos(pipe)
    assert videos.shape == (2, dv.FRAMES, 1, dv.CANVAS, dv.CANVAS)
    assert videos.min() >= -1 and videos.max() <= 1
    first = dv.make_videos("test", 2, seed=0, directions=torch.tensor([0, 3]), labels=torch.tensor([0, 7])).videos[:, 0]
    assert (videos[:, 0] - first).abs().max() < 1e-5  # the given frame comes back as given
    assert torch.equal(videos, _two_videos(pipe))
    if FINGERPRINT is not None:
        assert _fingerprint(videos) == pytest.approx(FINGERPRINT, abs=1e-3)


def test_zoo_inputs_use_the_class_prompt_table(pipe: diffusers.WanImageToVideoPipeline) -> None:
    kw = accel.zoo.inputs(pipe, batch_size=3, seed=5)
    table = dv.PROMPTS[pipe]
    clip = dv.make_videos("test", 1, seed=5)
    assert (kw["height"], kw["width"], kw["num_frames"]) == (dv.CANVAS, dv.CANVAS, dv.FRAMES)
    assert torch.equal(kw["image"], dv.to_unit(clip.videos[:, 0]))  # one held-out first frame for the batch
    for row in kw["prompt_embeds"]:  # its class and direction, from the table
        assert torch.equal(row[0], table.classes[clip.labels[0]].detach())
        assert torch.equal(row[1], table.directions[clip.directions[0]].detach())
    assert torch.equal(kw["negative_prompt_embeds"][0], table.null.detach())
    assert "negative_prompt_embeds" not in accel.zoo.inputs(pipe, guidance_scale=1.0)


def test_frame_pack_vae_is_lossless_with_wan_frame_rule() -> None:
    real = dv.make_videos("test", 3, seed=0)
    vae = dv.FramePackVAE()
    z = vae.encode_pixels(real.videos.transpose(1, 2))
    assert z.shape == (3, 4, 4, dv.CANVAS, dv.CANVAS)
    assert torch.equal(vae.decode(z).sample.transpose(1, 2), real.videos)
    assert torch.equal(vae.encode(real.videos.transpose(1, 2)).latents, z)  # the pipeline's path
    with pytest.raises(ValueError, match="1 \\+ 4n"):
        vae.encode_pixels(torch.zeros(1, 1, 12, 32, 32))


def test_judges_pass_real_moving_digits_and_fail_static_or_wrong_ones() -> None:
    real = dv.make_videos("test", 40, seed=3)
    scores = dv.judge_videos(real.videos, real.labels, real.directions)
    assert scores["accuracy"] >= 0.9 and scores["motion"] == 1.0
    static = real.videos[:, :1].expand_as(real.videos)
    assert not dv.motion_ok(static, real.directions).any()
    assert not dv.motion_ok(real.videos, (real.directions + 1) % 4).any()  # perpendicular or reversed
    shuffled = real.videos[:, torch.randperm(dv.FRAMES, generator=torch.Generator().manual_seed(0))]
    assert dv.motion_ok(shuffled, real.directions).float().mean() < 0.2  # jumping around is not motion
    wrong_class = dv.judge_videos(real.videos, (real.labels + 1) % 10, real.directions)
    assert wrong_class["accuracy"] < 0.1


def test_bad_direction_is_refused(pipe: diffusers.WanImageToVideoPipeline) -> None:
    with pytest.raises(ValueError, match="directions must be"):
        dv.sample(pipe, torch.zeros(1, 1, dv.CANVAS, dv.CANVAS), [1], ["sideways"], steps=1)
