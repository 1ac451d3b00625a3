"""Resources each shard actor requests from Ray, checked against the cluster before any actor starts.

An actor whose request the cluster can never satisfy stays pending forever in Ray without an
error, so an impossible request is rejected here with the resource named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional


class ResourceError(RuntimeError):
    """The cluster cannot place the shard actors; the message names the resource and the fix."""


@dataclass(frozen=True)
class ShardResources:
    num_cpus: float
    num_gpus: float

    @property
    def torch_threads(self) -> int:
        return max(1, math.floor(self.num_cpus))


def _floor_share(total: float, parts: int) -> float:
    # Ray accepts fractional resources in steps of 1e-4.
    return math.floor(total / parts * 1e4) / 1e4


def resolve_shard_resources(
    cluster: Mapping[str, float], num_shards: int, *, num_cpus: Optional[float] = None, num_gpus: Optional[float] = None
) -> ShardResources:
    """Pick per-shard CPUs and GPUs (defaults from the cluster) and check that K shards fit.

    Defaults: one GPU per shard with at least K GPUs, an equal share of the GPUs with fewer, and
    none without GPUs. The CPUs are divided equally between the shards.

    NOTE: checks the resources the cluster has now. An autoscaling cluster that would add nodes on
    demand needs explicit per-shard values, and those are still checked against current totals.
    """
    total_cpus = float(cluster.get("CPU", 0))
    total_gpus = float(cluster.get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1.0 if total_gpus >= num_shards else _floor_share(total_gpus, num_shards)
    if num_cpus is None:
        num_cpus = _floor_share(total_cpus, num_shards)
        if num_cpus <= 0:
            raise ResourceError(f"the cluster has {total_cpus:g} CPU for {num_shards} shards; lower training.shards")
    if num_gpus > 1 and not float(num_gpus).is_integer():
        raise ResourceError(f"resources.num_gpus_per_shard={num_gpus}: Ray accepts fractions only below 1 GPU; use a whole number")

    for name, each, total in (("GPU", num_gpus, total_gpus), ("CPU", num_cpus, total_cpus)):
        needed = each * num_shards
        if needed > total + 1e-6:
            field = "num_gpus_per_shard" if name == "GPU" else "num_cpus_per_shard"
            raise ResourceError(
                f"{num_shards} shards x {each:g} {name} = {needed:g} {name} requested, but the cluster has "
                f"{total:g} {name}; lower resources.{field} or training.shards, or add nodes with {name}"
            )
    return ShardResources(num_cpus=float(num_cpus), num_gpus=float(num_gpus))
