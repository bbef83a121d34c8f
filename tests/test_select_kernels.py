"""The compiled k-smallest selection behind the IVF index: numpy's answer, with ties and NaN in a defined order."""

import numpy as np
import pytest

from sklearn.preprocessing import Normalizer

from pipeline.evaluate._select_kernels import smallest_sorted
from pipeline.evaluate.knn import IVFKNeighborsClassifier


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


@pytest.mark.parametrize("layout", ["sliced", "fortran"])
def test_an_array_not_in_c_order_gives_the_same_answer(layout):
    values = np.random.default_rng(3).integers(0, 9, size=(40, 60)).astype(np.float32)
    odd = values[:, ::2] if layout == "sliced" else np.asfortranarray(values)
    found, columns = smallest_sorted(odd, 7)
    expected, expected_columns = reference(np.ascontiguousarray(odd), 7)
    np.testing.assert_array_equal(columns, expected_columns)
    np.testing.assert_array_equal(found, expected)


def test_the_ivf_index_probes_its_lists_nearest_centre_first():
    rng = np.random.default_rng(4)
    X = Normalizer().fit_transform(rng.standard_normal((2000, 16))).astype(np.float32)
    index = IVFKNeighborsClassifier(n_neighbors=5, nprobe=6).fit(X, np.zeros(len(X), dtype=np.int64))
    queries = X[:100]
    probes = index._probe(queries, 6)
    distances = ((queries[:, None, :] - index.centres_[probes]) ** 2).sum(axis=2)
    assert (np.diff(distances, axis=1) >= -1e-5).all()  # float32 rounding aside
    every = ((queries[:, None, :] - index.centres_[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(distances[:, 0], every.min(axis=1), atol=1e-5)


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
