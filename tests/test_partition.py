import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_iet.data.partition import assignment_table, initial_assignment, redistribute, shards_from_table


def _shards(*parts: list[int]) -> list[np.ndarray]:
    return [np.array(part, dtype=np.int64) for part in parts]


def _as_lists(shards: list[np.ndarray]) -> list[list[int]]:
    return [shard.tolist() for shard in shards]


def test_initial_assignment_covers_every_id_once():
    ids = np.arange(103, dtype=np.int64)
    shards = initial_assignment(ids, 4, seed=7)
    combined = np.concatenate(shards)
    assert len(combined) == len(ids)
    assert np.array_equal(np.sort(combined), ids)


def test_initial_assignment_sizes_near_equal():
    shards = initial_assignment(np.arange(103), 4, seed=7)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 103


def test_initial_assignment_shards_sorted():
    for shard in initial_assignment(np.arange(50) * 3, 5, seed=1):
        assert np.array_equal(shard, np.sort(shard))
        assert shard.dtype == np.int64


def test_initial_assignment_deterministic_per_seed():
    first = initial_assignment(np.arange(40), 3, seed=11)
    second = initial_assignment(np.arange(40), 3, seed=11)
    other = initial_assignment(np.arange(40), 3, seed=12)
    assert _as_lists(first) == _as_lists(second)
    assert _as_lists(first) != _as_lists(other)


def test_initial_assignment_one_id_per_shard():
    shards = initial_assignment(np.array([5, 9, 2]), 3, seed=0)
    assert sorted(len(shard) for shard in shards) == [1, 1, 1]


def test_initial_assignment_too_few_ids():
    with pytest.raises(ValueError, match="2 ids into 3 shards"):
        initial_assignment(np.arange(2), 3, seed=0)


def test_initial_assignment_zero_shards():
    with pytest.raises(ValueError, match="num_shards"):
        initial_assignment(np.arange(5), 0, seed=0)


def test_initial_assignment_repeated_ids():
    with pytest.raises(ValueError, match="repeat"):
        initial_assignment(np.array([1, 2, 2, 3]), 2, seed=0)


def test_redistribute_ties_smaller_id_first():
    shards = _shards([1, 2, 3, 4], [10, 11])
    new_shards, moved = redistribute(shards, {4: 2, 2: 2, 3: 2, 1: 1, 10: 1}, 2)
    assert _as_lists(new_shards) == [[1, 4, 10], [2, 3, 11]]
    assert moved == [2, 1]


def test_redistribute_ranks_by_count_desc():
    shards = _shards([1, 2, 3, 4], [10, 11, 12])
    new_shards, _ = redistribute(shards, {1: 1, 2: 5, 3: 3, 4: 2}, 2)
    assert new_shards[1].tolist() == [2, 3, 10, 11, 12]


def test_redistribute_only_skipped_move():
    shards = _shards([1, 2, 3, 4], [10, 11, 12, 13])
    new_shards, moved = redistribute(shards, {2: 1, 11: 0}, 3)
    assert moved == [1, 0]
    assert _as_lists(new_shards) == [[1, 3, 4], [2, 10, 11, 12, 13]]


def test_redistribute_at_most_moves_per_shard():
    shards = _shards(list(range(0, 10)), list(range(10, 20)), list(range(20, 30)))
    counts = {sample: 1 for sample in range(30)}
    new_shards, moved = redistribute(shards, counts, 3)
    assert moved == [3, 3, 3]
    assert [len(shard) for shard in new_shards] == [10, 10, 10]
    assert new_shards[1][:3].tolist() == [0, 1, 2]


def test_redistribute_one_hop_per_round():
    shards = _shards([1, 2], [3, 4], [5, 6])
    counts = {sample: 1 for sample in range(1, 7)}
    new_shards, _ = redistribute(shards, counts, 1)
    # Sample 1 moves from shard 0 to shard 1, and shard 1 gives away 3, not the arriving 1.
    assert _as_lists(new_shards) == [[2, 5], [1, 4], [3, 6]]


def test_redistribute_last_shard_wraps_to_first():
    shards = _shards([1, 2], [3, 4])
    new_shards, moved = redistribute(shards, {3: 1}, 1)
    assert moved == [0, 1]
    assert new_shards[0].tolist() == [1, 2, 3]


def test_redistribute_fraction_floors():
    shards = _shards(list(range(10)), list(range(10, 15)))
    counts = {sample: 1 for sample in range(15)}
    _, moved = redistribute(shards, counts, 0.3)
    assert moved == [3, 1]


def test_redistribute_fraction_absorbs_float_rounding():
    shards = _shards(list(range(100)), [100, 101])
    counts = {sample: 1 for sample in range(100)}
    _, moved = redistribute(shards, counts, 0.29)
    # 0.29 * 100 evaluates to 28.999999999999996 in floating point.
    assert moved[0] == 29


def test_redistribute_zero_moves_disabled():
    shards = _shards([1, 2, 3], [4, 5, 6])
    counts = {sample: 9 for sample in range(1, 7)}
    for moves in (0, 0.0):
        new_shards, moved = redistribute(shards, counts, moves)
        assert moved == [0, 0]
        assert _as_lists(new_shards) == [[1, 2, 3], [4, 5, 6]]


def test_redistribute_single_shard_static():
    new_shards, moved = redistribute(_shards([3, 1, 2]), {1: 5, 2: 5}, 2)
    assert moved == [0]
    assert _as_lists(new_shards) == [[1, 2, 3]]


def test_redistribute_keeps_last_sample():
    shards = _shards([1, 2, 3], [4])
    counts = {sample: 1 for sample in range(1, 5)}
    new_shards, moved = redistribute(shards, counts, 10)
    assert moved == [2, 0]
    assert _as_lists(new_shards) == [[3], [1, 2, 4]]


def test_redistribute_integral_float_counts():
    shards = _shards([1, 2, 3, 4], [5, 6])
    counts = {sample: 1 for sample in range(1, 7)}
    _, moved = redistribute(shards, counts, 2.0)
    assert moved == [2, 1]


def test_redistribute_inputs_unchanged():
    shards = _shards([1, 2, 3], [4, 5])
    redistribute(shards, {1: 1, 4: 1}, 1)
    assert _as_lists(shards) == [[1, 2, 3], [4, 5]]


@pytest.mark.parametrize("moves", [-1, -0.5, 1.5, float("nan"), float("inf"), True, "2"])
def test_redistribute_invalid_moves(moves):
    with pytest.raises(ValueError, match="moves must be an int >= 0 or a float in"):
        redistribute(_shards([1, 2], [3, 4]), {}, moves)


def test_redistribute_invalid_moves_shows_value():
    with pytest.raises(ValueError, match="2.5"):
        redistribute(_shards([1, 2], [3, 4]), {}, 2.5)


def test_redistribute_overlapping_shards():
    with pytest.raises(ValueError, match="repeat"):
        redistribute(_shards([1, 2], [2, 3]), {}, 1)


@st.composite
def _redistribution_cases(draw):
    num_shards = draw(st.integers(min_value=1, max_value=5))
    sizes = draw(st.lists(st.integers(min_value=1, max_value=12), min_size=num_shards, max_size=num_shards))
    ids = draw(
        st.lists(
            st.integers(min_value=-50, max_value=10_000), min_size=sum(sizes), max_size=sum(sizes), unique=True
        )
    )
    shards, start = [], 0
    for size in sizes:
        shards.append(np.sort(np.array(ids[start : start + size], dtype=np.int64)))
        start += size
    counts = draw(st.dictionaries(st.sampled_from(ids), st.integers(min_value=0, max_value=4)))
    moves = draw(
        st.one_of(
            st.integers(min_value=0, max_value=15),
            st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False),
        )
    )
    return shards, counts, moves


def _expected_limit(moves: int | float, size: int) -> int:
    limit = math.floor(moves * size + 1e-9) if isinstance(moves, float) else moves
    return max(0, min(limit, size - 1))


@settings(max_examples=300, deadline=None)
@given(_redistribution_cases())
def test_redistribute_properties(case):
    shards, counts, moves = case
    num_shards = len(shards)
    new_shards, moved_out = redistribute(shards, counts, moves)

    old_owner = {int(sample): index for index, shard in enumerate(shards) for sample in shard}
    new_owner = {int(sample): index for index, shard in enumerate(new_shards) for sample in shard}
    all_new = np.concatenate(new_shards)
    assert len(all_new) == len(old_owner)
    assert set(new_owner) == set(old_owner)

    moved = {sample for sample in old_owner if new_owner[sample] != old_owner[sample]}
    for sample in moved:
        assert counts.get(sample, 0) >= 1
        assert new_owner[sample] == (old_owner[sample] + 1) % num_shards

    for index, shard in enumerate(shards):
        assert np.array_equal(new_shards[index], np.sort(new_shards[index]))
        shard_moved = {int(sample) for sample in shard if int(sample) in moved}
        assert moved_out[index] == len(shard_moved)
        limit = _expected_limit(moves, len(shard))
        assert len(shard_moved) <= limit

        # The moved samples are exactly the top of the (count desc, id asc) ranking of skipped samples.
        skipped = [int(sample) for sample in shard if counts.get(int(sample), 0) >= 1]
        ranking = sorted(skipped, key=lambda sample: (-counts[sample], sample))
        top = set(ranking[:limit]) if num_shards > 1 else set()
        assert shard_moved == top

    for index in range(num_shards):
        received = sum(1 for sample in moved if new_owner[sample] == index)
        assert received == moved_out[(index - 1) % num_shards]


def test_assignment_table_schema():
    table = assignment_table(_shards([5, 1], [3], [0, 9]))
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("shard").type == pa.int32()


def test_assignment_table_sorted_by_id():
    table = assignment_table(_shards([5, 1], [3], [0, 9]))
    assert table.column("id").to_pylist() == [0, 1, 3, 5, 9]
    assert table.column("shard").to_pylist() == [2, 0, 1, 0, 2]


def test_assignment_table_round_trip():
    shards = initial_assignment(np.arange(37) * 2 + 1, 4, seed=3)
    restored = shards_from_table(assignment_table(shards), 4)
    assert _as_lists(restored) == _as_lists(shards)


def test_shards_from_table_empty_shard():
    restored = shards_from_table(assignment_table(_shards([1, 2], [3])), 3)
    assert _as_lists(restored) == [[1, 2], [3], []]


def test_shards_from_table_index_out_of_range():
    table = assignment_table(_shards([1, 2], [3], [4]))
    with pytest.raises(ValueError, match=r"id 4\) has shard 2, outside the valid range 0\.\.1"):
        shards_from_table(table, 2)


def test_shards_from_table_missing_column():
    table = pa.table({"id": pa.array([1, 2], type=pa.int64())})
    with pytest.raises(ValueError, match="no 'shard' column"):
        shards_from_table(table, 1)
