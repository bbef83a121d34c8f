"""Train pictures whose label looks wrong, from the best pair's honest out-of-fold probabilities.

Label-noise methods judge a label by probabilities from a model that did not train on the image.
With copies of one picture on both sides of a plain k-fold split the model has seen the image after
all and is confident on exactly what it memorised, so the probabilities here come from the grouped
CV (``protocol.cv_scores``: a fold never trains on a copy of the picture it scores). They are
averaged over a picture's images, so a picture with four augmented copies counts once, and ranked
by cleanlab: its self-confidence score (the probability of the given label; low is suspect) orders
the pictures, and its estimate of how many labels are wrong (``num_label_issues``, from the confident
joint) says how many of the first are flagged.

A ranking is only as good as the classifier behind it. When the backbone's weights are random, or
the best pair's out-of-fold accuracy is not above what always answering the largest class gives
(binomial test), no suspect is presented: the ranking would be noise in a list that looks real.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

COLUMNS = ["rank", "picture", "images", "given", "suggested", "score", "flagged", "paths"]


@dataclasses.dataclass
class LabelIssues:
    table: pd.DataFrame  # COLUMNS, most suspect first; empty when there is no structure to judge labels by
    summary: dict[str, Any]


def picture_probabilities(oof: pd.DataFrame, groups: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per picture: its id, images, paths, given label (its images' most common label, the first
    class on a tie) and the mean of its images' out-of-fold probabilities (``p_<class>``)."""
    columns = [f"p_{c}" for c in classes]
    frame = oof.assign(picture=groups)
    rows = []
    for picture, images in frame.groupby("picture", sort=True):
        counts = images["true"].value_counts()
        given = min(counts.index[counts == counts.max()], key=classes.index)
        rows.append({"picture": picture, "images": len(images), "paths": ";".join(images["image"]),
                     "given": given, **images[columns].mean().to_dict()})
    return pd.DataFrame(rows)


def find_suspects(oof: pd.DataFrame, groups: np.ndarray, classes: list[str], *, pretrained: bool | None,
                  alpha: float) -> LabelIssues:
    """Rank the train pictures by how likely their label is wrong (see the module's docstring); ``alpha``: the
    level at which the out-of-fold accuracy must beat the largest class's share before suspects are named."""
    from cleanlab.count import num_label_issues  # only this stage needs cleanlab: imported here, not by the registry
    from cleanlab.rank import get_label_quality_scores

    pictures = picture_probabilities(oof, groups, classes)
    proba = pictures[[f"p_{c}" for c in classes]].to_numpy()
    proba = proba / proba.sum(axis=1, keepdims=True)
    given = pictures["given"].map(classes.index).to_numpy()
    correct = int((proba.argmax(axis=1) == given).sum())
    largest = float(np.bincount(given, minlength=len(classes)).max() / len(given))
    p_value = float(binomtest(correct, len(given), largest, alternative="greater").pvalue)
    summary: dict[str, Any] = {
        "pictures": len(pictures), "out_of_fold_accuracy": correct / len(given), "largest_class_share": largest,
        "p_value_above_largest_class": p_value, "pretrained": pretrained,
        "method": "cleanlab self-confidence on grouped out-of-fold probabilities averaged per picture "
                  "(the grouped CV's first repetition); the first num_label_issues of the ranking flagged"}
    if pretrained is False or p_value >= alpha:
        summary["structure"] = False
        summary["why"] = ("the backbone's weights are random (pretrained: false)" if pretrained is False else
                          f"the out-of-fold accuracy {correct / len(given):.3f} is not above the largest class's share "
                          f"{largest:.3f} (binomial p = {p_value:.3g} >= {alpha})")
        summary["flagged_per_class"] = {}
        return LabelIssues(table=pd.DataFrame(columns=COLUMNS), summary=summary)
    scores = get_label_quality_scores(given, proba, method="self_confidence")
    table = pictures.assign(suggested=[classes[i] for i in proba.argmax(axis=1)], score=scores)
    table = table.sort_values(["score", "picture"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["flagged"] = table["rank"] <= num_label_issues(given, proba)
    summary["structure"] = True
    summary["flagged"] = int(table["flagged"].sum())
    summary["flagged_per_class"] = {c: int(n) for c, n in table[table["flagged"]]["given"].value_counts().items()}
    return LabelIssues(table=table[COLUMNS].round({"score": 6}), summary=summary)
