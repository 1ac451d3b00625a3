"""Evaluate one trained model: generate images, then measure memorization and quality."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ray_iet.config import EvaluationConfig
from ray_iet.diffusion.models import load_pretrained_scheduler, load_pretrained_unet
from ray_iet.diffusion.sampling import sample_images
from ray_iet.evaluate.embedders import (
    FeatureExtractor,
    InceptionExtractor,
    LocalEmbedder,
    LocalFeatureExtractor,
    TorchScriptEmbedder,
    extract_features,
)
from ray_iet.evaluate.metrics import EmbeddingResult, FidResult, MemorizationResult, compute_fid, embedding_similarity, memorization_scores

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics of one model, with the images needed for the report's pictures."""

    name: str
    memorization: MemorizationResult
    fid: FidResult
    embedding: Optional[EmbeddingResult]
    generated: torch.Tensor = field(repr=False)
    training: torch.Tensor = field(repr=False)
    num_training_unique: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "memorization": self.memorization.to_dict(),
            "fid": self.fid.to_dict(),
            "embedding": self.embedding.to_dict() if self.embedding is not None else None,
            "num_generated": int(self.generated.shape[0]),
            "num_training_unique": self.num_training_unique,
            "evaluation_seconds": self.seconds,
            **self.extra,
        }


def resolve_model_dir(path: Path) -> Path:
    """Accept a run folder (uses its exported `model/`) or a diffusers model folder."""
    if (path / "model" / "model_index.json").is_file() or (path / "model" / "unet").is_dir():
        return path / "model"
    if (path / "unet" / "config.json").is_file() or (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"{str(path)!r} is neither a run folder with model/ nor a diffusers model folder")


def load_model(path: Path) -> tuple[UNet2DModel, DDPMScheduler]:
    folder = resolve_model_dir(path)
    unet = load_pretrained_unet(folder)
    scheduler = load_pretrained_scheduler(folder)
    if scheduler is None:
        raise FileNotFoundError(f"no scheduler/scheduler_config.json in {str(folder)!r}; evaluate a DDPMPipeline folder")
    return unet, scheduler


def unique_images(images: np.ndarray) -> np.ndarray:
    """Drop exact duplicates, so that copies of one image do not count as several neighbours."""
    flat = images.reshape(len(images), -1)
    _, first = np.unique(flat, axis=0, return_index=True)
    return images[np.sort(first)]


def to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def build_extractor(config: EvaluationConfig) -> FeatureExtractor:
    if config.inception_weights is not None:
        return InceptionExtractor(config.inception_weights)
    return LocalFeatureExtractor()


def build_embedder(config: EvaluationConfig) -> Optional[FeatureExtractor]:
    if config.embedder is None:
        return None
    if config.embedder == "local":
        return LocalEmbedder()
    return TorchScriptEmbedder(config.embedder)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_model(
    name: str, unet: UNet2DModel, scheduler: DDPMScheduler, training_images: np.ndarray, config: EvaluationConfig, *, device: str | None = None
) -> Evaluation:
    """Generate `config.num_samples` images with DDIM and score them against the training images.

    Args:
        name: label of the model in reports.
        training_images: (N, H, W, C) uint8, as `decode_images` returns them; exact duplicates
            are removed before the nearest-neighbour search.
    """
    started = time.perf_counter()
    device = device or default_device()
    unet = unet.to(device)
    generated = sample_images(
        unet, scheduler, num_images=config.num_samples, inference_steps=config.inference_steps, seed=config.seed, batch_size=config.batch_size
    )
    training = to_unit(unique_images(training_images))
    if generated.shape[1:] != training.shape[1:]:
        raise ValueError(
            f"the model generates {tuple(generated.shape[1:])} images but the training data are {tuple(training.shape[1:])}; "
            "evaluate with the data settings the model was trained with"
        )

    memorization = memorization_scores(generated, training, k=config.k, block_size=config.block_size, device=device)
    fid = compute_fid(generated, training, build_extractor(config), batch_size=config.batch_size, device=device)
    embedding = _embedding_metrics(generated, training, config, device)
    seconds = time.perf_counter() - started
    logger.info(
        "%s: memorized %.1f%% (ratio < 1/3), d1/d2 %.1f%%, FID %.3f (%s), %d generated vs %d unique training images, %.1f s",
        name, 100 * memorization.headline_fraction, 100 * memorization.d1_d2_fraction, fid.value, fid.extractor_name,
        len(generated), len(training), seconds,
    )
    return Evaluation(
        name=name, memorization=memorization, fid=fid, embedding=embedding, generated=generated, training=training,
        num_training_unique=len(training), seconds=seconds,
    )


def _embedding_metrics(generated: torch.Tensor, training: torch.Tensor, config: EvaluationConfig, device: str) -> Optional[EmbeddingResult]:
    embedder = build_embedder(config)
    if embedder is None:
        return None
    gen_embeddings = extract_features(embedder, generated, batch_size=config.batch_size, device=device)
    train_embeddings = extract_features(embedder, training, batch_size=config.batch_size, device=device)
    return embedding_similarity(gen_embeddings, train_embeddings, block_size=config.block_size, device=device, embedder_name=embedder.name)
