"""Classify new images with a trained model: ``python -m pipeline.predict PATH... --model resnet50/svm``.

The model is loaded only once its bytes are the ones its record names and it holds
trusted types alone (``load_model``). The backbone is rebuilt from the features metadata
saved with the model (same architecture, weights, transform, batch size, memory format,
precision and decode path as extraction) and checked against the recorded fingerprint, so
a model is never fed embeddings of another backbone. ``--model best`` is the leaderboard's
winning backbone/classifier pair (compare's copy); ``--model svm`` names a classifier when
there is one backbone; a folder (``dvc artifacts get``'s) is a model folder.

Every readable image is classified; each one that cannot be read gets a row with the
reason (an ``error`` column in csv and json), and the command then ends with one
``error:`` line and exit status 2, so a script notices while nothing good is lost.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.cli import EXIT_USER_ERROR, positive_int, run, stage_parser
from pipeline.common.device import resolve_device
from pipeline.common.errors import PipelineError
from pipeline.common.features import BACKBONE_KEYS
from pipeline.data.dataset import IMAGE_SUFFIXES, is_clutter
from pipeline.embed.backbone import Backbone, rebuild_backbone
from pipeline.embed.embedding import Settings, embed_paths
from pipeline.evaluate.calibration import scaled
from pipeline.evaluate.protocol import probability_columns
from pipeline.evaluate.results import SavedModel, load_model, model_path

log = logging.getLogger(__name__)


class PredictError(PipelineError):
    """The model or the images cannot be used for prediction."""


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded recursively to their images (operating-system clutter left out), sorted."""
    out = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            clutter = [p for p in found if is_clutter(p)]
            for p in clutter:
                log.info("skipping operating-system metadata file %s", p)
            out += [p for p in found if not is_clutter(p)]
        elif path.exists():  # a FIFO or a device too: its row says why it is not read
            out.append(path)
        else:
            raise PredictError(f"{path} does not exist.")
    if not out:
        raise PredictError(f"No image files found in {[str(p) for p in paths]}.")
    return out


def backbone_for(meta: dict[str, Any]) -> Backbone:
    """Rebuild exactly the backbone and transform that produced the training features."""
    missing = [key for key in BACKBONE_KEYS if key not in meta]
    if missing:
        raise PredictError(f"This model was trained on features made outside the extract stage (their meta.json "
                           f"lacks {missing}), so predict cannot embed new images the same way; classify their "
                           "embeddings with the model directly (pipeline.evaluate.results.load_model).")
    return rebuild_backbone(meta, where="for prediction")


def predict(files: list[Path], saved: SavedModel, *, device: str, batch_size: int | None) -> pd.DataFrame:
    """Predicted class and class probabilities for each image, in the order of ``files``; an image that
    cannot be read has no prediction and the reason in ``error``."""
    meta = saved.features_meta
    settings = Settings(device=resolve_device(device), precision=meta.get("precision", "fp32"),
                        decode=meta.get("decode", "cpu"), batch_size=batch_size or meta.get("batch_size", 32),
                        num_workers=0, channels_last=meta.get("channels_last", True),
                        pad=meta.get("pad_batches", True))
    backbone = backbone_for(meta)
    failed: dict[int, str] = {}
    X = embed_paths(backbone, files, settings, desc="predict", failed=failed)
    good = [i for i in range(len(files)) if i not in failed]
    proba = saved.model.predict_proba(X) if good else np.empty((0, len(saved.classes)), np.float32)
    table = np.full((len(files), len(saved.classes)), np.nan, dtype=proba.dtype)
    table[good] = proba
    predicted = np.array([""] * len(files), dtype=object)
    predicted[good] = [saved.classes[i] for i in proba.argmax(1)]
    frame = pd.DataFrame({"image": [str(f) for f in files], "predicted": predicted})
    frame = pd.concat([frame, probability_columns(table, saved.classes)], axis=1)
    if saved.temperature is not None:  # the train stage's calibration: same ranking, honest confidence
        calibrated = probability_columns(scaled(table, saved.temperature).astype(table.dtype), saved.classes)
        frame = pd.concat([frame, calibrated.add_prefix("calibrated_")], axis=1)
    frame["error"] = [failed.get(i, "") for i in range(len(files))]
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--model", default="best",
                        help="a trained pair <backbone>/<classifier> (e.g. efficientnet_b1/svm; the classifier alone "
                             "when one backbone has it), 'best' (compare's pick) or a model folder (dvc artifacts get)")
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--best-model", type=Path, default=Path("artifacts/best_model"))
    parser.add_argument("--format", default="table", choices=["table", "csv", "json"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="default: the one used for extraction")
    args = parser.parse_args(argv)

    saved = load_model(model_path(args.model, models_dir=args.models_dir, best=args.best_model))
    log.info("model %s", saved.pair)
    frame = predict(image_files(args.paths), saved, device=args.device, batch_size=args.batch_size)
    bad = frame[frame["error"] != ""]
    if args.format == "csv":
        print(frame.to_csv(index=False), end="")
    elif args.format == "json":
        print(frame.to_json(orient="records", indent=2))
    else:
        good = frame[frame["error"] == ""].drop(columns="error")
        print(f"model: {saved.pair}\n{good.to_string(index=False)}")
        for row in bad.itertuples():
            print(f"{row.image}: not classified, {row.error}")
    if len(bad):
        first = bad.iloc[0]
        print(f"error: {len(bad)} of {len(frame)} image(s) could not be read, e.g. {first['image']} {first['error']}; "
              "every other image is classified above.", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
