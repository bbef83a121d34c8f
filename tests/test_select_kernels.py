"""The compiled k-smallest selection behind the IVF index: numpy's answer, with ties and NaN in a defined order."""

import numpy as np
import pytest

from pipeline.evaluate._select_kernels import smallest_sorted


def reference(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (value, column), NaN last, as numpy's stable argsort does; keep the first k."""
    order = np.argsort(values, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(values, order, axis=1), order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", [((50, 300), 21), ((7, 21), 21), ((30, 5), 1), ((1, 1), 1), ((200, 40), 39)])
def test_the_k_smallest_of_each_row_sorted_ties_by_the_smaller_column(dtype, shape, k):
    rng = np.random.default_rng(sum(shape) + k)
    values = rng.integers(0, 12, size=shape).astype(dtype)  # many ties
    values[rng.random(shape) < 0.05] = np.nan
    values[rng.random(shape) < 0.05] = np.inf
    values[rng.random(shape) < 0.05] = -np.inf
    found, columns = smallest_sorted(values, k)
    expected, expected_columns = reference(values, k)
    assert found.dtype == dtype and columns.shape == (shape[0], k)
    np.testing.assert_array_equal(columns, expected_columns)
    np.testing.assert_array_equal(found, expected)  # NaN equals NaN here


def test_distinct_values_give_argpartitions_set_in_sorted_order():
    values = np.random.default_rng(0).standard_normal((300, 1000)).astype(np.float32)
    found, columns = smallest_sorted(values, 21)
    chosen = np.sort(np.argpartition(values, 20, axis=1)[:, :21], axis=1)
    np.testing.assert_array_equal(np.sort(columns, axis=1), chosen)
    assert (np.diff(found, axis=1) > 0).all()


@pytest.mark.parametrize("k", [0, 6])
def test_k_outside_the_columns_is_refused(k):
    with pytest.raises(ValueError, match=f"k={k}"):
        smallest_sorted(np.zeros((3, 5), dtype=np.float32), k)
