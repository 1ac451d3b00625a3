"""The round loop: broadcast, train every shard, aggregate, redistribute, checkpoint.

The coordinator runs as a Ray actor on the driver's node, so the run folder it writes is on the
machine where the user started the run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ray_iet.aggregation import WeightedAverage
from ray_iet.checkpoint import ShardCheckpoint, latest_round, read_round, round_name, write_round
from ray_iet.config import RunConfig
from ray_iet.data.partition import initial_assignment, redistribute
from ray_iet.diffusion.sampling import save_grid
from ray_iet.resources import ResourceError, ShardResources
from ray_iet.shard import ShardActor
from ray_iet.weights import StateDict

logger = logging.getLogger(__name__)


class Coordinator:
    """Runs the rounds of IET-AGC+ over K shard actors.

    Args:
        config: the validated run configuration; `config.output_dir` must be absolute.
        table: the whole data set as a canonical Arrow table (id, image, ...).
        unet_config: `UNet2DModel.config` of the model to train.
        initial_weights: the round-1 weights (random preset or pretrained).
        scheduler_config: `DDPMScheduler.config` of the noise schedule.
        resources: what each shard actor asks Ray for.
        resume: continue from the run folder's last complete round.
    """

    def __init__(
        self,
        config: RunConfig,
        table: pa.Table,
        unet_config: dict[str, Any],
        initial_weights: StateDict,
        scheduler_config: dict[str, Any],
        resources: ShardResources,
        *,
        resume: bool = False,
    ):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(1)
        self.config = config
        self.table = table
        self.unet = UNet2DModel.from_config(unet_config)
        self.initial_weights = initial_weights
        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.resources = resources
        self.resume = resume
        self.run_dir = config.run_dir
        self.ids = table.column("id").to_numpy()
        self._row_of_id = {int(sample_id): row for row, sample_id in enumerate(self.ids)}
        self.actors: list[Any] = []

    # ----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train every remaining round and export the final model; returns a summary."""
        started = time.perf_counter()
        start_round, weights, ema, shards = self._initial_state()
        self._start_actors(start_round)

        for round_index in range(start_round + 1, self.config.training.rounds + 1):
            weights, ema, shards = self._run_round(round_index, weights, ema, shards)

        final = self._export_final()
        seconds = time.perf_counter() - started
        logger.info("run finished in %.1f s; final model: %s", seconds, final)
        return {"run_dir": str(self.run_dir), "final_model": str(final), "rounds": self.config.training.rounds, "seconds": seconds}

    def _initial_state(self) -> tuple[int, StateDict, StateDict, list[np.ndarray]]:
        completed = latest_round(self.run_dir) if self.resume else None
        if completed is None:
            weights = self.initial_weights
            shards = initial_assignment(self.ids, self.config.training.shards, self.config.seed)
            self._pending_states: list[dict[str, Any]] | None = None
            self._truncate_metrics(0)
            return 0, weights, {k: v.copy() for k, v in weights.items()}, shards
        checkpoint = read_round(self.run_dir, completed)
        if len(checkpoint.shards) != self.config.training.shards:
            raise ValueError(f"the checkpoint has {len(checkpoint.shards)} shards but training.shards is {self.config.training.shards}")
        self._pending_states = checkpoint.shard_states
        self._truncate_metrics(completed)
        logger.info("resuming after %s of %s", round_name(completed), self.run_dir)
        return completed, checkpoint.weights, checkpoint.ema, checkpoint.shards

    def _start_actors(self, start_round: int) -> None:
        unet_config = dict(self.unet.config)
        scheduler_config = dict(self.scheduler.config)
        options = dict(num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus)
        self.actors = [
            ShardActor.options(**options).remote(
                self.config.to_dict(), index, unet_config, scheduler_config, self.resources.torch_threads
            )
            for index in range(self.config.training.shards)
        ]
        try:
            placed = ray.get([actor.ready.remote() for actor in self.actors], timeout=self.config.resources.actor_start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ResourceError(
                f"shard actors asking for {self.resources.num_cpus:g} CPU and {self.resources.num_gpus:g} GPU each were not "
                f"placed within {self.config.resources.actor_start_timeout_s:g} s; the cluster lacks these resources"
            ) from None
        devices = sorted({p["device"] for p in placed})
        logger.info(
            "%d shard actors ready on %s (%g CPU, %g GPU each); batch size %d per shard, %d local epochs per round",
            len(self.actors), ", ".join(devices), self.resources.num_cpus, self.resources.num_gpus,
            self.config.training.batch_size, self.config.training.local_epochs,
        )
        if self._pending_states is not None:
            ray.get([actor.load_state.remote(state) for actor, state in zip(self.actors, self._pending_states)])
            self._pending_states = None

    # ----------------------------------------------------------------------------------------

    def _run_round(
        self, round_index: int, weights: StateDict, ema: StateDict, shards: list[np.ndarray]
    ) -> tuple[StateDict, StateDict, list[np.ndarray]]:
        started = time.perf_counter()

        # Broadcast: one put of the global weights; every actor reads the same object.
        weights_ref, ema_ref = ray.put(weights), ray.put(ema)
        tables = [ray.put(self._shard_table(ids)) for ids in shards]
        calls = [actor.train_round.remote(round_index, weights_ref, ema_ref, table) for actor, table in zip(self.actors, tables)]
        summaries = ray.get([summary for summary, _, _ in calls])

        # Aggregation, streaming: each proxy is added as soon as it arrives, then dropped.
        new_weights, new_ema = self._aggregate(calls, summaries)

        # Redistribution of the most skipped samples to the next shard in the ring.
        skip_counts = {int(i): int(c) for s in summaries for i, c in zip(s["ids"], s["skip_counts"]) if c > 0}
        moves = self.config.msr.moves if self.config.msr.enabled else 0
        new_shards, moved_out = redistribute(shards, skip_counts, moves)
        self._check_partition(new_shards)

        stats = [dict(s["stats"]) for s in summaries]
        for index, row in enumerate(stats):
            row["moved_out"] = moved_out[index]
            row["moved_in"] = moved_out[(index - 1) % len(stats)] if len(stats) > 1 else 0

        checkpoints = (
            ShardCheckpoint(shard=index, state=ray.get(state_ref), ids=summaries[index]["ids"], skip_counts=summaries[index]["skip_counts"])
            for index, (_, _, state_ref) in enumerate(calls)
        )
        write_round(
            self.run_dir, round_index, unet=self.unet, scheduler=self.scheduler, weights=new_weights, ema=new_ema,
            shards=new_shards, shard_checkpoints=checkpoints, info={"shards": stats},
        )
        grid = self._sample_grid(round_index, new_ema if self.config.sampling.use_ema else new_weights)
        self._log_round(round_index, stats, time.perf_counter() - started, grid)
        return new_weights, new_ema, new_shards

    def _aggregate(self, calls: list[Any], summaries: list[dict[str, Any]]) -> tuple[StateDict, StateDict]:
        model_average, ema_average = WeightedAverage(), WeightedAverage()
        pending = {weights_ref: index for index, (_, weights_ref, _) in enumerate(calls)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            proxy = ray.get(ready[0])
            num_examples = summaries[index]["stats"]["samples"]
            model_average.add(proxy["model"], num_examples)
            ema_average.add(proxy["ema"], num_examples)
            del proxy
        return model_average.result(), ema_average.result()

    def _shard_table(self, ids: np.ndarray) -> pa.Table:
        rows = np.fromiter((self._row_of_id[int(i)] for i in ids), dtype=np.int64, count=len(ids))
        return self.table.take(pa.array(rows))

    def _check_partition(self, shards: list[np.ndarray]) -> None:
        merged = np.sort(np.concatenate(shards))
        if not np.array_equal(merged, np.sort(self.ids)):
            raise RuntimeError("redistribution broke the partition: some sample ids are missing or held twice")

    # ----------------------------------------------------------------------------------------

    def _sample_grid(self, round_index: int, weights: StateDict) -> Path:
        sampling = self.config.sampling
        images = ray.get(self.actors[0].sample.remote(ray.put(weights), sampling.num_images, sampling.inference_steps, self.config.seed))
        path = self.run_dir / "samples" / f"{round_name(round_index)}.png"
        save_grid(torch.from_numpy(np.array(images)), path)
        return path

    def _log_round(self, round_index: int, stats: list[dict[str, Any]], seconds: float, grid: Path) -> None:
        header = f"{'shard':>5} {'samples':>7} {'kept':>7} {'augm.':>7} {'skipped':>7} {'out':>4} {'in':>4} {'loss':>7} {'s':>6} {'img/s':>6}"
        lines = [header]
        for row in stats:
            lines.append(
                f"{row['shard']:>5} {row['samples']:>7} {row['kept']:>7} {row['augmented']:>7} {row['skipped']:>7} "
                f"{row['moved_out']:>4} {row['moved_in']:>4} {row['mean_loss']:>7.4f} {row['seconds']:>6.1f} {row['images_per_second']:>6.0f}"
            )
        totals = {key: sum(row[key] for row in stats) for key in ("samples", "visits", "kept", "augmented", "skipped", "moved_out")}
        logger.info("round %d/%d done in %.1f s, samples in %s\n%s", round_index, self.config.training.rounds, seconds, grid, "\n".join(lines))

        with (self.run_dir / "metrics.jsonl").open("a") as handle:
            for row in stats:
                handle.write(json.dumps({"type": "shard", **row}) + "\n")
            handle.write(json.dumps({"type": "round", "round": round_index, "seconds": seconds, "samples_png": str(grid), **totals}) + "\n")

    def _truncate_metrics(self, last_round: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["round"] <= last_round]
        path.write_text("".join(line + "\n" for line in kept))

    def _export_final(self) -> Path:
        """Copy the last round's model (EMA when sampling.use_ema) to run_dir/model."""
        source = self.run_dir / "rounds" / round_name(self.config.training.rounds) / ("model_ema" if self.config.sampling.use_ema else "model")
        target = self.run_dir / "model"
        temporary = self.run_dir / ".tmp-model"
        if temporary.exists():
            shutil.rmtree(temporary)
        shutil.copytree(source, temporary)
        if target.exists():
            shutil.rmtree(target)
        temporary.rename(target)
        return target


CoordinatorActor = ray.remote(num_cpus=0)(Coordinator)
