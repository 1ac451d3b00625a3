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
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import ray
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ray_iet.aggregation import WeightedAverage
from ray_iet.checkpoint import ShardCheckpoint, latest_round, read_round, read_shard_state, round_name, shard_folder, write_round
from ray_iet.config import RunConfig
from ray_iet.data.partition import initial_assignment, redistribute
from ray_iet.failures import FailureDecision, RoundRetryPolicy, ShardFailedError, describe
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
        resources: the CPUs and GPUs each shard actor requests from Ray.
        resume: continue from the run folder's last complete round.
        round_callback: called after each round's checkpoint with (round, round folder, shard statistics).
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
        round_callback: Optional[Callable[[int, Path, list[dict[str, Any]]], None]] = None,
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
        self.round_callback = round_callback
        self.run_dir = config.run_dir
        self.ids = table.column("id").to_numpy()
        self._row_of_id = {int(sample_id): row for row, sample_id in enumerate(self.ids)}
        self.actors: list[Any] = []
        self._pending_states: list[dict[str, Any]] | None = None
        self.failure_policy = RoundRetryPolicy(max_retries=config.resources.max_round_retries)

    # ----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train every remaining round and export the final model; returns a summary."""
        started = time.perf_counter()
        start_round, weights, ema, shards = self._initial_state()
        self._start_actors()

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
            self._truncate_metrics(0)
            return 0, weights, {k: v.copy() for k, v in weights.items()}, shards
        checkpoint = read_round(self.run_dir, completed)
        if len(checkpoint.shards) != self.config.training.shards:
            raise ValueError(f"the checkpoint has {len(checkpoint.shards)} shards but training.shards is {self.config.training.shards}")
        self._pending_states = checkpoint.shard_states
        self._truncate_metrics(completed)
        logger.info("resuming after %s of %s", round_name(completed), self.run_dir)
        return completed, checkpoint.weights, checkpoint.ema, checkpoint.shards

    def _start_actors(self) -> None:
        unet_config = dict(self.unet.config)
        scheduler_config = dict(self.scheduler.config)
        options = dict(
            num_cpus=self.resources.num_cpus,
            num_gpus=self.resources.num_gpus,
            max_restarts=self.config.resources.max_round_retries,
            max_task_retries=0,
        )
        self.actors = [
            ShardActor.options(**options, name=shard_actor_name(self.run_dir, index)).remote(
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
        inputs = (ray.put(weights), ray.put(ema))
        tables = [ray.put(self._shard_table(ids)) for ids in shards]
        calls = [actor.train_round.remote(round_index, *inputs, table) for actor, table in zip(self.actors, tables)]

        # Aggregation while shards still train. Proxies are added in shard order, not arrival
        # order, so the float sums (and so a resumed run's weights) do not depend on timing.
        # Only one proxy at a time is in memory.
        model_average, ema_average = WeightedAverage(), WeightedAverage()
        summaries, state_refs = [], []
        for index in range(len(self.actors)):
            summary, proxy, state_ref = self._collect(index, round_index, calls, inputs, tables[index])
            model_average.add(proxy["model"], summary["stats"]["samples"])
            ema_average.add(proxy["ema"], summary["stats"]["samples"])
            del proxy
            summaries.append(summary)
            state_refs.append(state_ref)
        new_weights, new_ema = model_average.result(), ema_average.result()

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
            for index, state_ref in enumerate(state_refs)
        )
        folder = write_round(
            self.run_dir, round_index, unet=self.unet, scheduler=self.scheduler, weights=new_weights, ema=new_ema,
            shards=new_shards, shard_checkpoints=checkpoints, info={"shards": stats},
        )
        grid = self._sample_grid(round_index, new_ema if self.config.sampling.use_ema else new_weights)
        self._log_round(round_index, stats, time.perf_counter() - started, grid)
        if self.round_callback is not None:
            self.round_callback(round_index, folder, stats)
        return new_weights, new_ema, new_shards

    def _collect(self, index: int, round_index: int, calls: list[Any], inputs: tuple[Any, Any], table: Any) -> tuple[dict[str, Any], dict[str, StateDict], Any]:
        """Wait for one shard's round, retrying it from the round's start when the shard fails."""
        failures = 0
        while True:
            summary_ref, proxy_ref, state_ref = calls[index]
            try:
                summary, proxy = ray.get([summary_ref, proxy_ref])
                summary["stats"]["attempts"] = failures + 1
                return summary, proxy, state_ref
            except ray.exceptions.RayError as error:
                failures += 1
                if self.failure_policy.decide(failures) is FailureDecision.RAISE:
                    raise ShardFailedError(
                        f"shard {index} failed in round {round_index} {failures} times, the last time with {describe(error)}; "
                        f"the run stops here and can continue with --resume from its last complete round"
                    ) from error
                logger.warning(
                    "shard %d failed in round %d (attempt %d of %d): %s; restoring the shard's state from the start of the round and retrying",
                    index, round_index, failures, self.failure_policy.max_retries + 1, describe(error),
                )
                self._wait_until_available(index)
                ray.get(self.actors[index].load_state.remote(self._round_start_state(index, round_index)))
                calls[index] = self.actors[index].train_round.remote(round_index, *inputs, table)

    def _wait_until_available(self, index: int) -> None:
        """Block while Ray restarts a killed shard actor; calls in the meantime fail at once."""
        deadline = time.monotonic() + self.config.resources.actor_start_timeout_s
        while True:
            try:
                ray.get(self.actors[index].ready.remote())
                return
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _round_start_state(self, index: int, round_index: int) -> dict[str, Any] | None:
        """Return the shard's state at the start of a round: the previous round's checkpoint, or None (fresh) in round 1."""
        if round_index == 1:
            return None
        return read_shard_state(shard_folder(self.run_dir, round_index - 1, index))

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


def shard_actor_name(run_dir: Path, index: int) -> str:
    """Ray actor name of a shard, unique per run folder, for `ray.get_actor` in tools and tests."""
    return f"ray-iet:{run_dir}:shard_{index:02d}"


CoordinatorActor = ray.remote(num_cpus=0)(Coordinator)
