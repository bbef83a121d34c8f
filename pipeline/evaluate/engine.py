"""Where the cross-validation fits run: this machine's cores (joblib), or Ray tasks on a cluster.

``cv.engine: ray`` sends each fold's fit (selection included) to the cluster that
``extract.engine: ray`` uses. The arrays go to Ray's object store once and every task
reads them without a copy. Each task runs with the thread count a local joblib worker
would have (the cores divided by the parallel fits), because a floating-point sum
depends on how many threads share it: so the two engines give byte-identical scores.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from joblib import cpu_count, effective_n_jobs
from threadpoolctl import threadpool_limits

from pipeline.common.ray_cluster import connect


def worker_threads(n_jobs: int | None) -> int:
    """Threads of each local joblib worker for ``n_jobs`` (joblib's rule: the cores shared among the workers)."""
    if "OMP_NUM_THREADS" in os.environ:  # joblib passes a limit set by the user on to its workers
        return int(os.environ["OMP_NUM_THREADS"])
    return max(cpu_count() // effective_n_jobs(n_jobs), 1)


def _in_task(function: Callable[..., Any], threads: int, *args: Any) -> Any:
    if "torch" in sys.modules:  # the head's folds (their function's unpickling imported it); the others never load it
        sys.modules["torch"].set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return function(*args)


@dataclasses.dataclass(frozen=True)
class Engine:
    kind: str  # "local" | "ray"
    address: str | None = None
    timeout_s: float = 30.0

    def map(self, function: Callable[..., Any], fit_fold: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
            views: np.ndarray | None, splits: list[tuple[np.ndarray, np.ndarray]], *,
            n_jobs: int | None, beside: Callable[[], Any] | None = None) -> list[Any]:
        """``function(fit_fold, X, y, groups, views, train, test)`` for every split, as Ray tasks, in split order;
        after ``beside()``'s result when it is given (run as one more task, first)."""
        ray = connect(self.address, self.timeout_s, engine_key="cv.engine")
        shared = [ray.put(value) for value in (fit_fold, np.asarray(X), y, groups,
                                               None if views is None else np.asarray(views))]
        task = ray.remote(num_cpus=1)(_in_task)
        threads = worker_threads(n_jobs)
        first = [] if beside is None else [task.remote(beside, threads)]
        return ray.get(first + [task.remote(function, threads, *shared, train, test) for train, test in splits])
