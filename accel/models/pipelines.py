"""Class-conditional pipelines for the native backbones: `DiCoPipeline` and `LEGOPipeline`.

diffusers' `DiTPipeline` runs a DiCo model as it is, but it cannot serve every backbone and scheduler
(notes: ../shared/research/backbones.md section 3.1): it never scales the initial noise by
`scheduler.init_noise_sigma` (so EDM/Euler/Heun schedulers start from the wrong noise level), always
calls `scheduler.scale_model_input` (FlowMatch schedulers have none), requires a VAE (pixel-space models
have none), and fixes the size to the model's `sample_size`. These pipelines keep DiT's call and outputs
(`class_labels`, `guidance_scale`, `num_inference_steps`, `output_type` "pil"/"np"/"pt", plus "latent")
and fix those four points:

- initial noise `randn_tensor(...) * scheduler.init_noise_sigma` (1 for DDPM/DDIM/DPM-Solver, ~80 for
  EDM), `scale_model_input` only where the scheduler has one;
- the VAE is optional: without one the model works in pixel space ([-1, 1] images);
- `height` / `width` (default: `sample_size` times the VAE's downsampling), since both backbones run at
  any size their strides allow;
- classifier-free guidance on all `in_channels` latent channels (DiT's pipeline too; the released DiCo
  sampler guides only 3), with one latent batch (not two identical halves) stepped by the scheduler;
  learned-variance channels are passed to schedulers that use them (`variance_type` "learned" /
  "learned_range", e.g. DDPM as in DiT's 250-step sampler) and dropped for the others.

The null class of guidance is the model's `num_classes`. Load a saved pipeline with its own class
(`DiCoPipeline.from_pretrained(dir)`); `DiffusionPipeline.from_pretrained` looks the class up in diffusers.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .common import InvalidTypeError, check_bool, check_int, check_number, is_integer, label_tensor
from .dico import DiCoModel
from .lego import LEGOModel

__all__ = ["ClassConditionalPipeline", "DiCoPipeline", "LEGOPipeline"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class ClassConditionalPipeline(DiffusionPipeline):
    """Class-conditional generation with a DiT-style denoiser (`transformer(x, timestep=, class_labels=)`),
    any diffusers scheduler and an optional VAE. `DiCoPipeline` and `LEGOPipeline` are this class with
    their model types; it also drives any model with DiT's call and `num_classes` / `in_channels` /
    `out_channels` / `sample_size` in its config."""

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer: torch.nn.Module, scheduler: SchedulerMixin, vae: AutoencoderKL | None = None) -> None:
        """Raises `InvalidTypeError` (a `TypeError` and a `ValueError`) when `transformer` is not a module with
        a config, `scheduler` is not a diffusers scheduler (an object with `set_timesteps` and `step`, not a
        name such as "ddim") or `vae` is neither None nor a module."""
        if not isinstance(transformer, torch.nn.Module) or not hasattr(transformer, "config"):
            raise InvalidTypeError(f"transformer is a {type(transformer).__name__}; expected a model with DiT's "
                                   "call and a config (DiCoModel, LEGOModel)")
        if not all(callable(getattr(scheduler, name, None)) for name in ("set_timesteps", "step")):
            raise InvalidTypeError(f"scheduler={scheduler!r}: expected a diffusers scheduler instance, e.g. "
                                   "DDIMScheduler(beta_schedule='linear', clip_sample=False)")
        if vae is not None and not isinstance(vae, torch.nn.Module):
            raise InvalidTypeError(f"vae is a {type(vae).__name__}; expected an AutoencoderKL or None (pixel space)")
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each side: 2^(VAE blocks - 1), or 1 without a VAE."""
        vae = getattr(self, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1

    def _labels(self, class_labels: Any) -> torch.Tensor | None:
        """`class_labels` as int64 [N] on the execution device, or None. Raises `InvalidTypeError` (a
        `TypeError` and a `ValueError`) for ids that are not integers, `ValueError` for nested lists or more
        than one dimension, no ids, or an id outside [0, num_classes)."""
        if class_labels is None:
            return None
        labels = label_tensor(class_labels).reshape(-1)
        if not labels.numel():
            raise ValueError("class_labels is empty; give at least one class id, or None for unconditional images")
        num_classes = int(self.transformer.config.num_classes)
        name = type(self.transformer).__name__
        if num_classes < 1:
            raise ValueError(f"class_labels={labels.tolist()}: this {name} is unconditional (num_classes=0); "
                             "pass class_labels=None and batch_size")
        if bool((labels < 0).any()) or bool((labels >= num_classes).any()):  # once per call, not per step
            raise ValueError(f"class_labels={labels.tolist()}; expected ids in [0, {num_classes - 1}] "
                             f"({name} has {num_classes} classes)")
        return labels.to(self._execution_device, torch.long)

    def _check_generator(self, generator: Any, batch: int) -> None:
        """Raises `InvalidTypeError` unless `generator` is None, a `torch.Generator` or a list of them, and
        `ValueError` for a list whose length is not the batch size (diffusers' rule: one per image)."""
        items = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in items):
            raise InvalidTypeError(f"generator={generator!r}: expected a torch.Generator, a list of one per image, "
                                   "or None")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator is a list of {len(generator)} generators for a batch of {batch} images; "
                             "expected one per image (or a single torch.Generator)")

    def _check_scheduler(self, channels: int) -> bool:
        """Whether the scheduler takes learned variance (`variance_type` "learned" / "learned_range"). Raises
        `ValueError` when it does and the model has no variance channels (`out_channels != 2 * in_channels`)."""
        variance = self.scheduler.config.get("variance_type", None)
        learned = variance in ("learned", "learned_range")
        out_channels = self.transformer.config.get("out_channels", None) or channels
        if learned and out_channels != 2 * channels:
            raise ValueError(
                f"the scheduler's variance_type={variance!r} needs learned variance channels, but "
                f"{type(self.transformer).__name__} has out_channels={out_channels} (in_channels={channels}; "
                f"expected {2 * channels}); use a scheduler with a fixed variance, e.g. "
                f"{type(self.scheduler).__name__}.from_config(pipe.scheduler.config, variance_type='fixed_small')")
        return learned

    def _extra_step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
        params = inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if "generator" in params else {}

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 1,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate images of `class_labels`.

        Args:
            class_labels: class ids in [0, num_classes), one image each: an int, a flat list or tuple of
                (python or numpy) ints, or a 1-D integer tensor or array; or `None` for `batch_size`
                unconditional images (the null class; no guidance).
            guidance_scale: classifier-free guidance scale, a finite number >= 0. Guidance runs when it is > 1
                and labels are given; as in diffusers' `DiTPipeline`, a scale in [0, 1] means no guidance (the
                conditional prediction alone). Negative scales (which would push away from the class) are
                refused.
            generator: a torch generator for the initial noise (and stochastic scheduler steps), or a list of
                exactly one per image.
            num_inference_steps: scheduler steps, a positive (python or numpy) integer.
            height, width: output size in pixels, positive (python or numpy) integers; default
                `sample_size * vae_scale_factor`. Must be multiples of the VAE's factor, and the latent size
                must suit the model (DiCo: divisible by 4; LEGO: by every brick size), checked up front with
                the model's `check_size` where it has one.
            batch_size: images without labels, a positive integer; with labels, 1 or the labels' count.
            latents: initial noise [B, in_channels, h, w] at unit variance (scaled by `init_noise_sigma` here).
            output_type: "pil", "np" ([B, H, W, C] in [0, 1]), "pt" ([B, C, H, W] in [0, 1]) or "latent" (the
                final latents, not decoded).
            return_dict: `ImagePipelineOutput(images=...)` if True, else `(images,)`.

        Everything is checked before the first random number and denoising step. Raises `InvalidTypeError` (a
        `TypeError` and a `ValueError`) for an argument of the wrong type (a float or bool step count, batch
        size or size; labels that are not integers; a generator that is not one), and `ValueError` for an
        unknown output type, a `return_dict` that is not a bool, a step count, batch size or size below 1, a NaN, infinite or negative
        `guidance_scale`, nested labels or labels outside [0, num_classes), a `batch_size` other than the
        labels' count, a generator list whose length is not the batch, a size that is not a multiple of the
        VAE factor or whose latent the model cannot run, `latents` of the wrong shape or dtype or not finite, or a scheduler that
        wants learned variance (`variance_type` "learned" / "learned_range") from a model without variance
        channels.
        """
        # every argument is checked before the first random number or denoising step
        num_inference_steps = check_int("", "num_inference_steps", num_inference_steps)
        most = getattr(self.scheduler.config, "num_train_timesteps", None)
        if most is not None and num_inference_steps > most:  # diffusers says so only after the noise is drawn
            raise ValueError(f"num_inference_steps={num_inference_steps}: expected at most the scheduler's "
                             f"num_train_timesteps ({most})")
        guidance_scale = check_number("", "guidance_scale", guidance_scale, 0.0)
        return_dict = check_bool("", "return_dict", return_dict)
        batch_size = check_int("", "batch_size", batch_size)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; expected one of {', '.join(map(repr, OUTPUT_TYPES))}")
        config = self.transformer.config
        device, dtype = self._execution_device, self.transformer.dtype
        labels = self._labels(class_labels)
        batch = len(labels) if labels is not None else batch_size
        if labels is not None and batch_size not in (1, batch):
            raise ValueError(f"batch_size={batch_size} with {batch} class_labels: one image per label; pass "
                             "batch_size only for unconditional images (class_labels=None)")
        self._check_generator(generator, batch)
        channels = int(config.in_channels)
        learned = self._check_scheduler(channels)
        scale = self.vae_scale_factor
        sizes = {}
        for name, value in (("height", height), ("width", width)):
            if value is None:
                sizes[name] = int(config.sample_size) * scale
            elif not is_integer(value) or value < 1:
                error = ValueError if is_integer(value) else InvalidTypeError
                raise error(f"{name}={value!r}: expected a positive integer size in pixels (None: the model's own)")
            else:
                sizes[name] = int(value)
        height, width = sizes["height"], sizes["width"]
        if height % scale or width % scale:
            raise ValueError(f"height={height} and width={width} must be multiples of the VAE factor {scale}")
        shape = (batch, channels, height // scale, width // scale)
        check_size = getattr(self.transformer, "check_size", None)  # DiCoModel / LEGOModel: the strides' rule
        if check_size is not None:
            try:
                check_size(shape[2], shape[3])
            except ValueError as err:
                raise ValueError(f"height={height} and width={width} give a {shape[2]}x{shape[3]} latent that "
                                 f"{type(self.transformer).__name__} cannot run: {err}") from None
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise InvalidTypeError(f"latents is a {type(latents).__name__}; expected a tensor of shape {shape}")
        if latents is not None and not latents.is_floating_point():
            raise InvalidTypeError(f"latents has dtype {latents.dtype}; expected floating-point noise")
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents has shape {tuple(latents.shape)}; expected {shape}")
        if latents is not None and not bool(torch.isfinite(latents).all()):  # once per call
            raise ValueError("latents holds NaN or infinite values; expected finite noise")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        latents = latents * getattr(self.scheduler, "init_noise_sigma", 1.0)  # FlowMatch has none

        guide = labels is not None and guidance_scale > 1
        null = torch.full((batch,), int(config.num_classes), device=device, dtype=torch.long)
        labels_in = torch.cat([labels, null]) if guide and labels is not None else labels
        extra = self._extra_step_kwargs(generator)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):  # noqa: B007  (`i`: accel's step tracker reads it)
            model_in = torch.cat([latents, latents]) if guide else latents
            if hasattr(self.scheduler, "scale_model_input"):
                model_in = self.scheduler.scale_model_input(model_in, t)
            t_in = (t if torch.is_tensor(t) else torch.tensor(t)).to(device).reshape(-1).expand(model_in.shape[0])
            pred = self.transformer(model_in, timestep=t_in, class_labels=labels_in).sample
            eps, rest = pred[:, :channels], pred[:, channels:]
            if guide:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
                rest = rest.chunk(2)[0]
            model_output = torch.cat([eps, rest], dim=1) if learned and rest.shape[1] else eps
            latents = self.scheduler.step(model_output, t, latents, **extra, return_dict=False)[0]

        if output_type == "latent":
            images: Any = latents
        else:
            samples = latents
            if self.vae is not None:
                vae = self.vae.config
                samples = samples.to(self.vae.dtype) / vae.scaling_factor + (vae.get("shift_factor") or 0.0)
                samples = self.vae.decode(samples).sample
            images = self.image_processor.postprocess(samples.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


class DiCoPipeline(ClassConditionalPipeline):
    """`ClassConditionalPipeline` for a `DiCoModel` (epsilon + learned variance, DDPM-linear betas: use
    `DDIMScheduler(beta_schedule="linear", clip_sample=False)`, `DPMSolverMultistepScheduler`, or
    `DDPMScheduler(variance_type="learned_range")` as in DiT's 250-step sampler)."""

    def __init__(self, transformer: DiCoModel, scheduler: SchedulerMixin, vae: AutoencoderKL | None = None) -> None:
        super().__init__(transformer=transformer, scheduler=scheduler, vae=vae)


class LEGOPipeline(ClassConditionalPipeline):
    """`ClassConditionalPipeline` for a `LEGOModel` (EDM preconditioning: use `EDMEulerScheduler` or
    `EDMDPMSolverMultistepScheduler`, whose `init_noise_sigma` of about 80 this pipeline applies). Brick
    skipping: `accel.patch(pipe, method="lego-skip")`."""

    def __init__(self, transformer: LEGOModel, scheduler: SchedulerMixin, vae: AutoencoderKL | None = None) -> None:
        super().__init__(transformer=transformer, scheduler=scheduler, vae=vae)
