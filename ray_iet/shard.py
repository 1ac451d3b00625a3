"""Training stage of one shard: a proxy diffusion model trained with anti-gradient control.

`ShardTrainer` contains all the training logic and runs without Ray; `ShardActor` is its Ray actor.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ray_iet.agc import LossMemoryBank, decide, make_augmentation
from ray_iet.config import RunConfig
from ray_iet.data.sources import decode_images
from ray_iet.diffusion.loss import per_sample_loss
from ray_iet.diffusion.sampling import sample_images
from ray_iet.weights import StateDict, load_numpy_state, numpy_state

logger = logging.getLogger(__name__)


@dataclass
class RoundStats:
    """Statistics of one shard in one round (kept + augmented + skipped == visits)."""

    shard: int
    round: int
    samples: int
    visits: int
    kept: int
    augmented: int
    skipped: int
    all_skipped_batches: int
    optimizer_steps: int
    mean_loss: float
    train_loss: float
    seconds: float
    images_per_second: float
    device: str


def round_seed(seed: int, round_index: int, shard_index: int) -> int:
    """Seed of one shard's generator in one round, so a resumed run draws the same numbers."""
    return int(np.random.SeedSequence([seed, round_index, shard_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


class ShardTrainer:
    """Proxy model, optimizer, EMA and loss memory bank of one shard, kept across rounds.

    Args:
        config: the run configuration.
        shard_index: position k of this shard in the ring.
        unet_config: `UNet2DModel.config` of the global model.
        scheduler_config: `DDPMScheduler.config` of the global model.
        device: torch device for the model and the shard's images.
    """

    def __init__(self, config: RunConfig, shard_index: int, *, unet_config: dict[str, Any], scheduler_config: dict[str, Any], device: str = "cpu"):
        self.config = config
        self.shard_index = shard_index
        self.device = torch.device(device)
        self.model = UNet2DModel.from_config(unet_config).to(self.device)
        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.training.learning_rate)
        self.ema = {name: value.detach().clone() for name, value in self.model.state_dict().items() if value.is_floating_point()}
        self.bank = LossMemoryBank(self.scheduler.config.num_train_timesteps, config.agc.bank_decay, config.agc.bank_init, device=self.device)
        self.augmentation = make_augmentation(config.agc.augmentation, config.agc.max_translate)
        self.optimizer_steps = 0
        self.ema_updates = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._images = torch.zeros(0, device=self.device)
        # add_noise indexes alphas_cumprod on the images' device; move it there once.
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)

    # ----------------------------------------------------------------------------------------
    # Data

    def set_samples(self, table: pa.Table) -> None:
        """Hold this round's samples on the device, decoding only ids not already held."""
        ids = table.column("id").to_numpy()
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        held = np.isin(ids, self._ids)
        images = torch.empty((len(ids), *self._sample_shape(table)), device=self.device)
        if held.any():
            positions = np.searchsorted(self._ids, ids[held])
            images[torch.from_numpy(np.flatnonzero(held)).to(self.device)] = self._images[torch.from_numpy(positions).to(self.device)]
        if (~held).any():
            new_rows = table.take(pa.array(order[~held]))
            images[torch.from_numpy(np.flatnonzero(~held)).to(self.device)] = to_model_range(decode_images(new_rows)).to(self.device)
        self._ids, self._images = ids, images

    @staticmethod
    def _sample_shape(table: pa.Table) -> tuple[int, int, int]:
        metadata = table.schema.metadata
        return int(metadata[b"channels"]), int(metadata[b"height"]), int(metadata[b"width"])

    # ----------------------------------------------------------------------------------------
    # Training

    def load_global(self, weights: StateDict, ema: StateDict) -> None:
        load_numpy_state(self.model, weights)
        for name, value in ema.items():
            self.ema[name].copy_(torch.from_numpy(np.array(value)))

    def train_round(self, round_index: int) -> tuple[RoundStats, np.ndarray, np.ndarray]:
        """Train E local epochs on the held samples.

        Returns the statistics and the per-sample skip counts of this round as (ids, counts).
        """
        cfg = self.config
        generator = torch.Generator(device=self.device).manual_seed(round_seed(cfg.seed, round_index, self.shard_index))
        num_samples = len(self._ids)
        skip_counts = torch.zeros(num_samples, dtype=torch.int64, device=self.device)
        totals = dict(kept=0, augmented=0, skipped=0, all_skipped_batches=0, steps=0)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        train_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        started = time.perf_counter()
        self.model.train()

        for _ in range(cfg.training.local_epochs):
            permutation = torch.randperm(num_samples, generator=generator, device=self.device)
            for batch in permutation.split(cfg.training.batch_size):
                outcome = self._train_batch(batch, generator, round_index)
                skip_counts.index_add_(0, batch, outcome["skip"].long())
                loss_sum += outcome["loss_sum"]
                train_loss_sum += outcome["train_loss_sum"]
                for key in ("kept", "augmented", "skipped"):
                    totals[key] += outcome[key]
                totals["steps"] += outcome["stepped"]
                totals["all_skipped_batches"] += not outcome["stepped"]

        seconds = time.perf_counter() - started
        visits = num_samples * cfg.training.local_epochs
        used = totals["kept"] + totals["augmented"]
        stats = RoundStats(
            shard=self.shard_index,
            round=round_index,
            samples=num_samples,
            visits=visits,
            kept=totals["kept"],
            augmented=totals["augmented"],
            skipped=totals["skipped"],
            all_skipped_batches=totals["all_skipped_batches"],
            optimizer_steps=totals["steps"],
            mean_loss=float(loss_sum) / max(visits, 1),
            train_loss=float(train_loss_sum) / used if used else math.nan,
            seconds=seconds,
            images_per_second=visits / seconds if seconds > 0 else math.inf,
            device=str(self.device),
        )
        return stats, self._ids.copy(), skip_counts.cpu().numpy()

    def _train_batch(self, batch: torch.Tensor, generator: torch.Generator, round_index: int) -> dict[str, Any]:
        agc = self.config.agc
        images = self._images[batch]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(batch),), generator=generator, device=self.device)
        noise = torch.randn(images.shape, generator=generator, device=self.device)

        # 1-2. Per-sample loss and its ratio to the memory bank entry of its timestep.
        losses = per_sample_loss(self.model, self.scheduler, images, timesteps, noise)
        self._check_finite(losses, batch, round_index)
        detached = losses.detach()
        ratios = self.bank.ratios(detached, timesteps)

        # 3. Skip, augment or keep each sample.
        decision = decide(
            ratios,
            skip_threshold=agc.skip_threshold,
            augment_factor=agc.augment_factor,
            skip_enabled=agc.enabled,
            augment_enabled=agc.enabled and agc.augment,
        )
        used_losses = losses
        if decision.augment.any():
            augmented_index = decision.augment.nonzero().squeeze(1)
            augmented = self.augmentation(images[augmented_index], generator)
            fresh_noise = torch.randn(augmented.shape, generator=generator, device=self.device)
            augmented_losses = per_sample_loss(self.model, self.scheduler, augmented, timesteps[augmented_index], fresh_noise)
            used_losses = losses.index_copy(0, augmented_index, augmented_losses)

        # 4. Mean over the samples not skipped; no optimizer step when all are skipped.
        used = ~decision.skip
        stepped = bool(used.any())
        train_loss_sum = used_losses.detach()[used].double().sum()
        if stepped:
            self._step(used_losses[used].mean())

        # 5. The memory bank is updated with the original, un-augmented losses.
        self.bank.update(detached, timesteps)
        return dict(
            skip=decision.skip,
            kept=int(decision.keep.sum()),
            augmented=int(decision.augment.sum()),
            skipped=int(decision.skip.sum()),
            stepped=stepped,
            loss_sum=detached.double().sum(),
            train_loss_sum=train_loss_sum,
        )

    def _step(self, loss: torch.Tensor) -> None:
        training = self.config.training
        warmup = min(1.0, (self.optimizer_steps + 1) / training.warmup_steps) if training.warmup_steps else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = training.learning_rate * warmup
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip)
        self.optimizer.step()
        self.optimizer_steps += 1
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up as in diffusers' EMAModel: early averages are not dominated by the initial weights.
        decay = min(self.config.training.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for name, value in self.model.state_dict().items():
            if name in self.ema:
                self.ema[name].lerp_(value, 1.0 - decay)
        self.ema_updates += 1

    def _check_finite(self, losses: torch.Tensor, batch: torch.Tensor, round_index: int) -> None:
        if not torch.isfinite(losses).all():
            bad = batch[~torch.isfinite(losses)].cpu().numpy()
            raise FloatingPointError(
                f"shard {self.shard_index}, round {round_index}: loss is NaN or infinite for sample ids "
                f"{self._ids[bad][:10].tolist()}; lower training.learning_rate or check the input images"
            )

    # ----------------------------------------------------------------------------------------
    # Results and state

    def weights(self) -> tuple[StateDict, StateDict]:
        """Return the proxy weights and EMA weights as numpy arrays."""
        ema = {name: value.detach().cpu().numpy() for name, value in self.ema.items()}
        return numpy_state(self.model), ema

    def state(self) -> dict[str, Any]:
        """Everything this shard keeps across rounds besides the weights: optimizer, memory bank, counters."""
        tensors = {"memory_bank": self.bank.values.cpu().numpy()}
        optimizer_state = self.optimizer.state_dict()
        for index, values in optimizer_state["state"].items():
            for name, value in values.items():
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().numpy()
        meta = dict(
            shard=self.shard_index,
            optimizer_steps=self.optimizer_steps,
            ema_updates=self.ema_updates,
            param_groups=optimizer_state["param_groups"],
        )
        return {"tensors": tensors, "meta": meta}

    def reset_state(self) -> None:
        """Forget optimizer state, memory bank and counters, as for a shard that has not trained yet."""
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.training.learning_rate)
        self.bank.values.fill_(self.config.agc.bank_init)
        self.optimizer_steps = 0
        self.ema_updates = 0

    def load_state(self, state: dict[str, Any]) -> None:
        tensors, meta = state["tensors"], state["meta"]
        self.bank.values.copy_(torch.from_numpy(np.array(tensors["memory_bank"])))
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                per_param.setdefault(int(index), {})[name] = torch.from_numpy(np.array(value))
        self.optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
        self.optimizer_steps = int(meta["optimizer_steps"])
        self.ema_updates = int(meta["ema_updates"])


@ray.remote
class ShardActor:
    """Ray actor around a ShardTrainer; the coordinator passes weights and tables as object refs."""

    def __init__(self, config: dict[str, Any], shard_index: int, unet_config: dict[str, Any], scheduler_config: dict[str, Any], num_threads: int):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.trainer = ShardTrainer(
            RunConfig.model_validate(config), shard_index, unet_config=unet_config, scheduler_config=scheduler_config, device=device
        )

    def ready(self) -> dict[str, Any]:
        return {"shard": self.trainer.shard_index, "device": str(self.trainer.device), "node": ray.get_runtime_context().get_node_id()}

    def load_state(self, state: dict[str, Any] | None) -> None:
        """Restore the state a shard had at the end of a round; None resets it to a fresh shard."""
        if state is None:
            self.trainer.reset_state()
        else:
            self.trainer.load_state(state)

    def sample(self, weights: StateDict, num_images: int, inference_steps: int, seed: int) -> np.ndarray:
        """Generate images from the given weights on this actor's device; (N, C, H, W) floats in [0, 1]."""
        load_numpy_state(self.trainer.model, weights)
        images = sample_images(self.trainer.model, self.trainer.scheduler, num_images=num_images, inference_steps=inference_steps, seed=seed)
        return images.numpy()

    @ray.method(num_returns=3)
    def train_round(self, round_index: int, weights: StateDict, ema: StateDict, table: pa.Table) -> tuple[dict[str, Any], dict[str, StateDict], dict[str, Any]]:
        """Run one training stage; returns (summary with skip counts, {"model", "ema"} weights, shard state)."""
        self.trainer.load_global(weights, ema)
        self.trainer.set_samples(table)
        stats, ids, skip_counts = self.trainer.train_round(round_index)
        logger.info(
            "shard %d round %d: %d samples, kept %d, augmented %d, skipped %d, loss %.4f, %.0f images/s",
            stats.shard, stats.round, stats.samples, stats.kept, stats.augmented, stats.skipped, stats.mean_loss, stats.images_per_second,
        )
        model, ema_weights = self.trainer.weights()
        summary = {"stats": asdict(stats), "ids": ids, "skip_counts": skip_counts}
        return summary, {"model": model, "ema": ema_weights}, self.trainer.state()
