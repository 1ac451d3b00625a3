"""Weighted averaging of proxy models (FedAvg weighting by the number of samples each shard trained on).

Weights travel as dicts of numpy arrays: they go through Ray's object store without copies.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ray_iet.weights import StateDict


class WeightedAverage:
    """Running weighted average of state dicts, fed one proxy model at a time.

    theta = sum_k (n_k / sum_j n_j) * theta_k for floating-point tensors. Integer and boolean
    tensors (step counters, for example) must be equal in every proxy and are copied. Memory stays
    at one accumulator plus the state dict being added, whatever the number of shards.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] | None = None
        self._exact: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.total_examples = 0
        self.num_models = 0

    def add(self, state: Mapping[str, np.ndarray], num_examples: int) -> None:
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        sums = self._sums if self._sums is not None else self._start(state)
        self._check_keys(state)
        for key, value in state.items():
            if key in self._exact:
                if not np.array_equal(self._exact[key], value):
                    raise ValueError(f"non-floating tensor {key!r} differs between proxy models; it cannot be averaged")
            else:
                sums[key] += np.asarray(value, dtype=np.float64) * num_examples
        self.total_examples += num_examples
        self.num_models += 1

    def result(self) -> StateDict:
        if self._sums is None:
            raise ValueError("no proxy model was added to the average")
        averaged = {key: (total / self.total_examples).astype(self._dtypes[key]) for key, total in self._sums.items()}
        averaged.update({key: value.copy() for key, value in self._exact.items()})
        return averaged

    def _start(self, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._sums = {}
        for key, value in state.items():
            value = np.asarray(value)
            self._dtypes[key] = value.dtype
            if np.issubdtype(value.dtype, np.floating):
                self._sums[key] = np.zeros(value.shape, dtype=np.float64)
            else:
                self._exact[key] = value.copy()
        return self._sums

    def _check_keys(self, state: Mapping[str, np.ndarray]) -> None:
        expected = set(self._dtypes)
        if set(state) != expected:
            missing = sorted(expected - set(state))[:5]
            extra = sorted(set(state) - expected)[:5]
            raise ValueError(f"proxy model keys do not match the first model: missing {missing}, unexpected {extra}")
        for key, value in state.items():
            reference = self._exact[key] if key in self._exact else self._sums[key]  # type: ignore[index]
            if np.shape(value) != reference.shape:
                raise ValueError(f"tensor {key!r} has shape {np.shape(value)}, expected {reference.shape}")


def weighted_average(states: list[Mapping[str, np.ndarray]], num_examples: list[int]) -> StateDict:
    """Average state dicts weighted by num_examples (see WeightedAverage)."""
    if len(states) != len(num_examples):
        raise ValueError(f"{len(states)} state dicts but {len(num_examples)} example counts")
    average = WeightedAverage()
    for state, count in zip(states, num_examples):
        average.add(state, count)
    return average.result()
