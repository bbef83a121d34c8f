"""Rank classifiers by grouped-CV accuracy and say which test differences the data support.

Test accuracy is shown beside the CV figure with its interval; every classifier
is paired with the linear head (and the best with the runner-up) by an exact
McNemar test on the same test images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.errors import PipelineError
from pipeline.evaluate.statistics import mcnemar_exact

ALPHA = 0.05
REFERENCE = "head"  # every classifier is paired with the transfer-learning recipe


def _correct(predictions: pd.DataFrame) -> pd.Series:
    test = predictions[predictions["split"] == "test"].set_index("image")
    return test["true"] == test["predicted"]


def paired_tests(predictions: dict[str, pd.DataFrame], ranking: list[str]) -> dict[str, dict[str, Any]]:
    """McNemar p-values of each classifier against the head, and of the best against the runner-up."""
    correct = {name: _correct(frame) for name, frame in predictions.items()}
    images = sorted(set.intersection(*(set(c.index) for c in correct.values())))
    if any(len(c) != len(images) for c in correct.values()):
        raise PipelineError("Classifiers were tested on different images; re-run their train stages (dvc repro) "
                            "so that all are scored on the same test split.")
    correct = {name: c.loc[images].to_numpy() for name, c in correct.items()}
    out: dict[str, dict[str, Any]] = {name: {} for name in ranking}
    if REFERENCE in correct:
        for name in ranking:
            if name != REFERENCE:
                out[name]["mcnemar_p_vs_head"] = mcnemar_exact(correct[name], correct[REFERENCE])["p_value"]
    if len(ranking) >= 2:
        best, runner_up = ranking[:2]
        out[best]["mcnemar_p_vs_runner_up"] = mcnemar_exact(correct[best], correct[runner_up])["p_value"]
    return out


def leaderboard(metrics: dict[str, dict[str, Any]], predictions: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict]:
    """One row per classifier, best grouped-CV accuracy first, with paired-test p-values."""
    ranking = sorted(metrics, key=lambda n: -metrics[n]["cv"]["accuracy_mean"])
    paired = paired_tests(predictions, ranking)
    rows = []
    for rank, name in enumerate(ranking, start=1):
        m = metrics[name]
        cv, leaky, test = m["cv"], m["cv_leaky"], m["test"]
        rows.append({
            "rank": rank, "classifier": name,
            "cv_accuracy": cv["accuracy_mean"], "cv_accuracy_std": cv["accuracy_std"],
            "cv_accuracy_ci95_low": cv["accuracy_ci95"]["low"], "cv_accuracy_ci95_high": cv["accuracy_ci95"]["high"],
            "cv_leaky_accuracy": leaky["accuracy_mean"],
            "test_n": test["n"], "test_accuracy": test["accuracy"],
            "test_accuracy_ci95_low": test["accuracy_ci95"]["low"],
            "test_accuracy_ci95_high": test["accuracy_ci95"]["high"],
            "test_balanced_accuracy": test["balanced_accuracy"], "test_macro_f1": test["macro_f1"],
            "test_log_loss": test["log_loss"], "test_ece": test["ece"],
            "mcnemar_p_vs_head": paired[name].get("mcnemar_p_vs_head", np.nan),
            "mcnemar_p_vs_runner_up": paired[name].get("mcnemar_p_vs_runner_up", np.nan),
            "fit_seconds": m.get("fit_seconds"), "pretrained": m.get("pretrained"),
        })
    return pd.DataFrame(rows), {name: {"test": paired[name]} for name in ranking}


def _p(value: float) -> str:
    if np.isnan(value):
        return "–"
    mark = "" if value < ALPHA else " (n.s.)"
    return f"{value:.3f}{mark}"


def render_markdown(table: pd.DataFrame) -> str:
    lines = ["# Classifier comparison", ""]
    if not table["pretrained"].fillna(False).astype(bool).all():
        lines += ["> **RANDOM OR UNVERIFIED BACKBONE WEIGHTS (pretrained: false).** These numbers test the "
                  "machinery only; they say nothing about the classifiers.", ""]
    lines += [
        "Ranked by accuracy under cross-validation grouped by original picture (mean ± std over folds, "
        "95% interval with the Nadeau–Bengio correction). *Leaky CV* is plain k-fold on the same data, "
        "where copies of one picture land on both sides: shown only to make the inflation visible. "
        "Test accuracy has a Wilson 95% interval; p-values are exact McNemar tests on the same test "
        f"images; *(n.s.)* marks p ≥ {ALPHA}: the data do not support a difference.", "",
        "| # | classifier | grouped CV acc. | 95% CI | leaky CV acc. | test acc. [95% CI] | test bal. acc. "
        "| test macro-F1 | log loss | ECE | p vs head | p vs runner-up |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.rank} | {r.classifier} | {r.cv_accuracy:.3f} ± {r.cv_accuracy_std:.3f} | "
            f"[{r.cv_accuracy_ci95_low:.3f}, {r.cv_accuracy_ci95_high:.3f}] | {r.cv_leaky_accuracy:.3f} | "
            f"{r.test_accuracy:.3f} [{r.test_accuracy_ci95_low:.3f}, {r.test_accuracy_ci95_high:.3f}] | "
            f"{r.test_balanced_accuracy:.3f} | {r.test_macro_f1:.3f} | {r.test_log_loss:.3f} | {r.test_ece:.3f} | "
            f"{_p(r.mcnemar_p_vs_head)} | {_p(r.mcnemar_p_vs_runner_up)} |"
        )
    lines += ["", f"{int(table['test_n'].iloc[0])} test images: one image moves test accuracy by "
              f"{1 / table['test_n'].iloc[0]:.1%}."]
    return "\n".join(lines) + "\n"
