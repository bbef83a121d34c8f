"""Would more pictures help? A learning curve whose x-axis counts original pictures.

scikit-learn's ``learning_curve`` slices rows: with augmented copies, a point of its
curve holds parts of pictures, its folds put copies of one picture on both sides, and
its x-axis counts copies, so it overstates what the data can do. Here each point keeps
a share of train's original pictures, drawn whole (every copy and view goes with its
picture) and stratified by class, and runs the classifier's own selection and grouped
CV at that size: the protocol of the train stage, nested selection included. Within a
draw, the subsets are nested (the 25% pictures are among the 50%), so the curve's steps
compare like with like.

The 100% point is the train stage's own grouped-CV figure, read from its metrics file.
Cost: for each draw, sum(fractions) times the grouped CV of one repetition at 100%.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from pipeline.common.features import Features
from pipeline.common.params import CVParams, LearningCurveParams, ParamsError
from pipeline.evaluate.classifiers import get_classifier
from pipeline.evaluate.engine import Engine
from pipeline.evaluate.protocol import cv_scores
from pipeline.evaluate.splits import RepeatedStratifiedGroupKFold, check_cv_fits
from pipeline.evaluate.statistics import corrected_cv_interval
from pipeline.evaluate.training import placement, training_data

log = logging.getLogger(__name__)

POINT_COLUMNS = ["classifier", "fraction", "pictures", "images", "accuracy", "accuracy_low", "accuracy_high",
                 "draws", "folds", "source"]


@dataclasses.dataclass(frozen=True)
class CurveFold:
    """One draw of pictures at one fraction: its rows of train and its grouped folds (indices into ``rows``)."""

    draw: int
    fraction: float
    pictures: int
    rows: np.ndarray  # rows of train: every image of the drawn pictures
    splits: list[tuple[np.ndarray, np.ndarray]]
    cv: CVParams  # the cv params of this draw: one repetition, the draw's own seed


def draw_pictures(y: np.ndarray, groups: np.ndarray, *, fractions: list[float], seed: int,
                  draw: int) -> dict[float, np.ndarray]:
    """The pictures kept at each fraction in one seeded draw, stratified by class and nested across fractions.

    Each class keeps round(fraction x its pictures), at least one; a picture's class is the most common label of
    its images.
    """
    labels = pd.DataFrame({"group": groups, "y": y}).groupby("group")["y"].agg(lambda s: s.value_counts().index[0])
    pictures, labels = labels.index.to_numpy(), labels.to_numpy()
    rng = np.random.default_rng([seed, draw])
    order = {c: rng.permutation(pictures[labels == c]) for c in np.unique(labels)}
    return {f: np.sort(np.concatenate([p[: max(1, int(np.floor(f * len(p) + 0.5)))] for p in order.values()]))
            for f in fractions}


def curve_folds(y: np.ndarray, groups: np.ndarray, *, fractions: list[float], draws: int, seed: int,
                cv: CVParams) -> tuple[list[CurveFold], list[dict[str, Any]]]:
    """Every (draw, fraction) of the curve with its grouped folds, all checked to fit before any fitting; and the
    points skipped because their pictures are too few for the folds (each with its reason).

    A draw runs one repetition of ``cv.folds`` grouped folds (its own seed), so a point
    pools draws x folds scores; ``cv.inner_folds`` nests the selection as in the train stage.
    """
    planned, skipped = [], []
    for draw in range(draws):
        drawn = draw_pictures(y, groups, fractions=fractions, seed=seed, draw=draw)
        cv_seed = int(np.random.default_rng([seed, draw, 1]).integers(2**31 - 1))
        draw_cv = dataclasses.replace(cv, repeats=1, seed=cv_seed)
        for fraction in fractions:
            rows = np.flatnonzero(np.isin(groups, drawn[fraction]))
            try:
                check_cv_fits(y[rows], groups[rows], folds=cv.folds, repeats=1, inner_folds=cv.inner_folds,
                              seed=cv_seed)
                splits = list(RepeatedStratifiedGroupKFold(n_splits=cv.folds, n_repeats=1, random_state=cv_seed)
                              .split(rows, y[rows], groups[rows]))
            except (ParamsError, ValueError) as err:  # sklearn's splitter refuses too few members per class
                skipped.append(skip(fraction, draw, len(drawn[fraction]), f"too few for the folds ({err})"))
                continue
            planned.append(CurveFold(draw=draw, fraction=fraction, pictures=len(drawn[fraction]), rows=rows,
                                     splits=splits, cv=draw_cv))
    return planned, skipped


def skip(fraction: float, draw: int, pictures: int, why: str) -> dict[str, Any]:
    """A point the data is too small for: recorded with its reason and said in one warning, the curve goes on."""
    return said(fraction, draw, pictures, f"learning_curve.fractions: {fraction:g} of the pictures ({pictures}, draw "
                f"{draw}) skipped: {' '.join(why.split())}")


def said(fraction: float, draw: int, pictures: int, reason: str) -> dict[str, Any]:
    """What a point of the curve could not do at this size, said in one warning and returned for the record."""
    log.warning(reason)
    return {"fraction": fraction, "draw": draw, "pictures": pictures, "reason": reason}


def learning_curve_scores(name: str, params: Any, *, features: Features, groups: np.ndarray, cv: CVParams,
                          use_views: bool, curve: LearningCurveParams, engine: Engine | None = None,
                          device: str = "cpu") -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Per-fold grouped-CV scores of classifier ``name`` at each fraction below 100% and each draw, and what the
    data was too small for: points skipped (``skip``), or grid values dropped at a point (it still runs).

    The train stage's whole procedure, hyperparameter selection included, is cross-validated
    on each drawn subset's grouped folds: nested grouped CV inside every fold for the grids
    (no final fit on the subset: nothing uses it), and for the head the epoch count early
    stopping picks on the subset, then trained in every fold. The head trains on ``device``,
    as in the train stage.
    """
    spec = get_classifier(name)
    device, cv, engine = placement(spec, device, cv, engine)
    train = features["train"]
    views = train.views if use_views else None
    frames = []
    plan, skipped = curve_folds(train.y, groups, fractions=curve.below_full, draws=curve.draws, seed=curve.seed,
                                cv=cv)
    for point in tqdm(plan, desc=f"learning curve {name}", unit="point"):
        rows = point.rows
        data = training_data(features, groups, views=views, rows=rows, device=device)
        try:  # only the folds' procedure counts here: the grids' final fit on the subset is never needed
            fit_fold = (spec.fold_fit(params, data, point.cv) if spec.fold_fit is not None
                        else spec.select(params, data, point.cv).fit_fold)
        except ParamsError as err:  # a setting the subset is too small for
            skipped.append(skip(point.fraction, point.draw, point.pictures, str(err)))
            continue
        skipped += [said(point.fraction, point.draw, point.pictures, f"learning_curve.fractions: at {point.fraction:g} "
                         f"of the pictures: {note}") for note in getattr(fit_fold, "notes", ())]  # the point runs
        sub_views = None if views is None else np.asarray(views)[:, rows]
        scores, _, _ = cv_scores(fit_fold, train.X[rows], train.y[rows], groups[rows], point.splits,
                                 views=sub_views, n_jobs=cv.n_jobs, engine=engine)
        frames.append(scores.assign(draw=point.draw, fraction=point.fraction, pictures=point.pictures,
                                    images=len(rows)))
        log.info("%s at %g of the pictures (%d, draw %d): grouped CV %.3f", name, point.fraction,
                 point.pictures, point.draw, scores["accuracy"].mean())
    columns = ["fraction", "draw", "pictures", "images", "fold", "n_test", "accuracy", "balanced_accuracy", "macro_f1"]
    scores = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    return scores, skipped


def full_point(name: str, metrics: dict[str, Any], *, n_images: int) -> dict[str, Any]:
    """The 100% point: the train stage's grouped-CV accuracy and interval, as its metrics file holds them."""
    cv = metrics["cv"]
    return {"classifier": name, "fraction": 1.0, "pictures": int(cv["n_groups"]), "images": int(n_images),
            "accuracy": float(cv["accuracy_mean"]), "accuracy_low": float(cv["accuracy_ci95"]["low"]),
            "accuracy_high": float(cv["accuracy_ci95"]["high"]), "draws": 1, "folds": int(cv["n_folds"]),
            "source": "train stage"}


def curve_points(name: str, scores: pd.DataFrame | None, full: dict[str, Any]) -> pd.DataFrame:
    """One row per point: mean grouped-CV accuracy over draws x folds, with the interval the train stage
    uses (Nadeau-Bengio corrected t over the pooled fold scores), then the train stage's 100% point.
    ``scores`` None (the curve switched off): the 100% point alone."""
    rows = []
    for fraction, part in ([] if scores is None else scores.groupby("fraction", sort=True)):
        n_images = part.groupby("draw")["images"].first().mean()
        low, high = corrected_cv_interval(part["accuracy"].to_numpy(float),
                                          test_fraction=float(part["n_test"].mean()) / n_images)
        rows.append({"classifier": name, "fraction": float(fraction), "pictures": int(part["pictures"].iloc[0]),
                     "images": int(round(n_images)), "accuracy": float(part["accuracy"].mean()),
                     "accuracy_low": low, "accuracy_high": high, "draws": int(part["draw"].nunique()),
                     "folds": len(part), "source": "learning curve"})
    return pd.DataFrame([*rows, full], columns=POINT_COLUMNS)


def reading(points: pd.DataFrame) -> dict[str, Any]:
    """One sentence on the last step of the curve, by the rule stated in docs/evaluation.md.

    Gain = accuracy at 100% minus at the point before it; noise = the two points'
    standard errors (interval half-width / z) combined in quadrature. Rising if the gain
    exceeds the noise, falling if it is below minus the noise, else flat.
    """
    points = points.sort_values("pictures")
    if len(points) < 2:
        return {"trend": "none", "sentence": "One point only (the train stage's): no trend to read; "
                                             "enable learning_curve with fractions below 1 to draw the curve."}
    prev, last = points.iloc[-2], points.iloc[-1]
    z = stats.norm.ppf(0.975)
    se = [(p["accuracy_high"] - p["accuracy_low"]) / (2 * z) for p in (prev, last)]
    gain, noise = float(last["accuracy"] - prev["accuracy"]), float(np.hypot(*se))
    step = f"{gain:+.3f} from {int(prev['pictures'])} to {int(last['pictures'])} pictures, noise ±{noise:.3f}"
    if gain > noise:
        trend, sentence = "rising", f"Still rising at 100% ({step}): more pictures would likely help."
    elif gain < -noise:
        trend, sentence = "falling", (f"Lower at 100% than at the point before ({step}): no sign that more pictures "
                                      "of the same kind would help.")
    else:
        trend, sentence = "flat", (f"Flat over the last two points ({step}): more pictures of the same kind would "
                                   "likely not help much.")
    return {"trend": trend, "gain": gain, "noise": noise, "sentence": sentence}
