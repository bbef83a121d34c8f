"""Stage ``learning_curve@<backbone>-<classifier>``: would more pictures help? Grouped-CV accuracy by original pictures.

For each fraction of train's original pictures (``learning_curve`` in params.yaml),
seeded draws of whole pictures, stratified by class, run the classifier's own selection
and grouped CV at that size; the 100% point is the train stage's figure, read from its
metrics file. Reuses the cached embeddings. Writes the curve (a DVC plot: x = pictures,
y = accuracy, with its interval) and a summary with the one-sentence reading and the cost.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.common.cli import run, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.io import output_set, read_json
from pipeline.common.params import load_section
from pipeline.evaluate.learning_curve import curve_points, full_point, learning_curve_scores, reading
from pipeline.evaluate.training import add_pair_arguments, pair_inputs


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    add_pair_arguments(parser)
    parser.add_argument("--metrics", type=Path, required=True, help="the train stage's metrics file (the 100% point)")
    parser.add_argument("--out", type=Path, required=True, help="the curve, one row per point (CSV, a DVC plot)")
    parser.add_argument("--summary", type=Path, required=True, help="the reading and the cost (JSON)")
    args = parser.parse_args(argv)

    params, cv, use_views, engine, device, feats, groups = pair_inputs(args)
    curve = load_section("learning_curve", args.params)
    fix = f"re-run its train stage (dvc repro train@{args.backbone}-{args.classifier})."
    metrics = read_json(args.metrics, what="Metrics file", fix=fix)
    n_pictures = len(np.unique(groups))
    if metrics.get("cv", {}).get("n_groups") != n_pictures:
        raise PipelineError(f"Metrics file {args.metrics} was not made from these {n_pictures} pictures of train; "
                            f"{fix}")

    start = time.perf_counter()
    scores, notes = (learning_curve_scores(args.classifier, params, features=feats, groups=groups, cv=cv,
                                           use_views=use_views, curve=curve, engine=engine, device=device)
                     if curve.enabled else (None, []))
    seconds = time.perf_counter() - start
    full = full_point(args.classifier, metrics, n_images=len(feats["train"].y))
    points = curve_points(args.classifier, scores, full)
    read = reading(points) if curve.enabled else {
        "trend": "off", "sentence": "The learning curve is switched off (learning_curve.enabled: false); "
                                    "only the train stage's point is shown."}
    fits = 0 if scores is None else len(scores)
    with output_set() as out:  # the curve and its summary change together
        out.write_csv(args.out, points)
        out.write_json(args.summary, {"backbone": args.backbone, "classifier": args.classifier, **read,
                                      "enabled": curve.enabled, "fractions": [float(f) for f in points["fraction"]],
                                      "draws": curve.draws, "fold_fits": fits, "seconds": round(seconds, 1),
                                      "notes": notes})  # points skipped, grid values dropped: too few pictures
    print(points.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"learning_curve@{args.backbone}-{args.classifier}: {read['sentence']}")
    print(f"cost: {seconds:.1f} s for {fits} cross-validation folds ({len(curve.below_full) if curve.enabled else 0} "
          f"fraction(s) x {curve.draws if curve.enabled else 0} draw(s), selection nested); the cached embeddings "
          "reused, nothing re-extracted")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
