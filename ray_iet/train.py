"""Driver side of a training run: check the data and the model, join Ray, start the coordinator.

Everything that can be checked without Ray (config, data set, model shape, cluster resources) is
checked before the run folder is created, so bad input leaves no checkpoint behind.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
import torch
from diffusers import DDPMScheduler, UNet2DModel
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_iet.config import RunConfig, save_config
from ray_iet.coordinator import CoordinatorActor
from ray_iet.data.duplicates import add_duplicates
from ray_iet.data.sources import check_enough_samples, decode_images, image_shape, load_source
from ray_iet.diffusion.models import build_scheduler, build_unet, load_pretrained_scheduler, load_pretrained_unet
from ray_iet.resources import ShardResources, resolve_shard_resources
from ray_iet.weights import numpy_state

logger = logging.getLogger(__name__)


class RunFolderError(RuntimeError):
    """The run folder already contains rounds and --resume was not given."""


@dataclass
class PreparedRun:
    config: RunConfig
    table: pa.Table
    unet: UNet2DModel
    scheduler: DDPMScheduler


def load_data(config: RunConfig) -> pa.Table:
    data = config.data
    table = load_source(
        data.source,
        data.path,
        image_size=data.image_size,
        channels=data.channels,
        image_column=data.image_column,
        label_column=data.label_column,
        caption_column=data.caption_column,
        npz_key=data.npz_key,
        limit=data.limit,
    )
    table = add_duplicates(table, num_images=data.duplicate_images, copies=data.duplicate_copies, seed=config.seed)
    check_enough_samples(table, config.training.shards)
    return table


def build_model(config: RunConfig, table: pa.Table) -> tuple[UNet2DModel, DDPMScheduler]:
    """Build the round-1 model and its noise schedule, checked against the data's image shape."""
    height, width, channels = image_shape(table)
    if height != width:
        raise ValueError(f"images are {height}x{width}; the UNet needs square images, set data.image_size")
    model = config.model
    if model.pretrained is not None:
        unet = load_pretrained_unet(model.pretrained)
        scheduler = load_pretrained_scheduler(model.pretrained)
        if unet.config.sample_size != height or unet.config.in_channels != channels:
            raise ValueError(
                f"model.pretrained {str(model.pretrained)!r} expects {unet.config.in_channels}x{unet.config.sample_size}x"
                f"{unet.config.sample_size} images but the data are {channels}x{height}x{width}; set data.image_size and data.channels"
            )
    else:
        torch.manual_seed(config.seed)
        unet = build_unet(model.preset, image_size=height, channels=channels)
        scheduler = None
    if scheduler is None:
        scheduler = build_scheduler(num_train_timesteps=model.num_train_timesteps, beta_start=model.beta_start, beta_end=model.beta_end)
    return unet, scheduler


def prepare_run(config: RunConfig, *, resume: bool = False) -> PreparedRun:
    """Check data, model and run folder; nothing is written yet."""
    config = config.model_copy(update={"output_dir": config.output_dir.resolve()})
    run_dir = config.run_dir
    if not resume and (run_dir / "latest").exists():
        raise RunFolderError(f"run folder {run_dir} already contains rounds; continue it with `ray-iet train --resume` (or `jobs/run_iet.py --resume`) or set --name to a new run name")
    table = load_data(config)
    unet, scheduler = build_model(config, table)
    return PreparedRun(config=config, table=table, unet=unet, scheduler=scheduler)


def init_ray() -> None:
    """Join the cluster this driver runs in (`ray job submit`, or `ray start` on this machine), else start a local one."""
    if ray.is_initialized():
        return
    address = None if os.environ.get("RAY_ADDRESS") else _stale_local_cluster()
    ray.init(address=address, logging_level=logging.WARNING, configure_logging=False, include_dashboard=None)


def _stale_local_cluster() -> str | None:
    """Return "local" when the address file of `ray start` names a head that is no longer reachable.

    A head stopped without `ray stop` (killed, or its machine restarted) leaves that file behind,
    and a plain `ray.init()` then retries the dead address for minutes instead of starting Ray.
    """
    from ray._private.utils import read_ray_address  # private, present since Ray 2.0

    recorded = read_ray_address()
    if not recorded:
        return None
    host, _, port = recorded.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return None
    except (OSError, ValueError):
        logger.warning("the Ray head recorded in Ray's address file (%s) is not reachable; starting a local Ray instance", recorded)
        return "local"


def start_run(config: RunConfig, *, resume: bool = False) -> tuple[PreparedRun, ShardResources]:
    """Check everything, join Ray, create the run folder and write its config.yaml."""
    prepared = prepare_run(config, resume=resume)
    config = prepared.config
    init_ray()
    resources = resolve_shard_resources(
        ray.cluster_resources(),
        config.training.shards,
        num_cpus=config.resources.num_cpus_per_shard,
        num_gpus=config.resources.num_gpus_per_shard,
    )
    _log_banner(config, prepared, resources)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config.run_dir / "config.yaml")
    return prepared, resources


def coordinator_arguments(prepared: PreparedRun, resources: ShardResources) -> tuple[Any, ...]:
    """Positional arguments of Coordinator for a prepared run."""
    return (
        prepared.config,
        prepared.table,
        dict(prepared.unet.config),
        numpy_state(prepared.unet),
        dict(prepared.scheduler.config),
        resources,
    )


def train(config: RunConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train IET-AGC+ with the given config, evaluate the final model if enabled, and return a summary."""
    prepared, resources = start_run(config, resume=resume)
    config = prepared.config
    node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    arguments = list(coordinator_arguments(prepared, resources))
    arguments[1] = ray.put(prepared.table)
    coordinator = CoordinatorActor.options(scheduling_strategy=node).remote(*arguments, resume=resume)
    try:
        summary = ray.get(coordinator.run.remote())
    finally:
        ray.kill(coordinator)
    if config.evaluation.enabled:
        summary["evaluation"] = evaluate_run(config, prepared.table)
    return summary


def evaluate_run(config: RunConfig, table: pa.Table) -> dict[str, Any]:
    """Evaluate the run's final model against its training data and write run_dir/report."""
    from ray_iet.evaluate.report import write_report
    from ray_iet.evaluate.run import evaluate_model, load_model

    unet, scheduler = load_model(config.run_dir)
    evaluation = evaluate_model(config.name, unet, scheduler, decode_images(table), config.evaluation)
    report = write_report([evaluation], config.run_dir / "report", title=f"Evaluation of {config.name}", top_copies=config.evaluation.top_copies)
    return {"report": str(report), **evaluation.to_dict()}


def _log_banner(config: RunConfig, prepared: PreparedRun, resources: ShardResources) -> None:
    height, width, channels = image_shape(prepared.table)
    training = config.training
    parameters = sum(p.numel() for p in prepared.unet.parameters())
    logger.info(
        "ray-iet run %s: %d images %dx%dx%d, %d shards x %d rounds x %d local epochs, batch %d per shard (%d in all), "
        "model %s (%.2fM parameters), %g CPU / %g GPU per shard, AGC %s, TAA %s, MSR %s",
        config.run_dir, prepared.table.num_rows, channels, height, width, training.shards, training.rounds, training.local_epochs,
        training.batch_size, training.batch_size * training.shards, config.model.pretrained or config.model.preset, parameters / 1e6,
        resources.num_cpus, resources.num_gpus, _on(config.agc.enabled), _on(config.agc.enabled and config.agc.augment), _on(config.msr.enabled),
    )


def _on(flag: bool) -> str:
    return "on" if flag else "off"
