"""Which pair to use: accuracy against cost, the Pareto front, and the compare stage's decision in words."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from pipeline.reporting.figures import cost_figure, img_tag, png


def flags(column: pd.Series) -> pd.Series:
    """A true/false column read from CSV, an empty cell read as false."""
    return column.fillna(False).astype(bool)


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True where no other pair is at least as cheap and as accurate and strictly better on one of the two.
    Ties on both stay on the front together. O(n^2), for a few dozen pairs."""
    cost, accuracy = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
    no_worse = (cost[None, :] <= cost[:, None]) & (accuracy[None, :] >= accuracy[:, None])
    better = (cost[None, :] < cost[:, None]) | (accuracy[None, :] > accuracy[:, None])
    return ~(no_worse & better).any(axis=1)


def cost_section(leaderboard: pd.DataFrame, decision: dict | None) -> str:
    """The cost-accuracy figure with its front, the cheapest pair equivalent to the best in a sentence, and the
    winner's figure corrected for having been picked on the folds that score it."""
    parts = ["<h2 id='cost'>Cost and accuracy</h2>"]
    if "ms_per_image" not in leaderboard:
        return parts[0] + "<p>No cost in this leaderboard (made by an older compare stage): re-run compare.</p>"
    timed = leaderboard[np.isfinite(leaderboard["ms_per_image"].astype(float))]
    parts.append("<p>Grouped-CV accuracy with its 95% interval against the time to classify one image (backbone "
                 "and classifier, timed alone on this machine; the 1-minute load during the timing is in "
                 "<code>comparison.csv</code>). The Pareto front joins the pairs that no other pair beats on both "
                 "cost and accuracy.</p>")
    if not timed.empty:
        front = pareto_front(timed["ms_per_image"], timed["cv_accuracy"])
        equivalent = flags(timed["equivalent"]) if "equivalent" in timed else np.zeros(len(timed), dtype=bool)
        parts.append(img_tag(png(cost_figure(timed, front=front, equivalent=np.asarray(equivalent))),
                             alt="accuracy against cost"))
        edge = timed[front].sort_values("ms_per_image")
        parts.append("<p>On the front, cheapest first: " + "; ".join(
            f"#{r.rank} {html.escape(f'{r.backbone}/{r.classifier}')} ({r.ms_per_image:.3g} ms, {r.cv_accuracy:.3f})"
            for r in edge.itertuples()) + ".</p>")
    if len(timed) < len(leaderboard):
        parts.append(f"<p>{len(leaderboard) - len(timed)} pair(s) without a timing are not drawn.</p>")
    decision = decision or {}
    if decision.get("sentence"):
        parts.append(f"<p><b>{html.escape(str(decision['sentence']))}</b></p>")
    selection = decision.get("selection")
    numbers = isinstance(selection, dict) and all(isinstance(selection.get(k), (int, float))
                                                  for k in ("observed", "corrected"))
    if numbers:
        parts.append(f"<p>The winner's figure is biased upward: it was picked among {selection.get('pairs', '?')} "
                     f"pairs on the folds that score it. Its out-of-fold accuracy {selection['observed']:.3f}; "
                     f"<b>selection-corrected estimate {selection['corrected']:.3f}</b>"
                     + ("" if len(selection.get("corrected_ci95") or []) != 2 else
                        " [{:.3f}, {:.3f}]".format(*selection["corrected_ci95"])) + " "
                     f"({html.escape(str(selection.get('method', '')))}).</p>")
    if decision.get("method"):
        parts.append(f"<p>P(best) and rank intervals: {html.escape(str(decision['method']))}; they leave out "
                     f"{html.escape(str(decision.get('leaves_out', 'nothing said')))}.</p>")
    return "".join(parts)
