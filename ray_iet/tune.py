"""Ray Tune search over lambda, R, P, K and local epochs, stopping weak trials early with ASHA.

Each trial is a whole IET-AGC+ run. Its function takes the first bundle of the trial's placement
group and runs the coordinator in-process. The shard actors it creates land in the shard bundles.
After every round the trial evaluates the global model quickly and reports to Tune, with the round
folder as the trial's checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from ray import tune

from ray_iet.checkpoint import latest_round, round_name
from ray_iet.config import EvaluationConfig, RunConfig, build_config, set_dotted

logger = logging.getLogger(__name__)

OBJECTIVE = "objective"


def search_space(config: RunConfig) -> dict[str, Any]:
    """Translate `tune.search_space` into Ray Tune sampling objects keyed by dotted field name."""
    samplers = {"choice": tune.choice, "uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    space = {}
    for key, spec in config.tune.search_space.items():
        kind, values = next(iter(spec.items()))
        space[key] = samplers[kind](values) if kind == "choice" else samplers[kind](*values)
    return space


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_dir: Path) -> RunConfig:
    """Build one trial's config: the base values with the sampled ones, run folder inside the trial folder."""
    values = yaml.safe_load(yaml.safe_dump(base))
    for key, value in params.items():
        set_dotted(values, key, value.item() if isinstance(value, np.generic) else value)
    values["output_dir"] = str(trial_dir)
    values["name"] = "run"
    values["evaluation"]["enabled"] = False
    return build_config(values, "tune trial")


def objective(memorized: float, fid: float, config: RunConfig) -> float:
    """Compute memorized fraction + fid_weight * FID, plus 1 + the relative excess when FID is above max_fid."""
    value = memorized + config.tune.fid_weight * fid
    if config.tune.max_fid is not None and fid > config.tune.max_fid:
        value += 1.0 + (fid - config.tune.max_fid) / config.tune.max_fid
    return value


def largest_shard_count(config: RunConfig) -> int:
    """Return the largest K the search can sample, or training.shards when K is not searched."""
    spec = config.tune.search_space.get("training.shards")
    if spec is None:
        return config.training.shards
    kind, values = next(iter(spec.items()))
    if kind == "randint":
        return int(values[1]) - 1  # tune.randint excludes the upper bound
    return int(max(values))


def shard_bundle(config: RunConfig, cluster: dict[str, float]) -> dict[str, float]:
    """Pick each shard bundle's resources so that a trial with the largest K fits the cluster.

    Raises:
        ResourceError: when even one such trial cannot be placed; Tune would otherwise wait forever.
    """
    from ray_iet.resources import ResourceError

    max_shards = largest_shard_count(config)
    total_cpus, total_gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    spare_cpus = total_cpus - config.tune.coordinator_cpus
    cpus = config.tune.cpus_per_shard
    if cpus is None:
        cpus = 1.0 if spare_cpus >= max_shards else math.floor(spare_cpus / max_shards * 100) / 100
    gpus = config.tune.gpus_per_shard
    if gpus is None:
        gpus = 1.0 if total_gpus >= max_shards else math.floor(total_gpus / max_shards * 100) / 100
    if cpus <= 0 or cpus * max_shards > spare_cpus + 1e-6:
        raise ResourceError(
            f"a trial with {max_shards} shards needs {config.tune.coordinator_cpus:g} + {max_shards} x {cpus:g} CPU but the "
            f"cluster has {total_cpus:g} CPU; lower tune.cpus_per_shard, tune.coordinator_cpus or the largest training.shards"
        )
    if gpus * max_shards > total_gpus + 1e-6:
        raise ResourceError(f"a trial with {max_shards} shards needs {max_shards} x {gpus:g} GPU but the cluster has {total_gpus:g} GPU")
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}


def trial_resources(base: RunConfig, bundle: dict[str, float]):
    """Return the placement group factory: one bundle for the coordinator and one per shard (K may be sampled)."""

    def resources(params: dict[str, Any]) -> tune.PlacementGroupFactory:
        shards = int(params.get("training.shards", base.training.shards))
        return tune.PlacementGroupFactory([{"CPU": base.tune.coordinator_cpus}] + [dict(bundle) for _ in range(shards)])

    return resources


def run_trial(params: dict[str, Any], *, base: dict[str, Any], bundle: dict[str, float]) -> None:
    """Train one configuration as a Tune function trainable, reporting after every round."""
    from ray_iet.coordinator import Coordinator
    from ray_iet.data.sources import decode_images
    from ray_iet.evaluate.run import evaluate_model
    from ray_iet.train import coordinator_arguments, start_run

    trial_dir = Path(tune.get_context().get_trial_dir())
    config = trial_config(base, params, trial_dir)
    config.resources.num_cpus_per_shard = bundle["CPU"]
    config.resources.num_gpus_per_shard = bundle.get("GPU", 0.0)
    resume = _restore_checkpoint(config)
    prepared, resources = start_run(config, resume=resume)
    config = prepared.config
    training_images = decode_images(prepared.table)
    quick = EvaluationConfig(
        num_samples=config.tune.eval_samples, inference_steps=config.tune.eval_inference_steps, k=min(config.evaluation.k, 50), seed=config.evaluation.seed
    )

    def report(round_index: int, folder: Path, stats: list[dict[str, Any]]) -> None:
        from ray_iet.evaluate.run import load_model

        unet, scheduler = load_model(folder / ("model_ema" if config.sampling.use_ema else "model"))
        evaluation = evaluate_model(f"round {round_index}", unet, scheduler, training_images, quick, device="cpu")
        memorized, fid = evaluation.memorization.headline_fraction, evaluation.fid.value
        metrics = {
            "round": round_index,
            OBJECTIVE: objective(memorized, fid, config),
            "memorized_fraction": memorized,
            "d1_d2_fraction": evaluation.memorization.d1_d2_fraction,
            "fid": fid,
            "fid_extractor": evaluation.fid.extractor_name,
            "loss": float(np.mean([row["mean_loss"] for row in stats])),
            "skipped": int(sum(row["skipped"] for row in stats)),
        }
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))

    Coordinator(*coordinator_arguments(prepared, resources), resume=resume, round_callback=report).run()


def _restore_checkpoint(config: RunConfig) -> bool:
    """Put the trial's last Tune checkpoint back into its run folder; True when there was one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as directory:
        source = Path(directory)
        round_index = int(json.loads((source / "round.json").read_text())["round"])
        target = config.run_dir / "rounds" / round_name(round_index)
        if not target.exists():
            shutil.copytree(source, target)
    (config.run_dir / "latest").write_text(round_name(round_index) + "\n")
    return latest_round(config.run_dir) is not None


def run_tune(base: RunConfig) -> dict[str, Any]:
    """Run the search, write best_config.yaml and return the best trial's parameters, metrics and config path."""
    from ray_iet.train import init_ray

    init_ray()
    storage = (base.output_dir / f"{base.name}-tune").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    bundle = shard_bundle(base, ray.cluster_resources())
    logger.info("each trial reserves %g CPU for its coordinator and %s per shard", base.tune.coordinator_cpus, bundle)
    base_values = base.to_dict()
    trainable = tune.with_parameters(run_trial, base=base_values, bundle=bundle)
    scheduler = tune.schedulers.ASHAScheduler(
        time_attr="round", max_t=base.training.rounds, grace_period=min(base.tune.grace_period, base.training.rounds),
        reduction_factor=base.tune.reduction_factor,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(base, bundle)),
        param_space=search_space(base),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode="min", scheduler=scheduler, num_samples=base.tune.num_samples,
            max_concurrent_trials=base.tune.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name="trials", storage_path=str(storage), verbose=1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    results = tuner.fit()
    if results.num_errors == len(results):
        raise RuntimeError(f"every Tune trial failed; the first error: {results.errors[0]}")
    best = best_result(results, base.training.rounds)
    best_path = storage / "best_config.yaml"
    _write_best_config(base_values, best.config, best_path, base.name)
    logger.info("best trial: %s with %s; config written to %s", best.config, {k: best.metrics[k] for k in ("memorized_fraction", "fid", OBJECTIVE)}, best_path)
    return {"best_config": str(best_path), "params": best.config, "metrics": {k: best.metrics.get(k) for k in ("round", "memorized_fraction", "fid", OBJECTIVE)}}


def best_result(results: Any, rounds: int) -> Any:
    """Pick the trial with the lowest final objective among those that trained every round.

    Trials that ASHA stopped early are undertrained, and an undertrained model copies less, so
    it scores a low memorized fraction. Such trials win only when no trial finished.
    """
    reported = [results[index] for index in range(len(results)) if results[index].error is None and results[index].metrics]
    finished = [result for result in reported if result.metrics.get("round") == rounds]
    candidates = finished or reported
    return min(candidates, key=lambda result: result.metrics[OBJECTIVE])


def _write_best_config(base: dict[str, Any], params: dict[str, Any], path: Path, name: str) -> None:
    values = yaml.safe_load(yaml.safe_dump(base))
    for key, value in params.items():
        set_dotted(values, key, value.item() if isinstance(value, np.generic) else value)
    values["name"] = f"{name}-best"
    config = build_config(values, "best Tune trial")
    header = "# Best configuration of a ray-iet Tune search; run it with\n#   python jobs/run_iet.py --config " + str(path) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    Path(handle.name).replace(path)
