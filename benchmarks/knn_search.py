"""Why kNN's inverted file scans list by list: one neighbour search timed three ways. Makes its own data.

``--rows N [N ...]``: N training rows and N/2 queries of the synthetic 1280-d features that
``train.py`` writes (L2-normalised, as the kNN pipeline normalises them), then the 21 nearest
training rows of every query found by

- exact search, one matrix product (FAISS ``IndexFlatL2``);
- FAISS's own ``IndexIVFFlat`` with the project's lists (about sqrt(N)) and 16 probed;
- the project's ``IVFKNeighborsClassifier`` with the same lists and probes, scanned list by list
  with matrix products;

with the seconds to build and to search, and the recall of the exact neighbours; then, on the blocks
of (queries x a list's rows) that the list-by-list scan scores, the selection of each query's best 21
timed alone: numpy's ``argpartition`` and the chosen scores gathered (what the scan did before
2026-12-03), against the compiled one pass that it uses now, which also sorts them
(``pipeline/evaluate/_select_kernels.py``). The
synthetic rows have no neighbourhood structure (isotropic noise around 4 class centres), so
any inverted file's recall is low here; the cost is what this script compares.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from sklearn.preprocessing import Normalizer

from pipeline.evaluate import knn
from pipeline.evaluate._select_kernels import smallest_sorted
from train import CLASSES, DIM, synthetic_split

K = 21


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", required=True, metavar="N")
    args = parser.parse_args()
    print(f"threads {faiss.omp_get_max_threads()}")
    for rows in args.rows:
        rng = np.random.default_rng(0)
        centres = 0.12 * rng.standard_normal((len(CLASSES), DIM), dtype=np.float32)
        X = Normalizer().fit_transform(synthetic_split(rng, centres, rows, 3, "train")[0]).astype(np.float32)
        queries = Normalizer().fit_transform(synthetic_split(rng, centres, rows // 2, 1, "query")[0]).astype(np.float32)
        lists = knn.ivf_lists(rows)

        start = time.perf_counter()
        flat = faiss.IndexFlatL2(DIM)
        flat.add(X)
        _, exact = flat.search(queries, K)
        print(f"rows={rows:,} queries={len(queries):,} exact (FAISS flat): search {time.perf_counter() - start:.2f} s")

        start = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, lists)
        ivf.cp.seed, ivf.cp.niter = 0, knn.KMEANS_ITERATIONS
        ivf.train(X)
        ivf.add(X)
        ivf.nprobe = knn.PROBES
        built = time.perf_counter() - start
        start = time.perf_counter()
        _, found = ivf.search(queries, K)
        print(f"rows={rows:,} FAISS IndexIVFFlat ({lists} lists, {knn.PROBES} probed): build {built:.2f} s, "
              f"search {time.perf_counter() - start:.2f} s, recall@{K} {knn.recall_of(exact, found):.3f}")

        start = time.perf_counter()
        ours = knn.IVFKNeighborsClassifier(n_neighbors=K).fit(X, np.zeros(rows, dtype=np.int64))
        built = time.perf_counter() - start
        start = time.perf_counter()
        _, found = ours.kneighbors(queries)
        print(f"rows={rows:,} list by list ({lists} lists, {knn.PROBES} probed): build {built:.2f} s, "
              f"search {time.perf_counter() - start:.2f} s, recall@{K} {knn.recall_of(exact, found):.3f}", flush=True)
        numpy_s, compiled_s, elements = selection_seconds(ours, queries)
        print(f"rows={rows:,} selecting each query's best {K} of every probed list ({elements / 1e6:.0f} M scores): "
              f"argpartition {numpy_s:.2f} s, one compiled pass {compiled_s:.2f} s", flush=True)


def selection_seconds(index: knn.IVFKNeighborsClassifier, queries: np.ndarray) -> tuple[float, float, int]:
    """Seconds of the two selections over the blocks the scan scores (the blocks' products not timed)."""
    probes = index._probe(queries, min(knn.PROBES, len(index.bounds_) - 1))
    smallest_sorted(np.zeros((1, K), dtype=np.float32), K)  # compiled (or loaded from its cache) before timing
    numpy_s = compiled_s = 0.0
    elements = 0
    for turn, (low, high, _, _, scores) in enumerate(index.scanned_blocks(queries, probes)):
        if high - low <= K:  # argpartition needs more than K columns (the scan keeps all of such a list)
            continue
        elements += scores.size
        for which in (0, 1) if turn % 2 else (1, 0):  # in turns first, so neither always finds the block in cache
            start = time.perf_counter()
            if which == 0:
                np.take_along_axis(scores, np.argpartition(scores, K - 1, axis=1)[:, :K], axis=1)
                numpy_s += time.perf_counter() - start
            else:
                smallest_sorted(scores, K)
                compiled_s += time.perf_counter() - start
    return numpy_s, compiled_s, elements


if __name__ == "__main__":
    main()
