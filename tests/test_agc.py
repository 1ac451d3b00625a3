import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_iet.agc import LossMemoryBank, decide, make_augmentation


def test_bank_starts_unseen_with_infinite_ratio():
    bank = LossMemoryBank(10, decay=0.8)
    ratios = bank.ratios(torch.tensor([0.3, 2.0]), torch.tensor([1, 4]))
    assert torch.isinf(ratios).all()


def test_bank_ratio_divides_by_entry():
    bank = LossMemoryBank(10, decay=0.8, initial_value=2.0)
    ratios = bank.ratios(torch.tensor([1.0]), torch.tensor([3]))
    assert ratios.tolist() == [0.5]


def test_bank_update_single_sample():
    bank = LossMemoryBank(5, decay=0.8, initial_value=1.0)
    bank.update(torch.tensor([2.0]), torch.tensor([2]))
    assert bank.values[2].item() == pytest.approx(0.8 * 1.0 + 0.2 * 2.0)
    assert bank.values[0].item() == 1.0


def test_bank_update_repeated_timesteps_in_order():
    bank = LossMemoryBank(4, decay=0.5)
    bank.update(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([2, 2, 2]))
    # Sequential: 0 -> 0.5 -> 0.5*0.5+0.5*3=1.75 -> 0.5*1.75+0.5*5=3.375
    assert bank.values[2].item() == pytest.approx(3.375)


@settings(max_examples=60, deadline=None)
@given(
    timesteps=st.lists(st.integers(0, 7), min_size=1, max_size=40),
    decay=st.floats(0.0, 0.99),
    initial=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_bank_vectorised_equals_sequential_loop(timesteps, decay, initial, seed):
    losses = torch.rand(len(timesteps), generator=torch.Generator().manual_seed(seed)) * 4
    t = torch.tensor(timesteps)
    vectorised = LossMemoryBank(8, decay=decay, initial_value=initial)
    sequential = LossMemoryBank(8, decay=decay, initial_value=initial)
    vectorised.update(losses, t)
    sequential.update_sequential(losses, t)
    torch.testing.assert_close(vectorised.values, sequential.values, rtol=1e-5, atol=1e-6)


def test_bank_rejects_decay_of_one():
    with pytest.raises(ValueError, match="decay"):
        LossMemoryBank(4, decay=1.0)


def test_decide_values_exactly_at_thresholds():
    # lambda = 0.5, R = 1.5: [0.5, 0.75) is augmented, 0.75 and above kept.
    ratios = torch.tensor([0.4999, 0.5, 0.7499, 0.75, math.inf])
    decision = decide(ratios, skip_threshold=0.5, augment_factor=1.5)
    assert decision.skip.tolist() == [True, False, False, False, False]
    assert decision.augment.tolist() == [False, True, True, False, False]
    assert decision.keep.tolist() == [False, False, False, True, True]


def test_decide_skip_disabled_keeps_low_ratios():
    decision = decide(torch.tensor([0.1, 0.6]), skip_threshold=0.5, augment_factor=1.5, skip_enabled=False)
    assert decision.skip.tolist() == [False, False]
    assert decision.keep.tolist() == [True, False]


def test_decide_augment_disabled_keeps_band():
    decision = decide(torch.tensor([0.1, 0.6]), skip_threshold=0.5, augment_factor=1.5, augment_enabled=False)
    assert decision.skip.tolist() == [True, False]
    assert decision.augment.tolist() == [False, False]
    assert decision.keep.tolist() == [False, True]


@pytest.mark.parametrize("kwargs", [dict(skip_threshold=0.0, augment_factor=1.5), dict(skip_threshold=0.5, augment_factor=1.0)])
def test_decide_rejects_out_of_range(kwargs):
    with pytest.raises(ValueError):
        decide(torch.tensor([1.0]), **kwargs)


@pytest.mark.parametrize("policy", ["flip", "translate", "flip_translate"])
@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 3, 16, 16), (2, 1, 25, 25)])
def test_augmentation_keeps_shape_and_range(policy, shape):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    augmented = make_augmentation(policy)(images, torch.Generator().manual_seed(2))
    assert augmented.shape == images.shape
    assert augmented.min() >= images.min()
    assert augmented.max() <= images.max()


def test_augmentation_changes_images():
    images = torch.rand((16, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    augmented = make_augmentation("flip_translate")(images, torch.Generator().manual_seed(4))
    assert not torch.equal(augmented, images)


def test_augmentation_unknown_policy():
    with pytest.raises(ValueError, match="rotate"):
        make_augmentation("rotate")
