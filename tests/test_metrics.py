"""Tests for ray_iet.evaluate.metrics and ray_iet.evaluate.embedders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ray_iet.evaluate.embedders import (
    InceptionExtractor,
    LocalEmbedder,
    LocalFeatureExtractor,
    TorchScriptEmbedder,
    extract_features,
)
from ray_iet.evaluate.metrics import (
    DEFAULT_THRESHOLDS,
    compute_fid,
    embedding_similarity,
    memorization_scores,
    nearest_neighbours,
)


def brute_force_sq_distances(generated: torch.Tensor, training: torch.Tensor) -> torch.Tensor:
    """Full (M, N) matrix of squared L2 distances, summed directly in float64."""
    a = generated.reshape(generated.shape[0], -1).double()
    b = training.reshape(training.shape[0], -1).double()
    return (a[:, None, :] - b[None, :, :]).square().sum(dim=2)


def random_images(count: int, seed: int, shape: tuple[int, int, int] = (3, 8, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, *shape, generator=generator)


# ---------------------------------------------------------------------------
# nearest_neighbours
# ---------------------------------------------------------------------------


def check_against_brute_force(generated: torch.Tensor, training: torch.Tensor, k: int, block_size: int) -> None:
    values, indices = nearest_neighbours(generated, training, k, block_size=block_size)
    full = brute_force_sq_distances(generated, training)
    expected_k = min(k, training.shape[0])
    expected_values = full.sort(dim=1).values[:, :expected_k]

    assert values.shape == (generated.shape[0], expected_k)
    assert indices.shape == (generated.shape[0], expected_k)
    assert torch.allclose(values, expected_values, rtol=0, atol=1e-9)
    # Check each returned index against its own distance, which stays valid when distances tie.
    assert torch.allclose(full.gather(1, indices), values, rtol=0, atol=1e-9)
    assert bool((values[:, 1:] >= values[:, :-1]).all())


@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 1000])
def test_nearest_neighbours_block_sizes(block_size: int) -> None:
    generated = random_images(13, seed=1)
    training = random_images(17, seed=2)
    check_against_brute_force(generated, training, k=5, block_size=block_size)


@pytest.mark.parametrize("num_generated, num_training", [(1, 9), (9, 1), (1, 1)])
def test_nearest_neighbours_single_image_sets(num_generated: int, num_training: int) -> None:
    generated = random_images(num_generated, seed=3)
    training = random_images(num_training, seed=4)
    check_against_brute_force(generated, training, k=4, block_size=2)


def test_nearest_neighbours_caps_k() -> None:
    values, indices = nearest_neighbours(random_images(4, seed=5), random_images(3, seed=6), 50)
    assert values.shape == (4, 3)
    assert sorted(indices[0].tolist()) == [0, 1, 2]


def test_nearest_neighbours_exact_copy_zero() -> None:
    training = random_images(20, seed=7, shape=(3, 32, 32))
    values, indices = nearest_neighbours(training[[4, 11]], training, 3, block_size=8)
    assert values[:, 0].tolist() == [0.0, 0.0]
    assert indices[:, 0].tolist() == [4, 11]


def test_nearest_neighbours_ties_by_index() -> None:
    # Rows 5, 1 and 3 equal the query, row 0 is the next nearest, and the other rows are far away.
    training = torch.ones(6, 1, 2, 2)
    training[[5, 1, 3]] = 0.0
    training[0] = 0.1
    values, indices = nearest_neighbours(torch.zeros(1, 1, 2, 2), training, 4, block_size=4)
    assert values[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert indices[0].tolist() == [1, 3, 5, 0]


def test_nearest_neighbours_size_mismatch() -> None:
    with pytest.raises(ValueError, match="Resize"):
        nearest_neighbours(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), 1)


def test_nearest_neighbours_invalid_k() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(2, 3), 0)


@settings(max_examples=40, deadline=None)
@given(
    num_generated=st.integers(1, 12),
    num_training=st.integers(1, 12),
    k=st.integers(1, 15),
    block_size=st.integers(1, 14),
    seed=st.integers(0, 2**16),
)
def test_nearest_neighbours_property(num_generated: int, num_training: int, k: int, block_size: int, seed: int) -> None:
    generated = random_images(num_generated, seed=seed, shape=(2, 3, 3))
    training = random_images(num_training, seed=seed + 1, shape=(2, 3, 3))
    check_against_brute_force(generated, training, k=k, block_size=block_size)


# ---------------------------------------------------------------------------
# memorization_scores
# ---------------------------------------------------------------------------


def test_memorization_exact_copies() -> None:
    training = random_images(60, seed=10)
    generated = torch.cat([training[[3, 17, 42]], random_images(7, seed=11)])
    result = memorization_scores(generated, training, block_size=16)

    assert result.ratios[:3].tolist() == [0.0, 0.0, 0.0]
    assert bool((result.ratios[3:] > 0.5).all())
    assert result.nn_index[:3].tolist() == [3, 17, 42]
    assert result.headline_fraction == pytest.approx(0.3)
    assert result.fractions[0.15] == pytest.approx(0.3)
    assert result.d1_d2_fraction == pytest.approx(0.3)
    assert result.k == 50


def test_memorization_far_from_training() -> None:
    training = random_images(80, seed=12) * 0.2
    generated = torch.ones(5, 3, 8, 8)
    result = memorization_scores(generated, training)

    assert set(result.fractions) == set(DEFAULT_THRESHOLDS)
    assert all(fraction == 0.0 for fraction in result.fractions.values())
    assert result.headline_fraction == 0.0
    assert result.d1_d2_fraction == 0.0


def test_memorization_ratio_hand_built() -> None:
    # One-pixel images: squared distances from 0 are 0.01, 0.04 and 0.25.
    training = torch.tensor([0.1, 0.2, 0.5]).view(3, 1, 1, 1)
    result = memorization_scores(torch.zeros(1, 1, 1, 1), training, k=3)

    expected = 0.01 / ((0.01 + 0.04 + 0.25) / 3)
    assert result.ratios[0] == pytest.approx(expected)
    assert result.k == 3
    assert result.fractions[0.15] == 1.0


def test_memorization_d1_d2_hand_built() -> None:
    # Plain L2 distances: first image 0.1 / 0.6 = 1/6, second image 0.2 / 0.3 = 2/3.
    training = torch.tensor([0.1, 0.6, 0.9]).view(3, 1, 1, 1)
    generated = torch.tensor([0.0, 0.3]).view(2, 1, 1, 1)
    result = memorization_scores(generated, training)

    assert result.d1_d2_ratios[0] == pytest.approx(1 / 6)
    assert result.d1_d2_ratios[1] == pytest.approx(2 / 3)
    assert result.d1_d2_fraction == pytest.approx(0.5)


def test_memorization_all_neighbours_identical() -> None:
    training = torch.full((5, 1, 2, 2), 0.4)
    result = memorization_scores(torch.full((1, 1, 2, 2), 0.4), training)
    assert result.ratios[0] == 0.0
    assert result.d1_d2_ratios[0] == 0.0


def test_memorization_single_training_image() -> None:
    result = memorization_scores(random_images(3, seed=13), random_images(1, seed=14))
    assert result.k == 1
    assert math.isnan(result.d1_d2_fraction)
    assert result.to_dict()["d1_d2_fraction"] is None


def test_memorization_to_dict_json() -> None:
    result = memorization_scores(random_images(4, seed=15), random_images(6, seed=16))
    report = json.loads(json.dumps(result.to_dict(include_per_image=True)))
    assert report["headline_threshold"] == pytest.approx(1 / 3)
    assert len(report["fractions"]) == len(DEFAULT_THRESHOLDS)
    assert len(report["ratios"]) == 4


def test_memorization_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\(3, 16, 16\).*Resize"):
        memorization_scores(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 16, 16))


def test_memorization_value_range() -> None:
    generated = torch.full((2, 3, 4, 4), 0.5)
    generated[0, 0, 0, 0] = -1.0
    with pytest.raises(ValueError, match="min -1 and max 0.5"):
        memorization_scores(generated, torch.zeros(2, 3, 4, 4))


def test_memorization_integer_images() -> None:
    with pytest.raises(ValueError, match="float"):
        memorization_scores(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------------------
# embedding_similarity
# ---------------------------------------------------------------------------


def test_embedding_similarity_hand_built() -> None:
    training = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # Cosine similarities to the nearest training vector: 1, 0.6, 0.8 and 0.
    generated = torch.tensor([[2.0, 0.0, 0.0], [0.6, 0.0, 0.8], [0.0, 0.8, 0.6], [0.0, 0.0, 1.0]])
    result = embedding_similarity(generated, training, block_size=1)

    assert np.allclose(result.max_similarity, [1.0, 0.6, 0.8, 0.0])
    assert result.nn_index.tolist() == [0, 0, 1, 0]
    assert result.fraction_above_threshold == pytest.approx(0.75)
    assert result.percentile_95 == pytest.approx(np.percentile([1.0, 0.6, 0.8, 0.0], 95))


def test_embedding_similarity_blocks_match() -> None:
    generator = torch.Generator().manual_seed(20)
    generated = torch.randn(11, 5, generator=generator)
    training = torch.randn(9, 5, generator=generator)
    whole = embedding_similarity(generated, training, block_size=100)
    blocked = embedding_similarity(generated, training, block_size=2)

    assert np.allclose(whole.max_similarity, blocked.max_similarity, rtol=0, atol=1e-12)
    assert whole.nn_index.tolist() == blocked.nn_index.tolist()


def test_embedding_similarity_zero_vector() -> None:
    with pytest.raises(ValueError, match="zero vectors"):
        embedding_similarity(torch.zeros(1, 3), torch.ones(2, 3))


def test_embedding_similarity_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimension 3.*4"):
        embedding_similarity(torch.ones(1, 3), torch.ones(2, 4))


# ---------------------------------------------------------------------------
# FID and feature extractors
# ---------------------------------------------------------------------------


def test_fid_same_set_near_zero() -> None:
    images = random_images(48, seed=30, shape=(3, 32, 32))
    result = compute_fid(images, images, LocalFeatureExtractor(), batch_size=16)
    # Identical statistics leave only float64 eigenvalue round-off, far below 1e-3.
    assert abs(result.value) < 1e-3
    assert result.extractor_name == "local-randconv-v1"
    assert result.num_generated == 48


def test_fid_different_sets_larger() -> None:
    noise = random_images(48, seed=31, shape=(3, 32, 32))
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(48, 3, 32, 32)
    gradients = ramp * random_images(48, seed=32, shape=(1, 1, 1))
    result = compute_fid(gradients, noise, LocalFeatureExtractor(), batch_size=16)
    assert result.value > 1.0


def test_fid_grayscale_repeated() -> None:
    grayscale = random_images(8, seed=33, shape=(1, 16, 16))
    result = compute_fid(grayscale, grayscale.expand(-1, 3, -1, -1), LocalFeatureExtractor())
    assert abs(result.value) < 1e-3


def test_fid_too_few_images() -> None:
    with pytest.raises(ValueError, match="at least 2 generated"):
        compute_fid(random_images(1, seed=34), random_images(4, seed=35), LocalFeatureExtractor())


def test_fid_rejects_unnamed_module() -> None:
    with pytest.raises(TypeError, match="name"):
        compute_fid(random_images(2, seed=36), random_images(2, seed=37), nn.Identity())


def test_local_extractor_deterministic() -> None:
    images = random_images(3, seed=38, shape=(3, 20, 20))
    first = LocalFeatureExtractor()(images)
    second = LocalFeatureExtractor()(images)
    assert first.shape == (3, 256)
    assert torch.equal(first, second)


def test_local_embedder_normalised() -> None:
    images = random_images(4, seed=39, shape=(1, 28, 28))
    embeddings = extract_features(LocalEmbedder(), images, batch_size=3)
    assert embeddings.shape == (4, 128)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(4), atol=1e-6)


def test_local_embedder_copy_similarity() -> None:
    training = random_images(10, seed=40, shape=(3, 32, 32))
    generated = torch.cat([training[[2]], random_images(1, seed=41, shape=(3, 32, 32))])
    embedder = LocalEmbedder()
    result = embedding_similarity(extract_features(embedder, generated), extract_features(embedder, training))
    assert result.max_similarity[0] == pytest.approx(1.0, abs=1e-6)
    assert result.nn_index[0] == 2
    assert result.max_similarity[1] < 0.5


class _ScaledPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def test_torchscript_embedder_loads(tmp_path) -> None:
    path = tmp_path / "tiny_embedder.pt"
    torch.jit.save(torch.jit.script(_ScaledPool()), str(path))
    embedder = TorchScriptEmbedder(path, image_size=16)

    embeddings = extract_features(embedder, random_images(5, seed=42, shape=(3, 24, 24)))
    assert embedder.name == "tiny_embedder.pt"
    assert embedder.num_features == 6
    assert embeddings.shape == (5, 6)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(5), atol=1e-6)


def test_torchscript_embedder_missing_file(tmp_path) -> None:
    path = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        TorchScriptEmbedder(path)


def test_torchscript_embedder_not_torchscript(tmp_path) -> None:
    path = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="state_dict.pt.*not a TorchScript file"):
        TorchScriptEmbedder(path)


def test_inception_extractor_missing_file(tmp_path) -> None:
    path = tmp_path / "inception.pth"
    with pytest.raises(FileNotFoundError, match="inception.pth"):
        InceptionExtractor(path)
