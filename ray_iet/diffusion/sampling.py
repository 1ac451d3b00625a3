"""DDIM sampling and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from ray_iet.diffusion.models import ddim_from


@torch.no_grad()
def sample_images(
    model: UNet2DModel, scheduler: DDPMScheduler, *, num_images: int, inference_steps: int, seed: int, batch_size: int = 256
) -> torch.Tensor:
    """Generate images with DDIM (eta 0); returns (N, C, H, W) floats in [0, 1]."""
    model.eval()
    ddim = ddim_from(scheduler)
    ddim.set_timesteps(inference_steps)
    device = next(model.parameters()).device
    size = model.config.sample_size
    channels = model.config.in_channels
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batches = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        images = torch.randn((count, channels, size, size), generator=generator).to(device)
        for t in ddim.timesteps:
            eps = model(images, t).sample
            images = ddim.step(eps, t, images).prev_sample
        batches.append(((images.clamp(-1, 1) + 1) / 2).cpu())
    return torch.cat(batches)


def save_grid(images: torch.Tensor, path: Path, *, columns: int = 8, min_cell: int = 64) -> None:
    """Write images (N, C, H, W) in [0, 1] as one PNG grid, upscaled to at least min_cell pixels."""
    count, channels, height, width = images.shape
    rows = (count + columns - 1) // columns
    scale = max(1, -(-min_cell // height))
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1, channels), 255, dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        grid[top : top + height, left : left + width] = pixels[index]
    picture = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
