"""Classify new images with a trained model: ``python -m pipeline.predict PATH... --model svm``.

The backbone is rebuilt from the features metadata saved with the model (same
architecture, weights, transform, batch size, memory format, precision and decode
path as extraction) and checked by fingerprint, so a model is never fed embeddings of
another backbone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import torch

from pipeline.backbone import BackboneError, build_backbone
from pipeline.dataset import IMAGE_SUFFIXES
from pipeline.embedding import iter_embeddings, resolve_device
from pipeline.errors import PipelineError, run_cli
from pipeline.linear_head import LinearHeadClassifier, make_head
from pipeline.params import ModelParams

MODELS = ("head", "logreg", "svm", "knn")


class PredictError(PipelineError):
    """The model or the images cannot be used for prediction."""


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded recursively to their images, sorted."""
    out = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            out.append(path)
        else:
            raise PredictError(f"{path} does not exist.")
    if not out:
        raise PredictError(f"No image files found in {[str(p) for p in paths]}.")
    return out


def best_model(comparison: Path) -> str:
    if not comparison.is_file():
        raise PredictError(f"--model best needs {comparison}; run the compare stage first.")
    return str(pd.read_csv(comparison).sort_values("rank")["classifier"].iloc[0])


def load_classifier(name: str, models_dir: Path) -> tuple[Any, list[str], dict[str, Any]]:
    """A fitted classifier with ``predict_proba``, its class names and its features metadata."""
    if name == "head":
        path = models_dir / "head.pt"
        if not path.is_file():
            raise PredictError(f"{path} not found; run the head stage first.")
        saved = torch.load(path, weights_only=True)
        head = make_head(saved["features_meta"]["feature_dim"], len(saved["classes"]), saved["dropout"])
        head.load_state_dict(saved["state_dict"])
        return LinearHeadClassifier.from_head(head), saved["classes"], saved["features_meta"]
    path = models_dir / f"{name}.joblib"
    if not path.is_file():
        raise PredictError(f"{path} not found; run the classical@{name} stage first.")
    saved = joblib.load(path)
    return saved["model"], saved["classes"], saved["features_meta"]


def backbone_for(meta: dict[str, Any]):
    """Rebuild exactly the backbone and transform that produced the training features."""
    params = ModelParams(arch=meta["arch"], weights=None if meta.get("checkpoint") else meta["weights"],
                         checkpoint=meta.get("checkpoint"), init_seed=meta.get("init_seed") or 0)
    t = meta["transform"]
    backbone = build_backbone(params, crop_size=t["crop_size"][0], resize_size=t["resize_size"][0])
    if backbone.info["fingerprint"] != meta["fingerprint"] or backbone.info["transform"] != t:
        raise BackboneError("The backbone rebuilt for prediction differs from the one the model was trained on "
                            f"(weights or transform changed: {meta.get('weights')!r}, {meta.get('checkpoint')!r}); "
                            "re-run dvc repro, or restore the original weights file.")
    return backbone


def predict(paths: list[Path], *, model_name: str, models_dir: Path, device: str = "auto",
            batch_size: int | None = None) -> pd.DataFrame:
    """Predicted class and class probabilities for each image, in the order of ``paths``."""
    files = image_files(paths)
    classifier, classes, meta = load_classifier(model_name, models_dir)
    backbone = backbone_for(meta)
    torch_device = resolve_device(device)
    X = np.concatenate(list(iter_embeddings(
        backbone, files, batch_size=batch_size or meta.get("batch_size", 32), num_workers=0, device=torch_device,
        channels_last=meta.get("channels_last", True), precision=meta.get("precision", "fp32"),
        decode=meta.get("decode", "cpu"), desc="predict")))
    proba = classifier.predict_proba(X)
    frame = pd.DataFrame({"image": [str(f) for f in files], "predicted": [classes[i] for i in proba.argmax(1)]})
    return pd.concat([frame, pd.DataFrame(proba, columns=[f"p_{c}" for c in classes]).round(6)], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--model", default="best", choices=[*MODELS, "best"])
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--comparison", type=Path, default=Path("artifacts/comparison.csv"))
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the one used for extraction")
    args = parser.parse_args(argv)
    name = best_model(args.comparison) if args.model == "best" else args.model
    frame = predict(args.paths, model_name=name, models_dir=args.models_dir, device=args.device,
                    batch_size=args.batch_size)
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", indent=2))
    else:
        print(f"model: {name}\n{frame.to_string(index=False)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
