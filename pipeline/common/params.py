"""Typed, validated views of ``params.yaml``.

Each stage reads only its own sections. Validation happens here, once, at the
edge: an unknown key, a wrong type or an out-of-range value is a ``ParamsError``
naming the dotted key, the value received and what is allowed, before any work.
The ``classifiers`` section is checked by the classifier registry
(``pipeline.evaluate.classifiers``), which knows each classifier's keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from pipeline.common.errors import PipelineError

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(PipelineError):
    """A parameter in params.yaml is missing, unknown, mistyped or out of range."""


# A Kaggle handle pinned to one version: owner/dataset/versions/<n>.
PINNED_HANDLE = re.compile(r"[^/\s]+/[^/\s]+/versions/\d+")
SEED = (0, 2**32 - 1)  # the range of every seed (a RANGES entry): numpy's and torch's are 32-bit unsigned


@dataclasses.dataclass(frozen=True)
class SplitNames:
    """``data.splits``: the name of each split's folder (or, with ``data.list``, its value in the split column).
    A split left out, or null, is not in the data: the audit carves it from train."""

    train: str
    valid: str | None = None
    test: str | None = None

    def check(self, name: str) -> None:
        names = {split: value for split, value in dataclasses.asdict(self).items() if value is not None}
        for split, value in names.items():
            if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
                raise ParamsError(f"{name}.{split}={value!r} must be one folder name (no slashes), or null when "
                                  "the data has no such split.")
        if len(set(names.values())) < len(names):
            raise ParamsError(f"{name}={names} gives two splits the same name; each split needs its own.")


@dataclasses.dataclass(frozen=True)
class CarveParams:
    """``data.carve``: the share of train's pictures, per class, moved to each split the data lacks, and the seed."""

    valid: float
    test: float
    seed: int
    RANGES: ClassVar[dict] = {"seed": SEED}

    def check(self, name: str) -> None:
        for split in ("valid", "test"):
            value = getattr(self, split)
            if not 0 < value < 1:  # NaN too
                raise ParamsError(f"{name}.{split}={value!r} is out of range: it must be above 0 and below 1 "
                                  "(a share of train's pictures per class).")
        if self.valid + self.test >= 1:
            raise ParamsError(f"{name}.valid={self.valid!r} and {name}.test={self.test!r} add up to "
                              f"{self.valid + self.test:g}: they must leave train some pictures (sum below 1).")


@dataclasses.dataclass(frozen=True)
class DataParams:
    handle: str
    root: str | None
    layout_dir: str | None
    on_bad_image: Literal["error", "skip"]
    num_workers: int | Literal["auto"]
    carve: CarveParams
    splits: SplitNames | None = None  # absent or null: the common names are recognised
    list: str | None = None  # absent or null: the images are in folders
    RANGES: ClassVar[dict] = {"num_workers": (1, None)}

    def check(self, name: str) -> None:
        if not PINNED_HANDLE.fullmatch(self.handle):
            raise ParamsError(f"{name}.handle={self.handle!r} is not pinned to a version: write "
                              "<owner>/<dataset>/versions/<n>, so the data cannot change under a result.")
        if self.list is not None and not self.list.strip():
            raise ParamsError(f"{name}.list={self.list!r} is empty: name a CSV file, or write null for folders.")
        if self.list is not None and self.layout_dir is not None:
            raise ParamsError(f"{name}.list={self.list!r} and {name}.layout_dir={self.layout_dir!r} are both set: "
                              "the images come either from a CSV list or from folders. Set data.layout_dir: null "
                              "to use the list, or data.list: null to use the folders.")


@dataclasses.dataclass(frozen=True)
class AuditParams:
    near_duplicate_bits: int
    near_duplicate_correlation: float
    on_leak: Literal["error", "warn", "drop"]
    RANGES: ClassVar[dict] = {"near_duplicate_bits": (0, 64), "near_duplicate_correlation": (-1, 1)}


# Upper bound of extract.crop_size and resize_size: 4x B1's 240, where a batch of 32 in fp32 already takes
# gigabytes of activations; beyond it memory, not accuracy, is what grows.
MAX_TRANSFORM_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    device: Literal["auto", "cpu", "cuda", "mps"]
    batch_size: int | Literal["auto"]
    num_workers: int | Literal["auto"]
    channels_last: bool | Literal["auto"]
    pad_batches: bool | Literal["auto"]
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    decode: Literal["auto", "cpu", "device"]
    crop_size: int | None
    resize_size: int | None
    shard_rows: int
    engine: Literal["local", "ray"]
    ray_address: str | None
    ray_actors: int | Literal["auto"]
    ray_timeout_s: float
    RANGES: ClassVar[dict] = {"batch_size": (1, None), "num_workers": (0, None), "crop_size": (8, MAX_TRANSFORM_SIZE),
                              "shard_rows": (1, None), "ray_actors": (1, None), "ray_timeout_s": (0.1, 3600)}

    def check(self, name: str) -> None:
        if self.resize_size is not None:  # no smaller than the crop
            in_range(name, "resize_size", self.resize_size, self.crop_size or 8, MAX_TRANSFORM_SIZE)


@dataclasses.dataclass(frozen=True)
class ViewsParams:
    count: int
    crop_scale_min: float
    hflip: float
    jitter: float
    seed: int
    use: bool
    RANGES: ClassVar[dict] = {"count": (0, 100), "crop_scale_min": (0.05, 1.0), "hflip": (0.0, 1.0),
                              "jitter": (0.0, 1.0), "seed": SEED}


@dataclasses.dataclass(frozen=True)
class CVParams:
    folds: int
    repeats: int
    inner_folds: int
    seed: int
    n_jobs: int
    engine: Literal["local", "ray"] = "local"
    RANGES: ClassVar[dict] = {"folds": (2, None), "repeats": (1, None), "inner_folds": (2, None), "seed": SEED}

    def check(self, name: str) -> None:
        if self.n_jobs == 0 or self.n_jobs < -1:
            raise ParamsError(f"{name}.n_jobs={self.n_jobs} is invalid: use -1 (all cores) or a count >= 1.")


@dataclasses.dataclass(frozen=True)
class EvaluationParams:
    n_bootstrap: int
    ece_bins: int
    seed: int
    equivalence: float  # accuracy within which two pairs are practically equivalent (compare)
    RANGES: ClassVar[dict] = {"n_bootstrap": (100, None), "ece_bins": (1, None), "seed": SEED, "equivalence": (0, 1)}


@dataclasses.dataclass(frozen=True)
class CostParams:
    seconds: float  # how long the cost stage times a backbone's forward pass; each classifier a quarter of it
    RANGES: ClassVar[dict] = {"seconds": (0.01, None)}


@dataclasses.dataclass(frozen=True)
class LabelIssuesParams:
    alpha: float
    show: int
    RANGES: ClassVar[dict] = {"alpha": (0, 1), "show": (0, None)}


@dataclasses.dataclass(frozen=True)
class LearningCurveParams:
    """The learning curve by original pictures (``learning_curve`` stage): which fractions of train's
    pictures, how many seeded draws of pictures at each; the 100% point is always the train stage's own."""

    enabled: bool
    fractions: list
    draws: int
    seed: int
    RANGES: ClassVar[dict] = {"draws": (1, None), "seed": SEED}

    def check(self, name: str) -> None:
        values = [number_from_text(v) for v in self.fractions]
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise ParamsError(f"{name}.fractions={self.fractions!r} must be a list of numbers in (0, 1].")
        if not all(0 < v <= 1 for v in values):
            raise ParamsError(f"{name}.fractions={self.fractions!r} is out of range: each must be in (0, 1] "
                              "(a share of train's original pictures).")
        if len(set(values)) != len(values):
            raise ParamsError(f"{name}.fractions={self.fractions!r} repeats a value; list each fraction once.")

    @property
    def below_full(self) -> list[float]:
        """The fractions the stage computes itself, ascending (1.0 is the train stage's figure)."""
        return sorted(float(number_from_text(v)) for v in self.fractions if float(number_from_text(v)) < 1)


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "audit": AuditParams,
    "label_issues": LabelIssuesParams,
    "cost": CostParams,
    "extract": ExtractParams,
    "views": ViewsParams,
    "cv": CVParams,
    "evaluation": EvaluationParams,
    "learning_curve": LearningCurveParams,
}
# Sections whose keys are checked elsewhere: each classifier's and each backbone's by its registry.
CLASSIFIERS_SECTION = "classifiers"
BACKBONES_SECTION = "backbones"
# Entry names become stage names (extract@<name>, train@<backbone>-<classifier>) and folder names.
ENTRY_NAME = re.compile(r"[A-Za-z0-9_]+")

_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def number_from_text(value: Any) -> Any:
    """``1e-3`` written in params.yaml reaches Python as text (YAML 1.1 wants ``1.0e-3``): read it as a float."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def in_range(section: str, key: str, value: float, low: float | None, high: float | None) -> None:
    if not math.isfinite(value):  # NaN passes every comparison
        raise ParamsError(f"{section}.{key}={value!r} must be a finite number.")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ParamsError(f"{section}.{key}={value!r} is out of range: it must be {bounds}.")


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` if it fits ``annotation`` (ints accepted for floats), else raise."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):  # a nested mapping: its own keys, types and checks
        return parse_section(annotation, value, key)
    if origin in (typing.Union, types.UnionType):
        nested = [option for option in typing.get_args(annotation) if dataclasses.is_dataclass(option)]
        if nested and isinstance(value, dict):  # its own message names the nested key at fault
            return _check_type(key, value, nested[0])
        for option in typing.get_args(annotation):
            try:
                return _check_type(key, value, option)
            except ParamsError:
                continue
        raise ParamsError(f"{key}={value!r} has the wrong type: expected {_describe(annotation)}.")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ParamsError(f"{key}={value!r} is not allowed: choose one of {list(allowed)}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}={value!r} has the wrong type: expected a list of "
                              f"{_describe(typing.get_args(annotation)[0])}.")
        return [_check_type(f"{key}[{i}]", v, typing.get_args(annotation)[0]) for i, v in enumerate(value)]
    if annotation is float:
        value = number_from_text(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ParamsError(f"{key}={value!r} has the wrong type: expected int.")
    if not isinstance(value, annotation):
        raise ParamsError(f"{key}={value!r} has the wrong type: expected {_describe(annotation)}, "
                          f"got {type(value).__name__}.")
    return value


def _describe(annotation: Any) -> str:
    if dataclasses.is_dataclass(annotation):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(annotation)]}"
    if typing.get_origin(annotation) is list:
        return f"list of {_describe(typing.get_args(annotation)[0])}"
    args = typing.get_args(annotation)
    if args:
        return " or ".join(_describe(a) for a in args)
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def parse_section(cls: type, raw: Any, name: str) -> Any:
    """Build dataclass ``cls`` from the mapping ``raw`` found at ``name`` in params.yaml.

    Then each key of the class's ``RANGES`` (key -> (low, high), None: unbounded) is checked to be in its range
    (``auto`` and null pass), and last the class's own ``check`` runs, for what a range cannot say."""
    if not isinstance(raw, dict):
        what = f"{name}" if "." in name else f"params section '{name}'"
        raise ParamsError(f"{what} must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"Unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)} in params.yaml; "
                          f"known keys of '{name}': {fields}.")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ParamsError(f"Missing key(s) {', '.join(f'{name}.{k}' for k in missing)} in params.yaml.")
    section = cls(**{f: _check_type(f"{name}.{f}", raw[f], hints[f]) for f in fields if f in raw})
    for key, (low, high) in getattr(cls, "RANGES", {}).items():
        if getattr(section, key) not in (None, "auto"):
            in_range(name, key, getattr(section, key), low, high)
    if hasattr(section, "check"):
        section.check(name)
    return section


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (as DVC does), instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is written twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load params.yaml as plain data, read as DVC reads it (UTF-8, no key twice), with one clear line if it is
    missing, not UTF-8 or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"Parameter file {path} not found; run from the project root or pass --params.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                          "save it as UTF-8, the encoding DVC reads it in.") from None
    try:
        raw = yaml.load(text.removeprefix("\ufeff"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}.")
    return raw


def load_section(name: str, path: Path = DEFAULT_PARAMS) -> Any:
    """Read and validate one typed section of params.yaml."""
    raw = read_params(path)
    if name not in raw:
        raise ParamsError(f"Section '{name}' is missing from {path}.")
    return parse_section(SECTIONS[name], raw[name], name)


def validate_all(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Check every typed section of params.yaml at once, so a typo anywhere fails before any work.

    Returns the raw params; the caller checks the ``classifiers`` and ``backbones`` sections with their
    registries.
    """
    raw = read_params(path)
    known = [*SECTIONS, CLASSIFIERS_SECTION, BACKBONES_SECTION]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ParamsError(f"Unknown section(s) {unknown} in {path}; known: {sorted(known)}.")
    for name in SECTIONS:
        load_section(name, path)
    return raw


def classifiers_section(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The ``classifiers`` section: classifier name -> its raw params (validated by the registry)."""
    return _named_entries(path, CLASSIFIERS_SECTION, "classifier")


def backbones_section(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The ``backbones`` section: backbone name -> its raw entry (validated by the backbone registry)."""
    return _named_entries(path, BACKBONES_SECTION, "backbone")


def _named_entries(path: Path, section_name: str, what: str) -> dict[str, Any]:
    raw = read_params(path)
    section = raw.get(section_name)
    if not isinstance(section, dict) or not section:
        raise ParamsError(f"Section '{section_name}' of {path} must map {what} names to their params.")
    for name in section:
        if not isinstance(name, str) or not ENTRY_NAME.fullmatch(name):
            raise ParamsError(f"{section_name}.{name!r}: a {what} name must be letters, digits and underscores "
                              "(it names stages and folders), e.g. resnet50 or my_encoder.")
    return section


def entry_of(section: dict[str, Any], name: str, *, section_name: str, path: Path) -> Any:
    """One named entry of a registry section, or an error listing the names there are."""
    if name not in section:
        raise ParamsError(f"{path} has no {section_name}.{name} entry; it has {sorted(section)}.")
    return section[name]
