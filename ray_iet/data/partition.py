"""Assign sample ids to ensemble shards and redistribute them between rounds.

All functions are pure: they take and return numpy arrays of int64 sample ids, one array
per shard, each sorted ascending.

Memory sample redistribution moves the samples that a shard skipped most often in a round
to the next shard in a ring. :func:`redistribute` documents the exact rule.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

# Added before flooring a fraction of a shard size, so float rounding such as
# 0.29 * 100 == 28.999999999999996 still yields 29.
_FRACTION_ROUNDING_SLACK = 1e-9


def initial_assignment(ids: np.ndarray, num_shards: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``ids`` with ``np.random.default_rng(seed)`` and split them into ``num_shards`` parts.

    Part sizes differ by at most 1, and each part is sorted ascending. Raises ValueError if
    ``num_shards`` < 1, if there are fewer ids than shards or if ids repeat.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, numbers.Integral) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    id_array = _as_id_array(ids, "ids")
    if len(id_array) < num_shards:
        raise ValueError(f"cannot split {len(id_array)} ids into {num_shards} shards. Each shard needs at least one id")
    _check_unique(id_array, "ids")

    permuted = np.random.default_rng(seed).permutation(id_array)
    return [np.sort(part) for part in np.array_split(permuted, int(num_shards))]


def redistribute(
    shards: Sequence[np.ndarray],
    skip_counts: Mapping[int, int],
    moves: int | float,
) -> tuple[list[np.ndarray], list[int]]:
    """Move each shard's most skipped samples to the next shard in the ring.

    Shard k ranks its samples by ``skip_counts`` (descending, ties broken by the smaller
    sample id), keeps only samples skipped at least once, and moves the first P of them to
    shard (k + 1) mod K. Ids missing from ``skip_counts`` count as 0. ``moves`` sets P: an
    int >= 0 is a count per shard, and a float in (0, 1) is a fraction of the shard's
    current size n_k, floored. A float >= 1 with an integral value counts as an int. A shard
    keeps at least one sample, so P is capped at n_k - 1, and with one shard nothing moves.
    All moves are computed from the assignment before any move, so a sample moves at most
    one shard per call.

    Returns the new shards, each sorted ascending, and the number of samples moved out of
    each shard. Shard k receives the samples moved out of shard k - 1.
    """
    shard_arrays = [_as_id_array(shard, f"shard {index}") for index, shard in enumerate(shards)]
    if not shard_arrays:
        raise ValueError("shards must not be empty. Pass at least one shard")
    _check_unique(np.concatenate(shard_arrays), "shards")
    count_limit = _parse_moves(moves)

    num_shards = len(shard_arrays)
    if num_shards == 1:
        return [np.sort(shard_arrays[0])], [0]
    moved = [_select_moves(shard, skip_counts, count_limit) for shard in shard_arrays]

    new_shards = []
    for index, shard in enumerate(shard_arrays):
        staying = np.setdiff1d(shard, moved[index], assume_unique=True)
        received = moved[(index - 1) % num_shards]
        new_shards.append(np.sort(np.concatenate([staying, received])))
    return new_shards, [len(selected) for selected in moved]


def assignment_table(shards: Sequence[np.ndarray]) -> pa.Table:
    """Return a table with columns ``id`` (int64) and ``shard`` (int32), sorted by id."""
    shard_arrays = [_as_id_array(shard, f"shard {index}") for index, shard in enumerate(shards)]
    ids = np.concatenate(shard_arrays) if shard_arrays else np.empty(0, dtype=np.int64)
    _check_unique(ids, "shards")
    shard_indices = np.concatenate(
        [np.full(len(shard), index, dtype=np.int32) for index, shard in enumerate(shard_arrays)]
        or [np.empty(0, dtype=np.int32)]
    )

    order = np.argsort(ids, kind="stable")
    return pa.table(
        {
            "id": pa.array(ids[order], type=pa.int64()),
            "shard": pa.array(shard_indices[order], type=pa.int32()),
        }
    )


def shards_from_table(table: pa.Table, num_shards: int) -> list[np.ndarray]:
    """Invert :func:`assignment_table`: return ``num_shards`` sorted id arrays.

    A shard with no rows in the table is returned as an empty array. Raises ValueError if
    a column is missing or contains nulls, or if a shard index is outside [0, num_shards).
    """
    for name in ("id", "shard"):
        if name not in table.column_names:
            raise ValueError(f"assignment table has no {name!r} column. Columns present: {table.column_names}")
        if table.column(name).null_count:
            raise ValueError(f"assignment table column {name!r} contains nulls")
    ids = table.column("id").to_numpy().astype(np.int64)
    shard_indices = table.column("shard").to_numpy().astype(np.int64)

    out_of_range = (shard_indices < 0) | (shard_indices >= num_shards)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"row {row} of the assignment table (id {int(ids[row])}) has shard {int(shard_indices[row])}, "
            f"outside the valid range 0..{num_shards - 1}"
        )
    return [np.sort(ids[shard_indices == index]) for index in range(num_shards)]


def _parse_moves(moves: int | float) -> int | float:
    """Validate ``moves`` and return it as an int count or a float fraction in (0, 1)."""
    allowed = "an int >= 0 or a float in (0, 1) (or an integral float such as 2.0)"
    if isinstance(moves, bool) or not isinstance(moves, numbers.Real):
        raise ValueError(f"moves must be {allowed}, got {moves!r}")
    if isinstance(moves, numbers.Integral):
        if moves < 0:
            raise ValueError(f"moves must be {allowed}, got {moves!r}")
        return int(moves)
    value = float(moves)
    if not math.isfinite(value) or value < 0 or (value >= 1 and not value.is_integer()):
        raise ValueError(f"moves must be {allowed}, got {moves!r}")
    return int(value) if value >= 1 or value == 0 else value


def _select_moves(shard: np.ndarray, skip_counts: Mapping[int, int], moves: int | float) -> np.ndarray:
    """Return the ids that leave ``shard``: the most skipped, ranked by (count desc, id asc)."""
    if isinstance(moves, float):
        limit = math.floor(moves * len(shard) + _FRACTION_ROUNDING_SLACK)
    else:
        limit = moves
    limit = min(limit, len(shard) - 1)
    if limit <= 0:
        return shard[:0]

    counts = np.fromiter((skip_counts.get(int(sample), 0) for sample in shard), dtype=np.int64, count=len(shard))
    skipped = counts >= 1
    candidates, candidate_counts = shard[skipped], counts[skipped]
    # np.lexsort sorts by the last key first: count descending, then id ascending.
    order = np.lexsort((candidates, -candidate_counts))
    return candidates[order[:limit]]


def _as_id_array(values: np.ndarray | Sequence[int], name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer ids, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must contain integer ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_unique(ids: np.ndarray, name: str) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if unique.size != ids.size:
        repeated = unique[counts > 1][:5].tolist()
        raise ValueError(f"{name} must not repeat ids. Repeated ids include {repeated}")
