"""Round checkpoints in the run folder, written atomically and free of pickled objects.

    rounds/round_0003/
        model/, model_ema/     diffusers DDPMPipeline folders (safetensors)
        shards/shard_00/       state.safetensors (optimizer, memory bank), state.json, skip_counts.parquet
        assignment.parquet     sample id -> shard
        round.json             round number and per-shard statistics; written last
    latest                     name of the last complete round folder

A round is first written under rounds/.tmp-round_0003, then renamed, then `latest` is replaced
through a temporary file and os.replace, so `latest` never names a partial folder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ray_iet.data.partition import assignment_table, shards_from_table
from ray_iet.weights import StateDict, load_numpy_state, load_tensors, save_tensors

WEIGHTS_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"


def round_name(round_index: int) -> str:
    return f"round_{round_index:04d}"


@dataclass
class ShardCheckpoint:
    shard: int
    state: dict[str, Any]
    ids: np.ndarray
    skip_counts: np.ndarray


@dataclass
class RoundCheckpoint:
    round: int
    weights: StateDict
    ema: StateDict
    shards: list[np.ndarray]
    shard_states: list[dict[str, Any]]


def save_pipeline(unet: UNet2DModel, scheduler: DDPMScheduler, weights: StateDict, folder: Path) -> None:
    """Save weights as a DDPMPipeline folder that `DDPMPipeline.from_pretrained` loads without ray-iet."""
    load_numpy_state(unet, weights)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)


def write_round(
    run_dir: Path,
    round_index: int,
    *,
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    weights: StateDict,
    ema: StateDict,
    shards: list[np.ndarray],
    shard_checkpoints: Iterable[ShardCheckpoint],
    info: dict[str, Any],
) -> Path:
    """Write one complete round folder, then point `latest` at it."""
    rounds = run_dir / "rounds"
    final = rounds / round_name(round_index)
    temporary = rounds / f".tmp-{round_name(round_index)}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)

    save_pipeline(unet, scheduler, weights, temporary / "model")
    save_pipeline(unet, scheduler, ema, temporary / "model_ema")
    pq.write_table(assignment_table(shards), temporary / "assignment.parquet")
    for shard in shard_checkpoints:
        _write_shard(temporary / "shards" / f"shard_{shard.shard:02d}", shard)
    (temporary / "round.json").write_text(json.dumps({"round": round_index, "num_shards": len(shards), **info}, indent=2))

    # Only a crash between the rename and the update of `latest` leaves a folder with this name.
    # It is complete but newer than `latest`, so this run replaces it.
    if final.exists():
        shutil.rmtree(final)
    os.rename(temporary, final)
    _replace_text(run_dir / "latest", round_name(round_index) + "\n")
    return final


def _write_shard(folder: Path, shard: ShardCheckpoint) -> None:
    folder.mkdir(parents=True)
    save_tensors(shard.state["tensors"], folder / "state.safetensors")
    (folder / "state.json").write_text(json.dumps(shard.state["meta"], indent=2))
    counts = pa.table({"id": pa.array(shard.ids, pa.int64()), "skip_count": pa.array(shard.skip_counts, pa.int64())})
    pq.write_table(counts, folder / "skip_counts.parquet")


def _replace_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def latest_round(run_dir: Path) -> int | None:
    """Number of the last complete round, or None when the run has none."""
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    folder = run_dir / "rounds" / name
    if not name.startswith("round_") or not (folder / "round.json").is_file():
        raise FileNotFoundError(f"{pointer} names {name!r}, which is not a complete round folder under {run_dir / 'rounds'}")
    return int(name.removeprefix("round_"))


def read_shard_state(folder: Path) -> dict[str, Any]:
    """Optimizer state, memory bank and counters of one shard from its checkpoint folder."""
    return {"tensors": load_tensors(folder / "state.safetensors"), "meta": json.loads((folder / "state.json").read_text())}


def shard_folder(run_dir: Path, round_index: int, shard: int) -> Path:
    return run_dir / "rounds" / round_name(round_index) / "shards" / f"shard_{shard:02d}"


def read_round(run_dir: Path, round_index: int) -> RoundCheckpoint:
    """Load the global weights, the assignment and every shard's state of a complete round."""
    folder = run_dir / "rounds" / round_name(round_index)
    info = json.loads((folder / "round.json").read_text())
    num_shards = int(info["num_shards"])
    shards = shards_from_table(pq.read_table(folder / "assignment.parquet"), num_shards)
    states = [read_shard_state(shard_folder(run_dir, round_index, index)) for index in range(num_shards)]
    return RoundCheckpoint(
        round=round_index,
        weights=load_tensors(folder / "model" / WEIGHTS_FILE),
        ema=load_tensors(folder / "model_ema" / WEIGHTS_FILE),
        shards=shards,
        shard_states=states,
    )
