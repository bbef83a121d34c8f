"""kNN's exact neighbour search: FAISS's brute-force ``knn`` (what ``pipeline/evaluate/knn.py`` uses) against
scikit-learn's brute-force ``NearestNeighbors``. Makes its own data.

``--rows N [N ...]``: N training rows and N/2 queries of the synthetic 1280-d features that ``train.py``
writes, L2-normalised as the kNN pipeline normalises them (34,000 is an inner fold's training rows at
64,000), the 21 nearest training rows of every query found both ways on one thread (as a CV fold
runs), with the seconds of each and how often the two agree. Both are exact; FAISS computes in
float32, scikit-learn in float64, so rows at equal distances to float32 rounding may come in another order.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import Normalizer
from threadpoolctl import threadpool_limits
from train import CLASSES, DIM, synthetic_split

from pipeline.evaluate.knn import neighbours

K = 21


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", required=True, metavar="N")
    args = parser.parse_args()
    for rows in args.rows:
        rng = np.random.default_rng(0)
        centres = 0.12 * rng.standard_normal((len(CLASSES), DIM), dtype=np.float32)
        X = Normalizer().fit_transform(synthetic_split(rng, centres, rows + rows // 2, 3, "train")[0])
        fit, query = X[:rows], X[rows:]
        with threadpool_limits(1):
            start = time.perf_counter()
            dist, found = neighbours(fit, query, K)
            ours = time.perf_counter() - start
            start = time.perf_counter()
            their_dist, theirs = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(fit).kneighbors(query)
            sklearn_seconds = time.perf_counter() - start
        same = (np.sort(found, axis=1) == np.sort(theirs, axis=1)).mean()
        print(f"{rows:,} rows, {len(query):,} queries, k={K}, one thread: FAISS knn {ours:.1f} s, scikit-learn "
              f"{sklearn_seconds:.1f} s ({sklearn_seconds / ours:.1f}x); the same neighbours at {same:.5f} of the "
              f"places, distances within {np.abs(dist - their_dist).max():.1e}", flush=True)


if __name__ == "__main__":
    main()
