"""Stage ``cost@<backbone>``: what each of the backbone's pairs costs on this machine, measured on its own.

The backbone: parameters, GFLOPs per image, and images/s of its forward pass in a short timing at extraction's
settings, with the machine's 1-minute load beside it. Each classifier: milliseconds to predict 1,000 embeddings
and its model file's size. compare puts them beside accuracy. Features written by another producer have no
backbone to rebuild: their backbone figures are null.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common import features as features_io
from pipeline.common.cli import run, stage_parser
from pipeline.common.io import write_json
from pipeline.common.params import DEFAULT_PARAMS, classifiers_section, load_section
from pipeline.embed.backbone import rebuild_backbone
from pipeline.embed.cost import backbone_cost, classifier_cost
from pipeline.embed.embedding import resolve_settings
from pipeline.evaluate.results import MODEL, load_model


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--backbone", required=True, help="a key of params.yaml's backbones section")
    parser.add_argument("--features", type=Path, required=True, help="features/<backbone>")
    parser.add_argument("--models-dir", type=Path, required=True, help="artifacts/models/<backbone>")
    parser.add_argument("--out", type=Path, required=True, help="artifacts/cost/<backbone>.json")
    args = parser.parse_args(argv)

    seconds = load_section("cost", args.params).seconds
    features = features_io.load(args.features, mmap=True)
    cost = {"backbone": args.backbone}
    if all(key in features.meta for key in features_io.BACKBONE_KEYS):
        backbone = rebuild_backbone(features.meta, where="to time it")
        cost.update(backbone_cost(backbone, resolve_settings(load_section("extract", args.params)),
                                  seconds=seconds))
    else:
        cost["why"] = "features written by another producer: no backbone to rebuild and time"
    X = features["train"].X
    cost["classifiers"] = {}
    for name in classifiers_section(args.params):
        saved = load_model(args.models_dir / name)
        cost["classifiers"][name] = {"ms_per_1000": classifier_cost(saved.model.predict_proba, X, seconds=seconds / 4),
                                     "model_bytes": (args.models_dir / name / MODEL).stat().st_size}
    write_json(args.out, cost)
    print(f"{args.backbone}: {cost.get('gflops', float('nan')):.2f} GFLOPs/image, "
          f"{cost.get('images_per_second', float('nan')):.1f} images/s (load {cost.get('load_average')}); "
          + ", ".join(f"{k} {v['ms_per_1000']:.2f} ms/1000" for k, v in cost["classifiers"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
