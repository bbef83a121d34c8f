"""Write one trained classifier's results in the layout every classifier shares, and read the model back.

Same metric keys for all, so ``dvc metrics show`` prints one comparable row per
backbone and classifier pair and ``dvc metrics diff`` / ``dvc exp show`` line them up. Every model is
saved the same way, as a folder: ``model.skops`` (skops.io: the fitted estimator, its class names and the
metadata of the features it was trained on, as data; loading it runs no code of the file's) and ``model.json``,
its record (the file's sha256 and the fingerprint of the backbone whose features trained it). ``load_model``
refuses a file whose bytes or backbone are not the recorded ones, a type outside ``TRUSTED_TYPES``, and any
joblib/pickle file, so ``predict``, ``export`` and ``compare`` treat every model alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import skops.io

from pipeline.common.errors import PipelineError
from pipeline.common.io import file_sha256, output_set, read_json, writing
from pipeline.evaluate.training import Trained

MODEL, RECORD = "model.skops", "model.json"  # a model folder's two files
# The types beyond skops' own trusted ones (builtins, numpy, scipy, scikit-learn's public classes) that our
# models hold. Committed here, never read from a file: loading refuses any other type a file names.
TRUSTED_TYPES = ["pipeline.evaluate.knn.ExactKNeighborsClassifier",
                 "pipeline.evaluate.linear_head.LinearHeadClassifier", "pipeline.evaluate.svm.NewtonLinearSVC",
                 "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"]
RECREATE = "re-create it with dvc repro (the train stage writes artifacts/models/<backbone>/<classifier>/)"


class ModelError(PipelineError):
    """A model file is missing, not the recorded one, or not a model this project may load."""


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
    temperature: float | None = None  # fitted on the grouped out-of-fold probabilities; None: not calibrated

    @property
    def pair(self) -> str:
        return f"{self.backbone}/{self.name}" if self.backbone else self.name


def write_results(trained: Trained, *, backbone: str, classes: list[str], features_meta: dict[str, Any],
                  paths: ResultPaths) -> None:
    """Model, metrics JSON, predictions CSV, test rows for the confusion plot, CV folds, selection record and
    out-of-fold probabilities: staged together, so a failed write leaves the previous ones whole."""
    evaluation = trained.evaluation
    saved = SavedModel(name=trained.name, model=trained.selection.model, classes=classes,
                       features_meta=features_meta, selected=trained.selection.selected, backbone=backbone,
                       temperature=evaluation.metrics.get("calibration", {}).get("temperature"))
    test = evaluation.predictions[evaluation.predictions["split"] == "test"]
    with output_set() as out:  # all replace the previous run's together, or none does
        folder = out.path(paths.model, is_dir=True)
        with writing(paths.model):
            skops.io.dump(vars(saved), folder / MODEL)  # not dataclasses.asdict: it deep-copies the model
            record = {"backbone": backbone, "classifier": trained.name, "sha256": file_sha256(folder / MODEL),
                      "backbone_fingerprint": features_meta.get("fingerprint")}
            (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        out.write_csv(paths.predictions, evaluation.predictions)
        out.write_csv(paths.confusion, test[["image", "true", "predicted"]])
        out.write_csv(paths.folds, evaluation.folds)
        out.write_csv(paths.selection, trained.selection.record)
        if paths.out_of_fold is not None:
            out.write_csv(paths.out_of_fold, evaluation.out_of_fold)
        out.write_json(paths.metrics, {"backbone": backbone, "classifier": trained.name, **evaluation.metrics,
                                       "selected": trained.selection.selected,
                                       "method": trained.selection.method,
                                       "pretrained": features_meta.get("pretrained"),
                                       "fit_seconds": round(trained.fit_seconds, 3)})


def model_path(model: str, *, models_dir: Path, best: Path) -> Path:
    """The model folder of ``best``, ``<backbone>/<classifier>``, a classifier that one backbone alone has, or a
    path to a model folder (or to a file, which ``load_model`` reads or refuses)."""
    if model == "best":
        return Path(best)
    if Path(model).exists():
        return Path(model)
    models_dir = Path(models_dir)
    known = sorted(str(p.parent.relative_to(models_dir)) for p in models_dir.glob(f"*/*/{MODEL}"))
    matches = [model] if "/" in model else [k for k in known if k.split("/")[-1] == model]
    if len(matches) > 1:
        raise ModelError(f"--model {model!r} is trained on several backbones {matches}; name one as "
                         "<backbone>/<classifier>.")
    if not matches or not (models_dir / matches[0] / MODEL).is_file():
        raise ModelError(f"No model {model!r} in {models_dir} (found {known}); train it first (dvc repro), and "
                         "name it as <backbone>/<classifier>.")
    return models_dir / matches[0]


def verified_model(path: Path) -> tuple[Path, dict[str, Any]]:
    """The model file of a model folder (or the file itself) and its record, once its bytes are the recorded ones.

    Reads no more than bytes: a joblib/pickle file (anything but a skops zip) is refused before it is parsed.
    """
    path = Path(path)
    file = path / MODEL if path.is_dir() else path
    if not file.is_file():
        kind = "exists but is not a file" if file.exists() else "not found"
        raise ModelError(f"Model file {file} {kind}: a model is a folder holding {MODEL} and {RECORD}; {RECREATE}.")
    with open(file, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # every skops file is a zip; joblib and pickle files are not
            raise ModelError(f"{file} is not a skops model file (a joblib/pickle file, as older versions wrote, "
                             f"could run code when loaded, so it is never read); {RECREATE}.")
    record = read_json(file.with_name(RECORD), what="Model record", error=ModelError,
                       fix=f"a model is a folder holding {MODEL} and {RECORD}, as train writes it; {RECREATE}.")
    sha = file_sha256(file)
    if not isinstance(record, dict) or record.get("sha256") != sha:
        raise ModelError(f"{file} is not the file its record {file.with_name(RECORD)} names (its sha256 is {sha}, "
                         f"recorded: {record.get('sha256') if isinstance(record, dict) else None}): it was changed "
                         f"or damaged after training; fetch it again or {RECREATE}.")
    return file, record


def load_model(path: Path) -> SavedModel:
    """A model the train stage saved (or compare's copy, the best model), checked against its record: its bytes,
    then the types it holds (skops' trusted ones and ``TRUSTED_TYPES``), then its backbone fingerprint."""
    file, record = verified_model(path)
    try:
        saved = SavedModel(**skops.io.load(file, trusted=TRUSTED_TYPES))
    except Exception as err:  # untrusted types, a damaged zip, a foreign schema alike
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise ModelError(f"{file} is not a model this project loads ({type(err).__name__}: {detail[:300]}); "
                         f"{RECREATE}.") from err
    if record.get("backbone_fingerprint") != saved.features_meta.get("fingerprint"):
        raise ModelError(f"{file} holds features of another backbone than its record names (backbone fingerprints "
                         f"differ); {RECREATE}.")
    return saved
