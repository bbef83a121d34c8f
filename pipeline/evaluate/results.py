"""Write one trained classifier's results in the layout every classifier shares, and read the model back.

Same metric keys for all, so ``dvc metrics show`` prints one comparable row per
backbone and classifier pair and ``dvc metrics diff`` / ``dvc exp show`` line them up. Every model is
saved the same way (joblib: the fitted estimator, its class names and the metadata
of the features it was trained on), so ``predict`` and ``export`` treat them alike.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import joblib

from pipeline.common.errors import PipelineError
from pipeline.common.io import output_set, writing
from pipeline.evaluate.training import Trained


@dataclasses.dataclass(frozen=True)
class ResultPaths:
    model: Path
    metrics: Path
    predictions: Path
    confusion: Path
    folds: Path
    selection: Path
    out_of_fold: Path | None = None  # train images' grouped out-of-fold probabilities (label_issues reads them)


@dataclasses.dataclass
class SavedModel:
    name: str
    model: Any  # fitted, with predict_proba
    classes: list[str]
    features_meta: dict[str, Any]
    selected: dict[str, Any]
    backbone: str | None = None  # the backbones entry whose features trained it

    @property
    def pair(self) -> str:
        return f"{self.backbone}/{self.name}" if self.backbone else self.name


def write_results(trained: Trained, *, backbone: str, classes: list[str], features_meta: dict[str, Any],
                  paths: ResultPaths) -> None:
    """Model, metrics JSON, predictions CSV, test rows for the confusion plot, CV folds, selection record and
    out-of-fold probabilities: staged together, so a failed write leaves the previous ones whole."""
    evaluation = trained.evaluation
    saved = SavedModel(name=trained.name, model=trained.selection.model, classes=classes,
                       features_meta=features_meta, selected=trained.selection.selected, backbone=backbone)
    test = evaluation.predictions[evaluation.predictions["split"] == "test"]
    with output_set() as out:  # all replace the previous run's together, or none does
        with writing(paths.model):
            joblib.dump(vars(saved), out.path(paths.model))  # not dataclasses.asdict: it deep-copies the model
        out.write_csv(paths.predictions, evaluation.predictions)
        out.write_csv(paths.confusion, test[["image", "true", "predicted"]])
        out.write_csv(paths.folds, evaluation.folds)
        out.write_csv(paths.selection, trained.selection.record)
        if paths.out_of_fold is not None and evaluation.out_of_fold is not None:
            out.write_csv(paths.out_of_fold, evaluation.out_of_fold)
        out.write_json(paths.metrics, {"backbone": backbone, "classifier": trained.name, **evaluation.metrics,
                                       "selected": trained.selection.selected,
                                       "method": trained.selection.method,
                                       "pretrained": features_meta.get("pretrained"),
                                       "fit_seconds": round(trained.fit_seconds, 3)})


def model_path(model: str, *, models_dir: Path, best: Path) -> Path:
    """The joblib file of ``best``, ``<backbone>/<classifier>``, a classifier that one backbone alone has, or a
    path to a file."""
    if model == "best":
        return Path(best)
    if model.endswith(".joblib"):
        return Path(model)
    models_dir = Path(models_dir)
    known = sorted(str(p.relative_to(models_dir).with_suffix("")) for p in models_dir.glob("*/*.joblib"))
    matches = [model] if "/" in model else [k for k in known if k.split("/")[-1] == model]
    if len(matches) > 1:
        raise PipelineError(f"--model {model!r} is trained on several backbones {matches}; name one as "
                            "<backbone>/<classifier>.")
    if not matches or not (models_dir / f"{matches[0]}.joblib").is_file():
        raise PipelineError(f"No model {model!r} in {models_dir} (found {known}); train it first (dvc repro), and "
                            "name it as <backbone>/<classifier>.")
    return models_dir / f"{matches[0]}.joblib"


def load_model(path: Path) -> SavedModel:
    """A model saved by the train stage (or its copy, the best model of compare)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise PipelineError(f"Model file {path} exists but is not a file (a folder or a special file); point at the "
                            "joblib file the train stage wrote.")
    if not path.is_file():
        raise PipelineError(f"Model file {path} not found; run the train stage for it (dvc repro).")
    try:
        saved = joblib.load(path)
        return SavedModel(**saved)
    except Exception as err:  # unpickling raises many kinds for a damaged or foreign file
        raise PipelineError(f"{path} is not a model saved by the train stage ({type(err).__name__}: {err}); "
                            "re-run dvc repro.") from err
