"""Stage ``export@<backbone>``: the backbone's library network with the trained linear head as its classifier.

The head was trained on cached embeddings; this puts it back into the network
it came from, so the saved state dict (safetensors: tensors only, no pickle)
classifies raw images end to end with the library alone: torchvision's
``get_model(arch, num_classes=n)`` or timm's ``create_model(name, num_classes=n)``.
An ``exported`` backbone is the user's own file, with no library network to hold
the head: the head's state dict is saved alone (``Dropout`` + ``Linear``), to put
after that file. The backbone is rebuilt from its ``backbones`` entry and must be
the one that made the features (same fingerprint).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from pipeline.common.cli import run, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.io import atomic_path
from pipeline.common.params import BACKBONES_SECTION, DEFAULT_PARAMS, backbones_section, entry_of
from pipeline.embed.backbone import SOURCES, BackboneError, build_backbone, full_model_with_head, parse_backbone
from pipeline.evaluate.linear_head import LinearHeadClassifier
from pipeline.evaluate.results import load_model, model_path


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--model", default="best",
                        help="a linear head: its folder, <backbone>/head, or 'best' (compare's pick, if it is a head)")
    parser.add_argument("--models-dir", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--best-model", type=Path, default=Path("artifacts/best_model"))
    parser.add_argument("--out", type=Path, required=True,
                        help="state dict (safetensors) of the full model, or of the head alone")
    args = parser.parse_args(argv)

    saved = load_model(model_path(args.model, models_dir=args.models_dir, best=args.best_model))
    if not isinstance(saved.model, LinearHeadClassifier):
        raise PipelineError(f"{args.model} holds a {type(saved.model).__name__}, not the linear head; only the "
                            "head fits into the backbone's network (pass artifacts/models/<backbone>/head).")
    name = saved.features_meta.get("backbone")
    if not name:
        raise PipelineError(f"{args.model} was trained on features without a backbone record (made outside the "
                            "extract stage); there is no network to export it into.")
    entry = parse_backbone(name, entry_of(backbones_section(args.params), name, section_name=BACKBONES_SECTION,
                                          path=args.params))
    backbone = build_backbone(name, entry)
    if backbone.info["fingerprint"] != saved.features_meta.get("fingerprint"):
        raise BackboneError(f"The backbone built from {BACKBONES_SECTION}.{name} differs from the one whose features "
                            f"trained {args.model} (fingerprints differ); re-run extract and train (dvc repro).")
    full = SOURCES[entry.source].exports_full_model
    with atomic_path(args.out) as tmp:
        module = full_model_with_head(backbone, saved.model.head_) if full else saved.model.head_
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp)
    what = f"{backbone.info['arch']} with the trained head" if full else "the trained head alone (exported backbone)"
    print(f"{name}: {what} ({len(saved.classes)} classes) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
