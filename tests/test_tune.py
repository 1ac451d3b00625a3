"""A Tune search of two tiny trials on a local Ray instance, and its best config."""

import json

import pytest
import yaml

from conftest import tiny_config
from ray_iet.config import ConfigError, build_config
from ray_iet.tune import objective, run_tune


def test_objective_adds_fid_and_bound(tmp_path):
    config = tiny_config(tmp_path, tune={"fid_weight": 0.01, "max_fid": 10.0})
    assert objective(0.2, 5.0, config) == pytest.approx(0.25)
    assert objective(0.2, 20.0, config) == pytest.approx(0.2 + 0.2 + 1.0 + 1.0)


def test_bad_search_space_rejected():
    with pytest.raises(ConfigError, match="agc.skip_threshold"):
        build_config({"tune": {"search_space": {"agc.skip_threshold": {"normal": [0, 1]}}}})


def test_tune_two_trials_writes_best_config(local_ray, tmp_path):
    config = tiny_config(
        tmp_path,
        tune={
            "num_samples": 2,
            "search_space": {"agc.skip_threshold": {"choice": [0.4, 0.7]}},
            "eval_samples": 8,
            "eval_inference_steps": 2,
            "coordinator_cpus": 0.5,
            "cpus_per_shard": 0.5,
        },
        evaluation={"k": 5},
    )
    result = run_tune(config)

    # Every trial reported once per round.
    trials = sorted((tmp_path / "runs" / "test-tune" / "trials").glob("*/result.json"))
    assert len(trials) == 2
    for path in trials:
        rounds = [json.loads(line)["round"] for line in path.read_text().splitlines()]
        assert rounds == [1, 2]

    best = yaml.safe_load((tmp_path / "runs" / "test-tune" / "best_config.yaml").read_text())
    assert best["agc"]["skip_threshold"] in (0.4, 0.7)
    assert best["name"] == "test-best"
    assert result["metrics"]["memorized_fraction"] is not None


def test_best_config_runs_in_main_job(local_ray, tmp_path):
    from ray_iet.cli import main

    config = tiny_config(tmp_path, tune={"num_samples": 1, "search_space": {"msr.moves": {"choice": [2]}}, "eval_samples": 8,
                                        "eval_inference_steps": 2, "coordinator_cpus": 0.5, "cpus_per_shard": 0.5},
                         training={"rounds": 1}, evaluation={"k": 5, "num_samples": 8})
    result = run_tune(config)
    assert main(["train", "--config", result["best_config"]]) == 0
    assert (tmp_path / "runs" / "test-best" / "model" / "model_index.json").is_file()


def test_shard_bundle_fits_small_machine(tmp_path):
    from ray_iet.tune import shard_bundle

    config = tiny_config(tmp_path, tune={"search_space": {"training.shards": {"choice": [2, 4]}}})
    bundle = shard_bundle(config, {"CPU": 2.0})
    assert bundle == {"CPU": 0.37}


def test_shard_bundle_whole_cpus_on_large_cluster(tmp_path):
    from ray_iet.tune import shard_bundle

    config = tiny_config(tmp_path, tune={"search_space": {"training.shards": {"randint": [2, 5]}}})
    assert shard_bundle(config, {"CPU": 64.0, "GPU": 8.0}) == {"CPU": 1.0, "GPU": 1.0}


def test_shard_bundle_too_large_rejected(tmp_path):
    from ray_iet.resources import ResourceError
    from ray_iet.tune import shard_bundle

    config = tiny_config(tmp_path, tune={"cpus_per_shard": 1.0})
    with pytest.raises(ResourceError, match="CPU"):
        shard_bundle(config, {"CPU": 2.0})
