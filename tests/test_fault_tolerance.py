"""Surviving failures: a killed shard actor, a stopped driver, a checkpoint cut off mid-write."""

import json
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from safetensors.numpy import load_file

from conftest import tiny_config
from ray_iet.checkpoint import latest_round, write_round
from ray_iet.coordinator import shard_actor_name
from ray_iet.train import train


def shard_rows(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["type"] == "shard"]


def wait_for_latest(run_dir, name, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pointer = run_dir / "latest"
        if pointer.is_file() and pointer.read_text().strip() == name:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{run_dir} did not reach {name} within {timeout} s")


def test_killed_shard_is_retried(local_ray, tmp_path, capfd):
    config = tiny_config(tmp_path, training={"rounds": 3, "local_epochs": 25}, agc={"bank_init": 1.0}, msr={"moves": 2})
    run_dir = config.run_dir.resolve()
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=train(config)))
    thread.start()

    # Round 2 starts right after round 1's checkpoint and sample grid; kill shard 1 inside it.
    wait_for_latest(run_dir, "round_0001")
    time.sleep(1.0)
    ray.kill(ray.get_actor(shard_actor_name(run_dir, 1)), no_restart=False)
    thread.join(timeout=300)

    assert "summary" in outcome
    assert (run_dir / "latest").read_text().strip() == "round_0003"
    attempts = {(row["round"], row["shard"]): row["attempts"] for row in shard_rows(run_dir)}
    assert attempts[(2, 1)] == 2
    assert attempts[(2, 0)] == 1
    assignment = pq.read_table(run_dir / "rounds" / "round_0003" / "assignment.parquet")
    assert sorted(assignment.column("id").to_pylist()) == list(range(96))
    time.sleep(1.0)  # the coordinator's log lines reach the driver asynchronously
    assert "shard 1 failed in round 2 (attempt 1 of 3)" in capfd.readouterr().err


def round_files(run_dir, round_index):
    folder = run_dir / "rounds" / f"round_{round_index:04d}"
    tensors = {
        "model": load_file(folder / "model" / "unet" / "diffusion_pytorch_model.safetensors"),
        "ema": load_file(folder / "model_ema" / "unet" / "diffusion_pytorch_model.safetensors"),
    }
    for shard in (0, 1):
        tensors[f"shard{shard}"] = load_file(folder / "shards" / f"shard_{shard:02d}" / "state.safetensors")
    meta = [json.loads((folder / "shards" / f"shard_{shard:02d}" / "state.json").read_text()) for shard in (0, 1)]
    return tensors, meta, pq.read_table(folder / "assignment.parquet")


def test_resume_equals_uninterrupted_run(local_ray, tmp_path):
    sections = dict(training={"rounds": 3, "local_epochs": 2}, agc={"bank_init": 1.0}, msr={"moves": 3}, evaluation={"enabled": False})
    full = tiny_config(tmp_path, name="full", **sections)
    train(full)

    # A run stopped after round 1, then resumed for the remaining rounds.
    stopped = tiny_config(tmp_path, name="stopped", **{**sections, "training": {"rounds": 1, "local_epochs": 2}})
    train(stopped)
    train(stopped.model_copy(update={"training": full.training}), resume=True)

    full_tensors, full_meta, full_assignment = round_files(full.run_dir, 3)
    resumed_tensors, resumed_meta, resumed_assignment = round_files(stopped.run_dir, 3)
    for group, tensors in full_tensors.items():
        assert tensors.keys() == resumed_tensors[group].keys()
        for key, value in tensors.items():
            assert np.array_equal(value, resumed_tensors[group][key]), f"{group}/{key} differs"
    assert full_meta == resumed_meta
    assert full_assignment.equals(resumed_assignment)
    assert len(shard_rows(stopped.run_dir)) == len(shard_rows(full.run_dir))


def test_resume_without_checkpoint_starts_fresh(local_ray, tmp_path):
    config = tiny_config(tmp_path, training={"rounds": 1}, evaluation={"enabled": False})
    train(config, resume=True)
    assert latest_round(config.run_dir) == 1


class WriteInterrupted(RuntimeError):
    pass


def interrupted_shards():
    raise WriteInterrupted("simulated crash while writing shard states")
    yield  # makes this a generator, like the coordinator's lazy shard states


def test_truncated_checkpoint_never_latest(local_ray, tmp_path):
    config = tiny_config(tmp_path, training={"rounds": 1}, evaluation={"enabled": False})
    train(config)
    run_dir = config.run_dir
    round_one = round_files(run_dir, 1)

    from ray_iet.checkpoint import read_round
    from ray_iet.train import build_model, load_data

    unet, scheduler = build_model(config, load_data(config))
    checkpoint = read_round(run_dir, 1)
    with pytest.raises(WriteInterrupted):
        write_round(
            run_dir, 2, unet=unet, scheduler=scheduler, weights=checkpoint.weights, ema=checkpoint.ema,
            shards=checkpoint.shards, shard_checkpoints=interrupted_shards(), info={},
        )
    assert (run_dir / "rounds" / ".tmp-round_0002").is_dir()
    assert not (run_dir / "rounds" / "round_0002").exists()
    assert latest_round(run_dir) == 1
    assert round_files(run_dir, 1)[2].equals(round_one[2])


def test_latest_naming_incomplete_folder_rejected(tmp_path):
    (tmp_path / "rounds" / "round_0004").mkdir(parents=True)
    (tmp_path / "latest").write_text("round_0004\n")
    with pytest.raises(FileNotFoundError, match="round_0004"):
        latest_round(tmp_path)
