"""Evaluation report: a Markdown page with PNG pictures, and JSON with the same numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or available on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ray_iet.diffusion.sampling import save_grid  # noqa: E402
from ray_iet.evaluate.metrics import HEADLINE_THRESHOLD  # noqa: E402
from ray_iet.evaluate.run import Evaluation  # noqa: E402


def _fraction_at(evaluation: Evaluation, tau: float) -> float:
    for threshold, fraction in evaluation.memorization.fractions.items():
        if math.isclose(threshold, tau):
            return fraction
    raise KeyError(f"no memorized fraction at tau={tau}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_copies_picture(evaluation: Evaluation, path: Path, count: int) -> None:
    """Top row: the most-copied generations, most memorized first; bottom row: their nearest training images."""
    order = torch.from_numpy(evaluation.memorization.ratios).argsort()[:count]
    nearest = torch.from_numpy(evaluation.memorization.nn_index)[order]
    pairs = torch.cat([evaluation.generated[order], evaluation.training[nearest]])
    save_grid(pairs, path, columns=len(order))


def write_histogram(evaluations: Sequence[Evaluation], path: Path) -> None:
    figure, axes = plt.subplots(1, len(evaluations), figsize=(3.2 * len(evaluations), 2.8), squeeze=False, sharey=True)
    for axis, evaluation in zip(axes[0], evaluations):
        axis.hist(evaluation.memorization.ratios, bins=40, range=(0, 1), color="#4477aa")
        axis.axvline(HEADLINE_THRESHOLD, color="#cc3311", linestyle="--", linewidth=1)
        axis.set_title(evaluation.name, fontsize=10)
        axis.set_xlabel("d1 / mean(d1..dk)")
    axes[0][0].set_ylabel("generated images")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def markdown_table(evaluations: Sequence[Evaluation]) -> str:
    lines = [
        "| model | memorized (ratio < 1/3) | memorized (ratio < 0.5) | d1/d2 < 1/3 | embedding sim. > 0.5 | embedding p95 | FID | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for evaluation in evaluations:
        embedding = evaluation.embedding
        training_seconds = evaluation.extra.get("training_seconds")
        lines.append(
            f"| {evaluation.name} | {_percent(evaluation.memorization.headline_fraction)} | {_percent(_fraction_at(evaluation, 0.5))} "
            f"| {_percent(evaluation.memorization.d1_d2_fraction)} "
            f"| {_percent(embedding.fraction_above_threshold) if embedding else 'n/a'} "
            f"| {f'{embedding.percentile_95:.3f}' if embedding else 'n/a'} "
            f"| {evaluation.fid.value:.3f} | {f'{training_seconds:.0f}' if training_seconds is not None else 'n/a'} |"
        )
    return "\n".join(lines)


def write_report(evaluations: Sequence[Evaluation], folder: Path, *, title: str, notes: str = "", top_copies: int = 8) -> Path:
    """Write report.md, report.json, ratio_histogram.png and copies_<model>.png into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_histogram(evaluations, folder / "ratio_histogram.png")
    for evaluation in evaluations:
        write_copies_picture(evaluation, folder / f"copies_{_slug(evaluation.name)}.png", top_copies)

    extractors = sorted({evaluation.fid.extractor_name for evaluation in evaluations})
    embedders = sorted({e.embedding.embedder_name or "unnamed" for e in evaluations if e.embedding is not None})
    first = evaluations[0]
    lines = [
        f"# {title}",
        "",
        notes,
        "",
        markdown_table(evaluations),
        "",
        f"- {first.memorization.num_generated} generated images per model against {first.num_training_unique} unique training "
        f"images; nearest-neighbour ratio with k = {first.memorization.k} (squared L2 in pixel space, values in [0, 1]).",
        f"- FID feature extractor: {', '.join(extractors)}. FID values from different extractors are not comparable.",
        f"- Embedding metrics: {', '.join(embedders) if embedders else 'not computed (no embedder given)'}.",
        "",
        "## Nearest-neighbour ratio",
        "",
        "![ratio histogram](ratio_histogram.png)",
        "",
        "## Most-copied generations",
        "",
        "Top row: generated images, most memorized (lowest ratio) first. Bottom row: the nearest training image of each.",
        "",
    ]
    for evaluation in evaluations:
        lines += [f"### {evaluation.name}", "", f"![{evaluation.name}](copies_{_slug(evaluation.name)}.png)", ""]
    (folder / "report.md").write_text("\n".join(lines))
    (folder / "report.json").write_text(json.dumps({"title": title, "models": [e.to_dict() for e in evaluations]}, indent=2))
    return folder / "report.md"
