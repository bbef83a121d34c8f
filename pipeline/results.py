"""Write one classifier's results in the layout every classifier shares.

Same metric keys for all, so ``dvc metrics show`` prints one comparable row per
classifier and ``dvc metrics diff`` / ``dvc exp show`` line them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.atomic import write_csv, write_json
from pipeline.protocol import Evaluation


def write_results(evaluation: Evaluation, *, name: str, fit_seconds: float, pretrained: Any,
                  selected: dict[str, Any], metrics: Path, predictions: Path, confusion: Path,
                  folds: Path) -> None:
    """Metrics JSON, predictions CSV, test-set confusion rows (for dvc plots) and CV folds."""
    write_csv(predictions, evaluation.predictions)
    test = evaluation.predictions[evaluation.predictions["split"] == "test"]
    write_csv(confusion, test[["image", "true", "predicted"]])
    write_csv(folds, evaluation.folds)
    write_json(metrics, {"classifier": name, **evaluation.metrics, "selected": selected,
                         "pretrained": pretrained, "fit_seconds": round(fit_seconds, 3)})


def add_output_args(parser: Any) -> None:
    """The output paths every classifier stage takes (defaults: ``default_outputs``)."""
    for flag, help_ in [("--metrics", "metrics JSON"), ("--predictions", "per-image predictions CSV"),
                        ("--confusion", "test rows for the confusion plot"), ("--folds", "per-fold CV scores")]:
        parser.add_argument(flag, type=Path, default=None,
                            help=f"{help_} (default: under artifacts/, named after the classifier)")


def default_outputs(args: Any, name: str) -> dict[str, Path]:
    defaults = {"metrics": Path(f"artifacts/metrics/{name}.json"),
                "predictions": Path(f"artifacts/predictions/{name}.csv"),
                "confusion": Path(f"artifacts/plots/confusion/{name}.csv"),
                "folds": Path(f"artifacts/cv/{name}.csv")}
    return {k: getattr(args, k) or v for k, v in defaults.items()}
