"""Train the method's variants on the same data, seed and sample visits, evaluate each, write one report.

Every variant trains `rounds x local_epochs` epochs over the whole data set: plain training
does it with one shard, the ensembles split the same visits over K shards.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ray_iet.config import RunConfig
from ray_iet.evaluate.report import write_report
from ray_iet.evaluate.run import Evaluation, evaluate_model, load_model

logger = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "plain": {"training": {"shards": 1}, "agc": {"enabled": False, "augment": False}, "msr": {"enabled": False}},
    "iet": {"agc": {"enabled": False, "augment": False}, "msr": {"enabled": False}},
    "iet-agc": {"agc": {"enabled": True, "augment": False}, "msr": {"enabled": False}},
    "iet-agc+": {"agc": {"enabled": True, "augment": True}, "msr": {"enabled": True}},
}


def variant_config(base: RunConfig, variant: str) -> RunConfig:
    """Derive a variant's config: the base config with the variant's switches and its own run name."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    values = base.to_dict()
    for section, overrides in VARIANTS[variant].items():
        values[section].update(overrides)
    values["name"] = f"{base.name}-{variant}"
    values["evaluation"]["enabled"] = False
    return RunConfig.model_validate(values)


def compare(base: RunConfig, variants: Sequence[str] = tuple(VARIANTS)) -> dict[str, Any]:
    """Train and evaluate each variant; returns the report path and every variant's numbers."""
    from ray_iet.train import load_data, train  # imports Ray; kept out of module import

    configs = [variant_config(base, variant) for variant in variants]
    training_images = None
    evaluations: list[Evaluation] = []
    for variant, config in zip(variants, configs):
        logger.info("training variant %s (%s)", variant, config.name)
        started = time.perf_counter()
        summary = train(config)
        training_seconds = time.perf_counter() - started
        if training_images is None:
            from ray_iet.data.sources import decode_images

            training_images = decode_images(load_data(config))
        unet, scheduler = load_model(Path(summary["run_dir"]))
        evaluation = evaluate_model(variant, unet, scheduler, training_images, base.evaluation)
        evaluation.extra.update(training_seconds=training_seconds, run_dir=summary["run_dir"])
        evaluations.append(evaluation)

    folder = base.output_dir.resolve() / f"{base.name}-compare"
    report = write_report(evaluations, folder, title=f"Memorization and quality: {base.name}", notes=_notes(base), top_copies=base.evaluation.top_copies)
    logger.info("comparison report: %s", report)
    return {"report": str(report), "models": [evaluation.to_dict() for evaluation in evaluations]}


def _notes(base: RunConfig) -> str:
    training = base.training
    return (
        f"Every model trained {training.rounds} rounds x {training.local_epochs} local epochs over the same "
        f"{base.data.source} data (seed {base.seed}); ensembles use {training.shards} shards. "
        f"lambda = {base.agc.skip_threshold}, R = {base.agc.augment_factor}, P = {base.msr.moves}."
    )
