"""UNet and scheduler builders (diffusers) for the presets and for local pretrained folders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

logger = logging.getLogger(__name__)

# Layouts of UNet2DModel. "ddpm-cifar10" is the 35.7M-parameter network of Ho et al. 2020 for
# 32x32 images as diffusers' google/ddpm-cifar10-32 config describes it.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ),
    "small": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    ),
    "ddpm-cifar10": dict(
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
        dropout=0.1,
        attention_head_dim=None,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
        resnet_time_scale_shift="default",
    ),
}


def build_unet(preset: str, *, image_size: int, channels: int) -> UNet2DModel:
    """Build a randomly initialised UNet2DModel (seed torch beforehand for reproducibility)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    layout = PRESETS[preset]
    downsamplings = len(layout["block_out_channels"]) - 1
    if image_size % (2**downsamplings) != 0:
        raise ValueError(
            f"model preset {preset!r} halves the image {downsamplings} times, so the image side must be "
            f"a multiple of {2**downsamplings}; got {image_size}. Set data.image_size accordingly."
        )
    return UNet2DModel(sample_size=image_size, in_channels=channels, out_channels=channels, **layout)


def load_pretrained_unet(path: Path) -> UNet2DModel:
    """Load a UNet2DModel from a local pipeline folder (with unet/) or a UNet folder."""
    folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers UNet config.json in {str(path)!r} or its unet/ folder")
    return UNet2DModel.from_pretrained(folder, local_files_only=True)


def build_scheduler(*, num_train_timesteps: int, beta_start: float, beta_end: float) -> DDPMScheduler:
    """DDPM noise schedule with linear betas and epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


def load_pretrained_scheduler(path: Path) -> DDPMScheduler | None:
    if (path / "scheduler" / "scheduler_config.json").is_file():
        return DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    return None


def ddim_from(scheduler: DDPMScheduler) -> DDIMScheduler:
    return DDIMScheduler.from_config(scheduler.config)
