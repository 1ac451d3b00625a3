"""Measure the cost of anti-gradient control: shard throughput with AGC and TAA on versus off.

Runs one ShardTrainer (no Ray) on the scikit-learn digits for a few epochs per setting. The
settings are interleaved so that machine noise hits them alike. Prints images per second and the
ratio to plain training measured in the same run.

    python benchmarks/agc_overhead.py [--epochs 3] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ray_iet.config import RunConfig
from ray_iet.shard import ShardTrainer
from ray_iet.train import build_model, load_data
from ray_iet.weights import numpy_state

SETTINGS = {
    "plain (AGC off)": {"agc": {"enabled": False}},
    "AGC (skip only)": {"agc": {"enabled": True, "augment": False}},
    "AGC + TAA": {"agc": {"enabled": True, "augment": True}},
}


def make_trainer(overrides: dict, epochs: int) -> ShardTrainer:
    config = RunConfig.model_validate({**overrides, "training": {"local_epochs": epochs}})
    table = load_data(config).slice(0, 600)
    torch.manual_seed(0)
    unet, scheduler = build_model(config, table)
    trainer = ShardTrainer(config, 0, unet_config=dict(unet.config), scheduler_config=dict(scheduler.config))
    weights = numpy_state(unet)
    trainer.load_global(weights, weights)
    trainer.set_samples(table)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="local epochs per measured round")
    parser.add_argument("--repeats", type=int, default=3, help="measured rounds per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    trainers = {name: make_trainer(overrides, args.epochs) for name, overrides in SETTINGS.items()}
    for trainer in trainers.values():
        trainer.train_round(1)  # warm-up round; also fills the memory bank
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.repeats):
        for name, trainer in trainers.items():
            stats, _, _ = trainer.train_round(2 + repeat)
            rates[name].append(stats.images_per_second)

    baseline = statistics.median(rates["plain (AGC off)"])
    print(f"{'setting':<18} {'images/s (median)':>18} {'ratio to plain':>15}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:>18.0f} {median / baseline:>15.2f}")


if __name__ == "__main__":
    main()
