"""Anti-gradient control: the loss memory bank, the skip / augment / keep decision, augmentations.

A sample whose loss at timestep t is far below the typical loss at t is likely being memorized.
The memory bank M[t] tracks that typical loss as an exponential moving average; the loss ratio
rho = L / M[t] decides whether the sample is skipped (no gradient), augmented, or kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


class LossMemoryBank:
    """One running loss per timestep, M[t] <- beta * M[t] + (1 - beta) * L, in minibatch order.

    Args:
        num_timesteps: number of diffusion timesteps T.
        decay: beta, the weight of the old value.
        initial_value: starting value of every entry; 0 marks a timestep as never seen.
    """

    def __init__(self, num_timesteps: int, decay: float, initial_value: float = 0.0, device: torch.device | str = "cpu"):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"memory bank decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.values = torch.full((num_timesteps,), float(initial_value), dtype=torch.float32, device=device)

    def ratios(self, losses: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Return rho_i = L_i / M[t_i], +inf where M[t_i] is 0."""
        bank = self.values[timesteps]
        ratio = losses.float() / bank
        return torch.where(bank > 0, ratio, torch.full_like(ratio, float("inf")))

    def update(self, losses: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Apply the moving-average update for every (t_i, L_i) as a loop in batch order would.

        For a timestep hit m times in one batch by losses L_1..L_m (in batch order) the loop gives
        M <- beta^m M + (1 - beta) * sum_j beta^(m - j) L_j, which is what is computed here.
        """
        losses = losses.detach().float()
        num_timesteps = self.values.numel()

        # Rank of each sample among the samples of its timestep, in batch order.
        order = torch.sort(timesteps, stable=True).indices
        sorted_t = timesteps[order]
        counts = torch.bincount(timesteps, minlength=num_timesteps)
        group_start = torch.cumsum(counts, 0) - counts
        rank_sorted = torch.arange(len(order), device=timesteps.device) - group_start[sorted_t]
        rank = torch.empty_like(rank_sorted)
        rank[order] = rank_sorted

        # Sample j of m at one timestep keeps weight (1 - beta) * beta^(m - 1 - j).
        exponents = (counts[timesteps] - 1 - rank).float()
        weights = (1.0 - self.decay) * torch.pow(torch.tensor(self.decay, device=losses.device), exponents)
        contributions = torch.zeros_like(self.values).index_add_(0, timesteps, weights * losses)
        self.values.mul_(torch.pow(torch.tensor(self.decay, device=losses.device), counts.float())).add_(contributions)

    def update_sequential(self, losses: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Reference loop version of `update`, for tests."""
        for loss, t in zip(losses.detach().float().tolist(), timesteps.tolist()):
            self.values[t] = self.decay * self.values[t] + (1.0 - self.decay) * loss


@dataclass(frozen=True)
class Decision:
    """Boolean masks over a minibatch; exactly one of skip, augment, keep is true per sample."""

    skip: torch.Tensor
    augment: torch.Tensor
    keep: torch.Tensor


def decide(ratios: torch.Tensor, *, skip_threshold: float, augment_factor: float, skip_enabled: bool = True, augment_enabled: bool = True) -> Decision:
    """Split a minibatch by loss ratio: skip below lambda, augment in [lambda, R * lambda), keep above.

    With skipping off, samples below lambda are kept; with augmentation off, the augment band is kept.
    """
    if skip_threshold <= 0:
        raise ValueError(f"skip_threshold must be > 0, got {skip_threshold}")
    if augment_factor <= 1:
        raise ValueError(f"augment_factor must be > 1, got {augment_factor}")
    below = ratios < skip_threshold
    band = (ratios >= skip_threshold) & (ratios < augment_factor * skip_threshold)
    skip = below if skip_enabled else torch.zeros_like(below)
    augment = band if augment_enabled else torch.zeros_like(band)
    keep = ~(skip | augment)
    return Decision(skip=skip, augment=augment, keep=keep)


Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2; images are (B, C, H, W)."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def random_translate(images: torch.Tensor, generator: torch.Generator, max_fraction: float) -> torch.Tensor:
    """Shift each image by up to max_fraction of its side in x and y, filling with reflection."""
    batch, _, height, width = images.shape
    pad = int(round(max_fraction * min(height, width)))
    if pad == 0:
        return images
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    shifts = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=generator.device).tolist()
    crops = [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts)]
    return torch.stack(crops)


def make_augmentation(policy: str, max_translate: float = 0.125) -> Augmentation:
    """Build an augmentation that keeps the shape and value range of its input."""
    if policy == "flip":
        return random_flip
    if policy == "translate":
        return lambda images, generator: random_translate(images, generator, max_translate)
    if policy == "flip_translate":
        return lambda images, generator: random_translate(random_flip(images, generator), generator, max_translate)
    raise ValueError(f"unknown augmentation policy {policy!r}; use flip, translate or flip_translate")
