import numpy as np
import pytest
import ray
import torch

from ray_iet.config import RunConfig
from ray_iet.data.sources import load_source
from ray_iet.train import build_model


@pytest.fixture(scope="module")
def local_ray():
    """A private Ray instance with 2 CPUs, shared by the tests of one module."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_table():
    """The first 96 scikit-learn digits, 8x8 grayscale."""
    return load_source("digits", limit=96)


def tiny_config(tmp_path, **sections) -> RunConfig:
    """A config for quick runs: tiny model, small batches, grids of 4 images with 2 DDIM steps."""
    values = {
        "name": "test",
        "output_dir": str(tmp_path / "runs"),
        "data": {"source": "digits", "limit": 96},
        "training": {"shards": 2, "rounds": 2, "local_epochs": 1, "batch_size": 16, "warmup_steps": 2},
        "sampling": {"num_images": 4, "inference_steps": 2},
        "evaluation": {"num_samples": 24, "inference_steps": 3, "k": 10, "embedder": "local"},
    }
    for section, overrides in sections.items():
        if isinstance(overrides, dict):
            values.setdefault(section, {}).update(overrides)
        else:
            values[section] = overrides
    return RunConfig.model_validate(values)


@pytest.fixture
def make_trainer():
    from ray_iet.shard import ShardTrainer

    def make(config: RunConfig, table, shard_index: int = 0):
        torch.manual_seed(config.seed)
        unet, scheduler = build_model(config, table)
        trainer = ShardTrainer(config, shard_index, unet_config=dict(unet.config), scheduler_config=dict(scheduler.config))
        weights = {k: v.detach().numpy().copy() for k, v in unet.state_dict().items()}
        trainer.load_global(weights, weights)
        trainer.set_samples(table)
        return trainer, weights

    return make


def state_arrays_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
