"""Whole runs on a local Ray instance with real shard actors, tiny models and real digits."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import DDPMPipeline

from conftest import tiny_config
from ray_iet.resources import ResourceError
from ray_iet.train import train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(local_ray, tmp_path_factory):
    # A memory bank primed at 1.0 (about the untrained loss) makes skips and moves happen at once.
    tmp_path = tmp_path_factory.mktemp("e2e")
    config = tiny_config(tmp_path, agc={"bank_init": 1.0, "skip_threshold": 0.9, "augment_factor": 1.2}, msr={"moves": 3})
    summary = train(config)
    return config, summary


def test_run_writes_rounds_and_latest(finished_run):
    config, _ = finished_run
    run_dir = config.run_dir
    assert (run_dir / "latest").read_text().strip() == "round_0002"
    for round_index in (1, 2):
        folder = run_dir / "rounds" / f"round_{round_index:04d}"
        assert (folder / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert (folder / "model_ema" / "model_index.json").is_file()
        assert (folder / "shards" / "shard_01" / "state.safetensors").is_file()
        assert (run_dir / "samples" / f"round_{round_index:04d}.png").is_file()
    assert (run_dir / "config.yaml").is_file()


def test_metrics_counts_add_up(finished_run):
    config, _ = finished_run
    rows = [row for row in read_metrics(config.run_dir) if row["type"] == "shard"]
    assert len(rows) == 4
    for row in rows:
        assert row["kept"] + row["augmented"] + row["skipped"] == row["visits"]
        assert row["visits"] == row["samples"] * config.training.local_epochs


def test_skips_and_moves_happen(finished_run):
    config, _ = finished_run
    rows = [row for row in read_metrics(config.run_dir) if row["type"] == "shard" and row["round"] == 2]
    assert sum(row["skipped"] for row in rows) > 0
    assert sum(row["moved_out"] for row in rows) > 0
    assert sum(row["moved_in"] for row in rows) == sum(row["moved_out"] for row in rows)


def test_assignment_holds_every_id_once(finished_run):
    config, _ = finished_run
    assignment = pq.read_table(config.run_dir / "rounds" / "round_0002" / "assignment.parquet")
    assert sorted(assignment.column("id").to_pylist()) == list(range(96))
    assert set(assignment.column("shard").to_pylist()) == {0, 1}


def test_moved_samples_change_shard(finished_run):
    config, _ = finished_run
    rounds = config.run_dir / "rounds"
    before = dict(zip(*pq.read_table(rounds / "round_0001" / "assignment.parquet").to_pydict().values()))
    after = dict(zip(*pq.read_table(rounds / "round_0002" / "assignment.parquet").to_pydict().values()))
    moved = [sample for sample in before if before[sample] != after[sample]]
    assert moved
    assert all(after[sample] == (before[sample] + 1) % 2 for sample in moved)


def test_final_model_loads_in_diffusers(finished_run):
    config, summary = finished_run
    pipeline = DDPMPipeline.from_pretrained(summary["final_model"])
    images = pipeline(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    assert np.isfinite(images).all()


def test_existing_run_needs_resume(finished_run):
    config, _ = finished_run
    with pytest.raises(RuntimeError, match="--resume"):
        train(config)


def test_gpu_request_fails_with_resource_named(local_ray, tmp_path):
    config = tiny_config(tmp_path, resources={"num_gpus_per_shard": 1})
    with pytest.raises(ResourceError, match="GPU"):
        train(config)
    assert not config.run_dir.exists()


def test_run_ends_with_evaluation_report(finished_run):
    config, summary = finished_run
    report = config.run_dir / "report"
    assert summary["evaluation"]["memorization"]["num_generated"] == 24
    assert (report / "report.md").is_file()
    assert (report / "report.json").is_file()
    assert (report / "ratio_histogram.png").is_file()
    assert (report / "copies_test.png").is_file()


def test_evaluate_command_on_run_folder(finished_run, tmp_path, capsys):
    from ray_iet.cli import main

    config, _ = finished_run
    code = main(["evaluate", str(config.run_dir), "--output", str(tmp_path / "report"), "--evaluation.num_samples", "8"])
    assert code == 0
    assert "memorized" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["models"][0]["memorization"]["num_generated"] == 8
    assert report["models"][0]["fid"]["extractor_name"] == "local-randconv-v1"
