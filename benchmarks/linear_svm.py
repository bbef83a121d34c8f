"""The SVM's linear solver above ``exact_max_rows``: ``NewtonLinearSVC`` against scikit-learn's ``LinearSVC(dual=False)``.

Both solve the same problem (squared hinge, L2 penalty, one-vs-rest, intercept penalised) on the
same features: ``--rows`` synthetic training rows (``train.py``'s generator; 51,200 is an outer fold's
training rows at 64,000), L2-normalised, standardised and mapped by scikit-learn's ``Nystroem``
(1,000 components), as the SVM pipeline does. Each solver fits the C grid of ``params.yaml``
(ours from the smallest C upwards, each from the last solution; LinearSVC from zero, as it has no
warm start) on one thread, as a CV fold runs. Prints the seconds per C, the largest difference of
the two solutions' decision values, and their accuracies on held-out rows. No network, no files.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits
from train import CLASSES, DIM, synthetic_split

from pipeline.evaluate.svm import NewtonLinearSVC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=51200)
    parser.add_argument("--C", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = 0.12 * rng.standard_normal((len(CLASSES), DIM), dtype=np.float32)
    X, labels, _, _ = synthetic_split(rng, centres, args.rows + 4000, 3, "train")
    y = np.array([CLASSES.index(c) for c in labels])
    features = make_pipeline(Normalizer(), StandardScaler(), Nystroem(n_components=1000, random_state=0))
    with threadpool_limits(1):
        F = features.fit(X[: args.rows]).transform(X)
        train, held_out = slice(0, args.rows), slice(args.rows, None)
        start = time.perf_counter()
        ours = NewtonLinearSVC().fit_path(F[train], y[train], args.C)
        newton = time.perf_counter() - start
        print(f"{args.rows:,} rows x {F.shape[1]:,} Nystroem features, one thread")
        print(f"NewtonLinearSVC, C path {args.C}: {newton:.1f} s")
        for C, model in zip(args.C, ours):
            start = time.perf_counter()
            theirs = LinearSVC(C=C, dual=False, tol=1e-4, max_iter=1000).fit(F[train], y[train])
            seconds = time.perf_counter() - start
            gap = np.abs(model.decision_function(F[held_out]) - theirs.decision_function(F[held_out])).max()
            print(f"LinearSVC(dual=False) C={C}: {seconds:.1f} s; held-out accuracy ours "
                  f"{model.score(F[held_out], y[held_out]):.4f}, theirs {theirs.score(F[held_out], y[held_out]):.4f}; "
                  f"largest decision-value difference {gap:.2e}", flush=True)


if __name__ == "__main__":
    main()
