import numpy as np
import pytest

from ray_iet.aggregation import WeightedAverage, weighted_average


def test_weighted_average_of_known_tensors():
    a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([4.0, 8.0], dtype=np.float32)}
    result = weighted_average([a, b], [1, 3])
    np.testing.assert_allclose(result["w"], [(1 + 12) / 4, (2 + 24) / 4])
    assert result["w"].dtype == np.float32


def test_weighted_average_equal_weights_is_mean():
    states = [{"w": np.full((2, 2), float(v))} for v in (1, 2, 6)]
    result = weighted_average(states, [5, 5, 5])
    np.testing.assert_allclose(result["w"], np.full((2, 2), 3.0))


def test_integer_buffers_copied_when_equal():
    a = {"w": np.ones(2, np.float32), "steps": np.array([7], np.int64)}
    b = {"w": np.zeros(2, np.float32), "steps": np.array([7], np.int64)}
    result = weighted_average([a, b], [1, 1])
    assert result["steps"].tolist() == [7]
    assert result["steps"].dtype == np.int64


def test_integer_buffers_that_differ_rejected():
    a = {"steps": np.array([7], np.int64)}
    b = {"steps": np.array([8], np.int64)}
    with pytest.raises(ValueError, match="steps"):
        weighted_average([a, b], [1, 1])


def test_mismatched_keys_rejected():
    with pytest.raises(ValueError, match="missing"):
        weighted_average([{"a": np.ones(1)}, {"b": np.ones(1)}], [1, 1])


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="shape"):
        weighted_average([{"a": np.ones(2)}, {"a": np.ones(3)}], [1, 1])


def test_zero_examples_rejected():
    with pytest.raises(ValueError, match="num_examples"):
        WeightedAverage().add({"a": np.ones(1)}, 0)


def test_empty_average_rejected():
    with pytest.raises(ValueError, match="no proxy"):
        WeightedAverage().result()


def test_streaming_order_does_not_matter():
    rng = np.random.default_rng(0)
    states = [{"w": rng.normal(size=(3, 3)).astype(np.float32)} for _ in range(4)]
    counts = [3, 1, 4, 1]
    forward = weighted_average(states, counts)
    backward = weighted_average(states[::-1], counts[::-1])
    np.testing.assert_allclose(forward["w"], backward["w"], rtol=1e-6)
