"""The SVM's Nystroem map against scikit-learn's: fit and transform times on one thread.

12,800 rows of 1280 non-negative float32 features (an outer fold's training rows at 16,000), 1,000
components, each timed on its second run. No network, no files.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.kernel_approximation import Nystroem
from threadpoolctl import threadpool_limits

from pipeline.evaluate.svm import RBFNystroem


def main() -> None:
    X = np.maximum(np.random.default_rng(0).standard_normal((12800, 1280), dtype=np.float32), 0)
    with threadpool_limits(1):
        for name, make in [("scikit-learn Nystroem", Nystroem), ("RBFNystroem", RBFNystroem)]:
            for _ in range(2):
                start = time.perf_counter()
                fitted = make(n_components=1000, random_state=0).fit(X)
                fit = time.perf_counter() - start
                start = time.perf_counter()
                fitted.transform(X)
                transform = time.perf_counter() - start
            print(f"{name}: fit {fit:.2f} s, transform of {len(X):,} rows {transform:.2f} s")


if __name__ == "__main__":
    main()
