import numpy as np
import pytest

from conftest import state_arrays_equal, tiny_config


def test_counts_add_up_to_visits(tmp_path, digits_table, make_trainer):
    config = tiny_config(tmp_path, training={"local_epochs": 2}, agc={"bank_init": 1.0})
    trainer, _ = make_trainer(config, digits_table)
    stats, ids, skip_counts = trainer.train_round(1)
    assert stats.visits == 2 * digits_table.num_rows
    assert stats.kept + stats.augmented + stats.skipped == stats.visits
    assert int(skip_counts.sum()) == stats.skipped
    assert np.array_equal(ids, np.sort(digits_table.column("id").to_numpy()))


def test_all_skipped_batches_take_no_step(tmp_path, digits_table, make_trainer):
    # A memory bank primed far above any loss makes every ratio fall below lambda.
    config = tiny_config(tmp_path, agc={"bank_init": 1e6})
    trainer, initial = make_trainer(config, digits_table)
    stats, _, skip_counts = trainer.train_round(1)
    weights, _ = trainer.weights()
    assert stats.skipped == stats.visits
    assert stats.optimizer_steps == 0
    assert stats.all_skipped_batches == -(-digits_table.num_rows // 16)
    assert trainer.optimizer.state_dict()["state"] == {}
    assert state_arrays_equal(weights, initial)
    assert skip_counts.tolist() == [1] * digits_table.num_rows


def test_skipping_disabled_never_skips(tmp_path, digits_table, make_trainer):
    config = tiny_config(tmp_path, agc={"bank_init": 1e6, "enabled": False})
    trainer, _ = make_trainer(config, digits_table)
    stats, _, _ = trainer.train_round(1)
    assert stats.skipped == 0
    assert stats.augmented == 0
    assert stats.optimizer_steps == -(-digits_table.num_rows // 16)


def test_augment_band_augments(tmp_path, digits_table, make_trainer):
    # Losses start near 1; a bank of 1.5 puts most ratios inside [0.5, 0.75) or above.
    config = tiny_config(tmp_path, agc={"bank_init": 1.5, "skip_threshold": 0.5, "augment_factor": 1.5})
    trainer, _ = make_trainer(config, digits_table)
    stats, _, _ = trainer.train_round(1)
    assert stats.augmented > 0


def test_round_is_deterministic(tmp_path, digits_table, make_trainer):
    config = tiny_config(tmp_path, agc={"bank_init": 1.0})
    first, _ = make_trainer(config, digits_table)
    second, _ = make_trainer(config, digits_table)
    stats_a, _, counts_a = first.train_round(1)
    stats_b, _, counts_b = second.train_round(1)
    assert stats_a.skipped == stats_b.skipped
    assert np.array_equal(counts_a, counts_b)
    assert state_arrays_equal(first.weights()[0], second.weights()[0])


def test_state_round_trip_continues_identically(tmp_path, digits_table, make_trainer):
    config = tiny_config(tmp_path)
    original, _ = make_trainer(config, digits_table)
    original.train_round(1)
    restored, _ = make_trainer(config, digits_table)
    restored.load_state(original.state())
    model, ema = original.weights()
    restored.load_global(model, ema)
    original.train_round(2)
    restored.train_round(2)
    assert state_arrays_equal(original.weights()[0], restored.weights()[0])
    assert state_arrays_equal(original.state()["tensors"], restored.state()["tensors"])


def test_set_samples_keeps_decoded_rows(tmp_path, digits_table, make_trainer):
    config = tiny_config(tmp_path)
    trainer, _ = make_trainer(config, digits_table.slice(0, 40))
    before = trainer._images[10:40].clone()
    trainer.set_samples(digits_table.slice(10, 50))
    assert trainer._ids.tolist() == list(range(10, 60))
    assert np.array_equal(trainer._images[:30].numpy(), before.numpy())


def test_nan_loss_names_shard(tmp_path, digits_table, make_trainer):
    config = tiny_config(tmp_path)
    trainer, _ = make_trainer(config, digits_table)
    for parameter in trainer.model.parameters():
        parameter.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="shard 0, round 1"):
        trainer.train_round(1)
