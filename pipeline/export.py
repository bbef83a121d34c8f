"""Stage ``export``: the complete torchvision EfficientNet-B1 with the trained linear head as its classifier.

The head was trained on cached embeddings; this puts it back into the network
it came from, so the saved state dict classifies raw images end to end with plain
torchvision (``efficientnet_b1(num_classes=n)``). The backbone is rebuilt from the
``model`` params and must be the one that made the features (same fingerprint).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.common.cli import run, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.io import atomic_path
from pipeline.common.params import DEFAULT_PARAMS, load_section
from pipeline.embed.backbone import BackboneError, build_backbone, full_model_with_head
from pipeline.evaluate.linear_head import LinearHeadClassifier
from pipeline.evaluate.results import load_model


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--model", type=Path, required=True, help="the linear head saved by train@head")
    parser.add_argument("--out", type=Path, required=True, help="state dict of the full torchvision model")
    args = parser.parse_args(argv)

    saved = load_model(args.model)
    if not isinstance(saved.model, LinearHeadClassifier):
        raise PipelineError(f"{args.model} holds a {type(saved.model).__name__}, not the linear head; only the "
                            "head fits into torchvision's network (pass artifacts/models/head.joblib).")
    backbone = build_backbone(load_section("model", args.params))
    if backbone.info["fingerprint"] != saved.features_meta.get("fingerprint"):
        raise BackboneError(f"The backbone built from the model params differs from the one whose features trained "
                            f"{args.model} (fingerprints differ); re-run extract and train (dvc repro).")
    with atomic_path(args.out) as tmp:
        torch.save(full_model_with_head(backbone, saved.model.head_).state_dict(), tmp)
    print(f"{backbone.info['arch']} with the trained head ({len(saved.classes)} classes) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
