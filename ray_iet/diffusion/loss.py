"""Per-sample denoising loss."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel


def per_sample_loss(
    model: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Return L_i = mean over pixels of (eps_model(x_t, t_i) - eps_i)^2, shape (B,)."""
    noisy = scheduler.add_noise(images, noise, timesteps)
    predicted = model(noisy, timesteps).sample
    return (predicted.float() - noise.float()).pow(2).flatten(1).mean(1)
