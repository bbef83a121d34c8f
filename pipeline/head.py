"""Stage ``head``: the transfer-learning recipe's linear head, trained on cached embeddings.

Early stopping on valid picks the number of epochs; cross-validation then trains
that many epochs on each grouped fold. Saves the head and, when ``--full-model``
is given, a complete ``efficientnet_b1(num_classes=n)`` state dict with the head
as its classifier, which classifies raw images end to end.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.base import clone

from pipeline import features as features_io
from pipeline.atomic import atomic_path, write_csv
from pipeline.backbone import BackboneError, build_backbone, full_model_with_head
from pipeline.errors import run_cli
from pipeline.linear_head import LinearHeadClassifier
from pipeline.params import DEFAULT_PARAMS, load_section
from pipeline.protocol import evaluate_classifier, load_groups, with_views
from pipeline.results import add_output_args, default_outputs, write_results

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--features", type=Path, default=Path("features"))
    parser.add_argument("--groups", type=Path, default=Path("artifacts/data/groups.csv"))
    parser.add_argument("--manifest", type=Path, default=None,
                        help="refuse features not extracted from this manifest (dvc.yaml passes it)")
    parser.add_argument("--head-out", type=Path, default=Path("artifacts/models/head.pt"))
    parser.add_argument("--full-model", type=Path, default=None,
                        help="also save the full torchvision model (needs the backbone of model params)")
    parser.add_argument("--history", type=Path, default=Path("artifacts/plots/head_history.csv"))
    add_output_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_section("head", args.params)
    cv = load_section("cv", args.params)
    evaluation_params = load_section("evaluation", args.params)
    feats = features_io.load(args.features, manifest=args.manifest)
    train, valid = feats["train"], feats["valid"]
    groups = load_groups(args.groups, train.paths)

    start = time.perf_counter()
    model = LinearHeadClassifier(n_classes=len(feats.classes), dropout=params.dropout, lr=params.lr,
                                 weight_decay=params.weight_decay, batch_size=params.batch_size,
                                 max_epochs=params.max_epochs, patience=params.patience, seed=params.seed)
    views = train.views if load_section("views", args.params).use else None
    X, y, _ = with_views(train.X, train.y, groups, views)
    model.fit(X, y, X_valid=valid.X, y_valid=valid.y)
    fit_seconds = time.perf_counter() - start
    fixed = clone(model).set_params(max_epochs=model.best_epoch_)

    def fit_fold(X, y, g):
        return clone(fixed).fit(X, y)

    evaluation = evaluate_classifier(model=model, fit_fold=fit_fold, fit_fixed=fit_fold, features=feats,
                                     groups=groups, cv=cv, evaluation=evaluation_params, views=views)

    with atomic_path(args.head_out) as tmp:
        torch.save({"state_dict": model.head_.state_dict(), "classes": feats.classes,
                    "dropout": params.dropout, "features_meta": feats.meta}, tmp)
    if args.full_model is not None:
        backbone = build_backbone(load_section("model", args.params))
        if backbone.info["fingerprint"] != feats.meta.get("fingerprint"):
            raise BackboneError(f"The backbone built from model params differs from the one that made "
                                f"{args.features} (fingerprints differ); re-run extract (dvc repro).")
        with atomic_path(args.full_model) as tmp:
            torch.save(full_model_with_head(backbone, model.head_).state_dict(), tmp)
    write_csv(args.history, pd.DataFrame(model.history_))
    write_results(evaluation, name="head", fit_seconds=fit_seconds, pretrained=feats.meta.get("pretrained"),
                  selected={"epochs": model.best_epoch_}, **default_outputs(args, "head"))
    m = evaluation.metrics
    print(f"head: {model.best_epoch_} epochs; grouped CV accuracy {m['cv']['accuracy_mean']:.3f} "
          f"(leaky {m['cv_leaky']['accuracy_mean']:.3f}), test {m['test']['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
