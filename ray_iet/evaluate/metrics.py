"""Memorization and quality metrics for generated images.

- ``memorization_scores``: pixel-space nearest-neighbour ratio of Carlini et al. 2023
  ("Extracting Training Data from Diffusion Models") and the d1/d2 ratio of Yoon et al.
  2023 ("Diffusion Probabilistic Models Generalize when They Fail to Memorize").
- ``embedding_similarity``: the maximum cosine similarity between each generation's
  embedding and the training embeddings, as in Somepalli et al. 2023 ("Diffusion Art or
  Digital Forgery?"), which used SSCD embeddings.
- ``compute_fid``: FID through torchmetrics' ``FrechetInceptionDistance`` with an
  explicit feature extractor from ``ray_iet.evaluate.embedders``. Every result names
  the extractor.

Images are float tensors ``(B, C, H, W)`` with values in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ray_iet.evaluate.embedders import (
    check_feature_extractor,
    match_channels,
    validate_unit_images,
)

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.15, 0.2, 0.3, 1 / 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
HEADLINE_THRESHOLD = 1 / 3
DEFAULT_K = 50
DEFAULT_BLOCK_SIZE = 4096
EMBEDDING_THRESHOLD = 0.5


# ---------------------------------------------------------------------------
# Blockwise nearest-neighbour search
# ---------------------------------------------------------------------------


def nearest_neighbours(
    generated: torch.Tensor,
    training: torch.Tensor,
    k: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the ``k`` nearest training images of every generated image by squared L2 distance.

    Both inputs are flattened per image, so ``(M, ...)`` and ``(N, ...)`` need the same
    number of values per image. ``k`` is capped at ``N`` when ``N < k``, so the outputs
    have ``min(k, N)`` columns.

    Returns ``(values, indices)``, both ``(M, min(k, N))`` CPU tensors sorted by ascending
    distance: ``values`` are float64 squared distances and ``indices`` are int64 rows of
    ``training``. Equal distances are ordered by training index. When more training
    images tie at the k-th distance than there are places left, which of them are
    returned is unspecified.

    The search walks blocks of ``block_size`` generated images against blocks of
    ``block_size`` training images on ``device`` (default: the device of ``generated``).
    Each block pair gives a distance matrix ``|a|^2 + |b|^2 - 2 a.b`` from one matrix
    product, clamped at 0, and a running top-k merge keeps the best ``k`` per generated
    image. Memory is O(block_size^2 + block_size * D + M * k) for D values per image, and
    the full M x N matrix never exists. Keep ``training`` on ``device`` when it fits,
    because otherwise every generated block copies the whole training set to the device.

    The search runs in float64 because the expansion cancels large squared norms (up to
    3072 for 3x32x32 images). On uniform random 3x32x32 images on a CPU, float32 was off
    by up to 1e-3, and TF32 matmuls would be far worse. Even float64 left about 6e-12 for
    an exact copy, so the selected distances are recomputed directly as
    ``sum((a - b)^2)`` in float64. An exact copy then has distance exactly 0.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}.")
    if generated.shape[0] == 0 or training.shape[0] == 0:
        raise ValueError(
            f"Both sets need at least one image, got generated {tuple(generated.shape)} "
            f"and training {tuple(training.shape)}."
        )

    generated_flat = generated.reshape(generated.shape[0], -1)
    training_flat = training.reshape(training.shape[0], -1)
    if generated_flat.shape[1] != training_flat.shape[1]:
        raise ValueError(
            f"Generated images {tuple(generated.shape[1:])} and training images {tuple(training.shape[1:])} "
            "have different sizes. Resize both sets to one resolution first."
        )

    target = torch.device(device) if device is not None else generated.device
    num_generated = generated_flat.shape[0]
    k = min(k, training_flat.shape[0])

    values = torch.empty(num_generated, k, dtype=torch.float64)
    indices = torch.empty(num_generated, k, dtype=torch.int64)
    for start in range(0, num_generated, block_size):
        queries = generated_flat[start : start + block_size].to(target, torch.float64)
        candidates = _search_block(queries, training_flat, k, block_size, target)
        block_values, block_indices = _exact_sorted_distances(queries, training_flat, candidates, block_size, target)
        values[start : start + queries.shape[0]] = block_values.cpu()
        indices[start : start + queries.shape[0]] = block_indices.cpu()
    return values, indices


def _search_block(
    queries: torch.Tensor,
    training_flat: torch.Tensor,
    k: int,
    block_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Return the indices ``(B, k)`` of the ``k`` nearest training rows of each query, in no order."""
    query_sq_norms = queries.square().sum(dim=1, keepdim=True)
    best_values = queries.new_empty(queries.shape[0], 0)
    best_indices = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=device)

    for start in range(0, training_flat.shape[0], block_size):
        keys = training_flat[start : start + block_size].to(device, torch.float64)
        key_sq_norms = keys.square().sum(dim=1)
        distances = query_sq_norms + key_sq_norms - 2.0 * (queries @ keys.T)
        distances.clamp_(min=0.0)

        block_k = min(k, keys.shape[0])
        block_values, block_positions = torch.topk(distances, block_k, dim=1, largest=False, sorted=False)
        merged_values = torch.cat([best_values, block_values], dim=1)
        merged_indices = torch.cat([best_indices, block_positions + start], dim=1)
        if merged_values.shape[1] > k:
            merged_values, keep = torch.topk(merged_values, k, dim=1, largest=False, sorted=False)
            merged_indices = merged_indices.gather(1, keep)
        best_values, best_indices = merged_values, merged_indices

    return best_indices


def _exact_sorted_distances(
    queries: torch.Tensor,
    training_flat: torch.Tensor,
    candidates: torch.Tensor,
    block_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recompute the candidates' squared distances directly and sort them, ties by index."""
    k = candidates.shape[1]
    # Each chunk gathers rows * k training images, about one block of training data.
    rows_per_chunk = max(1, block_size // k)
    candidates, _ = candidates.sort(dim=1)

    exact = torch.empty(candidates.shape, dtype=torch.float64, device=device)
    for start in range(0, queries.shape[0], rows_per_chunk):
        chunk = candidates[start : start + rows_per_chunk]
        gathered = training_flat[chunk.reshape(-1).to(training_flat.device)].to(device, torch.float64)
        gathered = gathered.view(chunk.shape[0], k, -1)
        # This cdist mode sums (a - b)^2 directly instead of using the matrix-product
        # expansion, so identical images get distance exactly 0.
        lengths = torch.cdist(
            queries[start : start + rows_per_chunk, None, :],
            gathered,
            compute_mode="donot_use_mm_for_euclid_dist",
        )
        exact[start : start + chunk.shape[0]] = lengths[:, 0, :].square()

    # Stable sort on index-ordered candidates breaks distance ties by training index.
    exact, order = torch.sort(exact, dim=1, stable=True)
    return exact, candidates.gather(1, order)


# ---------------------------------------------------------------------------
# Pixel-space memorization
# ---------------------------------------------------------------------------


@dataclass
class MemorizationResult:
    """Nearest-neighbour memorization scores of a generated set against a training set.

    ``ratios[i]`` is ``d_1 / mean(d_1, ..., d_k)`` over the squared L2 distances to the
    ``k`` nearest training images, and 0 when that mean is 0. ``d1_d2_ratios[i]`` is
    ``sqrt(d_1) / sqrt(d_2)`` over plain L2 distances, 0 when ``d_2`` is 0, and NaN when
    the training set has a single image. ``fractions`` maps each threshold tau to the
    share of generated images with ``ratio < tau``.
    """

    ratios: np.ndarray
    d1_d2_ratios: np.ndarray
    nn_index: np.ndarray
    nn_sq_distance: np.ndarray
    fractions: dict[float, float]
    headline_fraction: float
    d1_d2_fraction: float
    k: int
    num_generated: int
    num_training: int
    headline_threshold: float = HEADLINE_THRESHOLD
    d1_d2_threshold: float = HEADLINE_THRESHOLD

    def to_dict(self, *, include_per_image: bool = False) -> dict[str, Any]:
        """Convert the result to plain Python types for JSON.

        Per-image arrays are included only with ``include_per_image``. ``fractions``
        becomes a list of ``{"tau", "fraction"}`` objects because JSON keys must be
        strings. ``d1_d2_fraction`` becomes None when it is NaN.
        """
        report: dict[str, Any] = {
            "k": self.k,
            "num_generated": self.num_generated,
            "num_training": self.num_training,
            "headline_threshold": self.headline_threshold,
            "headline_fraction": self.headline_fraction,
            "fractions": [{"tau": tau, "fraction": fraction} for tau, fraction in self.fractions.items()],
            "d1_d2_threshold": self.d1_d2_threshold,
            "d1_d2_fraction": None if math.isnan(self.d1_d2_fraction) else self.d1_d2_fraction,
        }
        if include_per_image:
            report["ratios"] = self.ratios.tolist()
            report["d1_d2_ratios"] = [None if math.isnan(value) else value for value in self.d1_d2_ratios.tolist()]
            report["nn_index"] = self.nn_index.tolist()
            report["nn_sq_distance"] = self.nn_sq_distance.tolist()
        return report


def _validate_image_sets(generated: torch.Tensor, training: torch.Tensor) -> None:
    validate_unit_images(generated, "generated")
    validate_unit_images(training, "training")
    if generated.shape[1:] != training.shape[1:]:
        raise ValueError(
            f"Generated images have shape {tuple(generated.shape[1:])} but training images have shape "
            f"{tuple(training.shape[1:])} (C, H, W). Resize both sets to one resolution and channel count first."
        )


def memorization_scores(
    generated: torch.Tensor,
    training: torch.Tensor,
    *,
    k: int = DEFAULT_K,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
) -> MemorizationResult:
    """Score every generated image for memorization against the training set.

    ``generated`` is ``(M, C, H, W)`` and ``training`` is ``(N, C, H, W)``, both float in
    [0, 1] at the same resolution. A generated image counts as memorized at threshold tau
    when ``d_1 / mean(d_1, ..., d_k) < tau`` over its squared L2 distances to the
    ``min(k, N)`` nearest training images (Carlini et al. 2023, headline tau = 1/3), and in
    the variant of Yoon et al. 2023 when ``d_1 / d_2 < 1/3`` over plain L2 distances.
    ``block_size`` and ``device`` are passed to ``nearest_neighbours``.

    Raises ValueError when the shapes differ or values fall outside [0, 1].
    """
    _validate_image_sets(generated, training)
    thresholds = tuple(float(tau) for tau in thresholds)

    # The d1/d2 ratio needs the second neighbour even when k is 1.
    search_k = max(k, 2)
    distances, neighbours = nearest_neighbours(generated, training, search_k, block_size=block_size, device=device)
    used_k = min(k, training.shape[0])

    nearest = distances[:, 0]
    mean_distance = distances[:, :used_k].mean(dim=1)
    # A zero mean means the k nearest training images are all exact copies, and the ratio is defined as 0.
    ratios = torch.where(mean_distance > 0, nearest / mean_distance, 0.0)

    if distances.shape[1] >= 2:
        second = distances[:, 1]
        d1_d2 = torch.where(second > 0, nearest.sqrt() / second.sqrt(), 0.0)
        d1_d2_fraction = float((d1_d2 < HEADLINE_THRESHOLD).double().mean())
    else:
        d1_d2 = torch.full_like(nearest, math.nan)
        d1_d2_fraction = math.nan

    fractions = {tau: float((ratios < tau).double().mean()) for tau in thresholds}
    return MemorizationResult(
        ratios=ratios.numpy(),
        d1_d2_ratios=d1_d2.numpy(),
        nn_index=neighbours[:, 0].numpy(),
        nn_sq_distance=nearest.numpy(),
        fractions=fractions,
        headline_fraction=float((ratios < HEADLINE_THRESHOLD).double().mean()),
        d1_d2_fraction=d1_d2_fraction,
        k=used_k,
        num_generated=generated.shape[0],
        num_training=training.shape[0],
    )


# ---------------------------------------------------------------------------
# Embedding similarity
# ---------------------------------------------------------------------------


@dataclass
class EmbeddingResult:
    """Nearest-neighbour cosine similarity of generated embeddings to training embeddings.

    ``fraction_above_threshold`` is the share of generations whose maximum similarity is
    strictly above ``threshold``. ``percentile_95`` is the 95th percentile of the maximum
    similarities, with NumPy's default linear interpolation.
    """

    max_similarity: np.ndarray
    nn_index: np.ndarray
    fraction_above_threshold: float
    percentile_95: float
    threshold: float = EMBEDDING_THRESHOLD
    embedder_name: str | None = None

    def to_dict(self, *, include_per_image: bool = False) -> dict[str, Any]:
        """Convert the result to plain Python types for JSON, with per-image arrays only if ``include_per_image``."""
        report: dict[str, Any] = {
            "embedder_name": self.embedder_name,
            "num_generated": int(self.max_similarity.shape[0]),
            "threshold": self.threshold,
            "fraction_above_threshold": self.fraction_above_threshold,
            "percentile_95": self.percentile_95,
        }
        if include_per_image:
            report["max_similarity"] = self.max_similarity.tolist()
            report["nn_index"] = self.nn_index.tolist()
        return report


def _as_embedding_matrix(embeddings: torch.Tensor | np.ndarray, label: str) -> torch.Tensor:
    matrix = torch.as_tensor(embeddings)
    if matrix.dim() != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{label} must be a non-empty (count, dim) matrix, got shape {tuple(matrix.shape)}.")
    if not matrix.is_floating_point():
        raise ValueError(f"{label} must be floating point, got dtype {matrix.dtype}.")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{label} contains NaN or infinite values.")

    norms = matrix.norm(dim=1)
    zero_rows = torch.nonzero(norms == 0).flatten()
    if zero_rows.numel() > 0:
        raise ValueError(
            f"{label} has {zero_rows.numel()} zero vectors (first at row {int(zero_rows[0])}). "
            "Cosine similarity is undefined for them."
        )
    return matrix


def embedding_similarity(
    gen_embeddings: torch.Tensor | np.ndarray,
    train_embeddings: torch.Tensor | np.ndarray,
    *,
    threshold: float = EMBEDDING_THRESHOLD,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    embedder_name: str | None = None,
) -> EmbeddingResult:
    """Find each generation's most similar training embedding by cosine similarity.

    Inputs are ``(M, d)`` and ``(N, d)`` embeddings, normalised here in float64, so they
    need not be unit length. The similarity matrix is built in blocks of
    ``block_size`` x ``block_size`` on ``device`` (default: the device of
    ``gen_embeddings``) with a running maximum, and the full M x N matrix never exists.
    Equal maxima go to the lowest training index. ``embedder_name`` is only stored in the
    result, so that reports name the embedder behind the numbers.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}.")
    generated = _as_embedding_matrix(gen_embeddings, "gen_embeddings")
    training = _as_embedding_matrix(train_embeddings, "train_embeddings")
    if generated.shape[1] != training.shape[1]:
        raise ValueError(
            f"gen_embeddings have dimension {generated.shape[1]} but train_embeddings have "
            f"{training.shape[1]}. Embed both sets with the same embedder."
        )

    target = torch.device(device) if device is not None else generated.device
    num_generated = generated.shape[0]
    max_similarity = torch.empty(num_generated, dtype=torch.float64)
    nn_index = torch.empty(num_generated, dtype=torch.int64)

    for query_start in range(0, num_generated, block_size):
        queries = F.normalize(generated[query_start : query_start + block_size].to(target, torch.float64), dim=1)
        best = torch.full((queries.shape[0],), -math.inf, dtype=torch.float64, device=target)
        best_index = torch.zeros(queries.shape[0], dtype=torch.int64, device=target)

        for key_start in range(0, training.shape[0], block_size):
            keys = F.normalize(training[key_start : key_start + block_size].to(target, torch.float64), dim=1)
            block_best, block_index = (queries @ keys.T).max(dim=1)
            # Strictly greater, so an equal maximum in a later block keeps the earlier index.
            improved = block_best > best
            best = torch.where(improved, block_best, best)
            best_index = torch.where(improved, block_index + key_start, best_index)

        max_similarity[query_start : query_start + queries.shape[0]] = best.cpu()
        nn_index[query_start : query_start + queries.shape[0]] = best_index.cpu()

    similarities = max_similarity.numpy()
    return EmbeddingResult(
        max_similarity=similarities,
        nn_index=nn_index.numpy(),
        fraction_above_threshold=float(np.mean(similarities > threshold)),
        percentile_95=float(np.percentile(similarities, 95)),
        threshold=float(threshold),
        embedder_name=embedder_name,
    )


# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------


@dataclass
class FidResult:
    """FID between a generated and a training set, labelled with the feature extractor.

    FIDs from different extractors are on different scales, so compare ``value`` only
    between results with the same ``extractor_name``.
    """

    value: float
    extractor_name: str
    num_generated: int
    num_training: int

    def to_dict(self) -> dict[str, Any]:
        """Convert to plain Python types for JSON."""
        return {
            "value": self.value,
            "extractor_name": self.extractor_name,
            "num_generated": self.num_generated,
            "num_training": self.num_training,
        }


class _FidFeatureAdapter(nn.Module):
    """Feature module for torchmetrics that repeats single-channel images and returns float64 features.

    torchmetrics accumulates feature sums in float64 and casts the final FID to the dtype
    of the features it received, so float64 features keep the result in float64.
    """

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = int(extractor.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = match_channels(images, self.extractor.in_channels)
        return self.extractor(images).double()


@torch.no_grad()
def compute_fid(
    generated: torch.Tensor,
    training: torch.Tensor,
    extractor: nn.Module,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> FidResult:
    """Compute the FID between ``generated`` and ``training`` with ``extractor``'s features.

    Images are float ``(B, C, H, W)`` in [0, 1]. The two sets may differ in resolution
    because extractors resize their inputs. Single-channel images are repeated to the
    extractor's ``in_channels``. Both sets need at least two images.

    ``extractor`` is a module with ``name``, ``num_features`` and ``in_channels`` (see
    ``ray_iet.evaluate.embedders``). It goes to torchmetrics' ``FrechetInceptionDistance``
    as its ``feature`` module with ``normalize=True``, so torchmetrics passes the float
    images through unchanged and never loads its own Inception weights. The metric and
    the extractor run on ``device`` (default: the device of ``generated``), in batches of
    ``batch_size``, and the extractor stays on that device afterwards.
    """
    check_feature_extractor(extractor)
    validate_unit_images(generated, "generated")
    validate_unit_images(training, "training")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for label, images in (("generated", generated), ("training", training)):
        if images.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 {label} images, got {images.shape[0]}.")

    target = torch.device(device) if device is not None else generated.device
    extractor.eval()
    metric = FrechetInceptionDistance(feature=_FidFeatureAdapter(extractor), normalize=True).to(target)

    for real, images in ((True, training), (False, generated)):
        for start in range(0, images.shape[0], batch_size):
            metric.update(images[start : start + batch_size].to(target, torch.float32), real=real)

    return FidResult(
        value=float(metric.compute()),
        extractor_name=extractor.name,
        num_generated=generated.shape[0],
        num_training=training.shape[0],
    )
