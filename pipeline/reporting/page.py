"""The report page: leaderboard, cost against accuracy, the backbone x classifier grid, test confusion
matrices of the leading pairs, per-class precision and recall, the misclassified test images of the best
pair, the learning curves by original pictures, and a section per backbone (a 2-D map of a sample of its
embeddings, its linear head's training curve). Laid out to stay readable at 6 backbones x 4 classifiers:
a row per pair, a panel per backbone, wide tables scroll in their own box. Images are embedded, so the
file opens anywhere.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.common import features as features_io
from pipeline.common.checks import ReuseError, finite_columns, known_labels, require_columns
from pipeline.data.images import ImageError, load_rgb
from pipeline.reporting.decision import cost_section, flags
from pipeline.reporting.figures import (
    confusion_figure,
    embedding_map_figure,
    grid_figure,
    history_figure,
    img_tag,
    learning_curve_figure,
    per_class_table,
    png,
    thumbnail_jpeg,
)
from pipeline.reporting.sample import embedding_sample

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td{white-space:nowrap}.about td{white-space:normal}ul.readings{columns:2;font-size:14px}
.leaderboard td:nth-child(2),.leaderboard td:nth-child(3){text-align:left}
.about th{text-align:left}.about td{text-align:left}img{max-width:100%;height:auto}
.warn{background:#fde2e1;border:1px solid #c00;padding:.6em}.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;font-size:12px}.scroll{overflow-x:auto;max-width:100%;margin:.5em 0}"""

LEADERBOARD_COLUMNS = {  # comparison.csv's columns the page shows, and their headings
    "rank": "#", "backbone": "backbone", "classifier": "classifier", "cv_accuracy": "grouped CV acc.",
    "cv_p_vs_best_holm": "CV p vs best (Holm)", "cv_leaky_accuracy": "leaky CV acc.", "test_accuracy": "test acc.",
    "test_macro_f1": "test macro-F1", "mcnemar_p_vs_head": "p vs head", "mcnemar_p_vs_runner_up": "p vs runner-up",
}
INTERVALS = ("cv_accuracy_ci95_low", "cv_accuracy_ci95_high", "test_accuracy_ci95_low", "test_accuracy_ci95_high")
P_VALUES = ("mcnemar_p_vs_head", "mcnemar_p_vs_runner_up", "cv_p_vs_best_holm")
DECISION = ("p_best", "rank_low", "rank_high")  # compare's decision columns; an older comparison.csv lacks them
LEADING = 4  # confusion matrices drawn: the top pairs, or those equivalent to the best up to MOST_LEADING
MOST_LEADING = 6
MAP_POINTS = 2000  # an embedding map's points: enough to show the structure, bounded whatever the dataset


def check_leaderboard(table: pd.DataFrame, path: Path, *, fix: str) -> None:
    """The columns the page shows, scores finite (the p-values may be empty: no pair to test)."""
    require_columns(table, path, [*LEADERBOARD_COLUMNS, *INTERVALS, "pretrained"], fix=fix)
    if table.empty:
        raise ReuseError(f"{path} has no classifier rows; {fix}")
    finite_columns(table, path, [c for c in [*LEADERBOARD_COLUMNS, *INTERVALS]
                                 if c not in ("backbone", "classifier", *P_VALUES)], fix=fix)
    finite_columns(table, path, [c for c in DECISION if c in table], fix=fix)


def leaderboard_table(table: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as shown: an interval in one cell, the decision columns when compare wrote them, dim and
    extraction speed left to the About table, so that 24 rows stay readable."""
    shown = table.sort_values("rank")
    label = LEADERBOARD_COLUMNS

    def interval(low: str, high: str, digits: int) -> list[str]:
        return [f"[{lo:.{digits}f}, {hi:.{digits}f}]" for lo, hi in zip(shown[low], shown[high])]

    decided = all(c in shown for c in DECISION)
    return pd.DataFrame({
        **{label[c]: shown[c] for c in ("rank", "backbone", "classifier", "cv_accuracy")},
        "CV 95% CI": interval("cv_accuracy_ci95_low", "cv_accuracy_ci95_high", 3),
        label["cv_p_vs_best_holm"]: shown["cv_p_vs_best_holm"],
        **({"P(best)": shown["p_best"], "rank 95%": interval("rank_low", "rank_high", 0)} if decided else {}),
        **({"≈ best": np.where(flags(shown["equivalent"]), "✓", "")} if "equivalent" in shown else {}),
        **{label[c]: shown[c] for c in ("cv_leaky_accuracy", "test_accuracy")},
        "test 95% CI": interval("test_accuracy_ci95_low", "test_accuracy_ci95_high", 3),
        **{label[c]: shown[c] for c in ("test_macro_f1", "mcnemar_p_vs_head", "mcnemar_p_vs_runner_up")},
        **({"ms / image": shown["ms_per_image"]} if "ms_per_image" in shown else {}),
    })


def leading_pairs(table: pd.DataFrame) -> tuple[list[str], str]:
    """The pairs whose confusion matrices are drawn, and how they were chosen: those practically equivalent to
    the best when compare said which (at most ``MOST_LEADING``), else the ``LEADING`` best by rank."""
    equivalent = flags(table["equivalent"]) if "equivalent" in table else pd.Series(False, index=table.index)
    if equivalent.any():
        return rank_order(table[equivalent])[:MOST_LEADING], "practically equivalent to the best"
    return rank_order(table)[:LEADING], "first by grouped CV"


def rank_order(table: pd.DataFrame) -> list[str]:
    ranked = table.sort_values("rank")
    return [f"{b}/{c}" for b, c in zip(ranked["backbone"], ranked["classifier"])]


def scroll(table_html: str) -> str:
    """A table in a box of its own that scrolls sideways when wider than the page."""
    return f"<div class='scroll'>{table_html}</div>"


def check_predictions(frame: pd.DataFrame, path: Path, classes: list[str], *, fix: str) -> None:
    """Image, split, true and predicted class among the features' classes, a probability per class."""
    require_columns(frame, path, ["image", "split", "true", "predicted", *(f"p_{c}" for c in classes)], fix=fix)
    known_labels(frame, path, ["true", "predicted"], classes, fix=fix)


def check_history(history: pd.DataFrame, path: Path, *, fix: str) -> None:
    """A training curve: epochs and the training loss, finite (the valid loss may be absent)."""
    require_columns(history, path, ["epoch", "train_loss"], fix=fix)
    finite_columns(history, path, ["epoch", "train_loss"], fix=fix)


def misclassified_gallery(predictions: pd.DataFrame, image_root: Path) -> str:
    wrong = predictions[(predictions["split"] == "test") & (predictions["true"] != predictions["predicted"])]
    if wrong.empty:
        return "<p>No test image is misclassified.</p>"
    cards = []
    for row in wrong.to_dict("records"):  # not itertuples: it renames a column like 'p_golden retriever'
        probability = row[f"p_{row['predicted']}"]
        caption = (f"{html.escape(row['image'])}<br>true <b>{html.escape(row['true'])}</b>, predicted "
                   f"<b>{html.escape(row['predicted'])}</b> (p={probability:.2f})")
        try:
            picture = img_tag(thumbnail_jpeg(load_rgb(image_root / row["image"])), mime="image/jpeg", alt=row["image"])
        except ImageError as err:  # moved or damaged since extraction: the rest of the page still stands
            picture = f"<p>(image {html.escape(str(err))})</p>"
        cards.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    return f'<div class="gallery">{"".join(cards)}</div>'


def label_issues_section(table: pd.DataFrame, summary: dict, image_root: Path, *, show: int) -> str:
    """The train pictures whose label looks most wrong (the label_issues stage's), as thumbnails; or why none is
    named."""
    parts = ["<h2 id='label-issues'>Suspected label errors in train</h2>"]
    if not summary.get("structure"):
        return parts[0] + f"<p>No suspect is named: {html.escape(str(summary.get('why', '')))}.</p>"
    parts.append(f"<p>From the out-of-fold probabilities of {html.escape(summary['pair'])} (grouped CV: no fold saw "
                 f"a copy of the picture it scored), averaged per picture: {summary['flagged']} of "
                 f"{summary['pictures']} pictures flagged by cleanlab ({html.escape(str(summary['flagged_per_class']))}"
                 f"); the {show} most suspect below, all in <code>artifacts/data/label_issues.csv</code>.</p>")
    cards = []
    for row in table.head(show).to_dict("records"):
        first = str(row["paths"]).split(";")[0]
        caption = (f"{html.escape(first)} ({row['images']} image(s))<br>labelled <b>{html.escape(row['given'])}</b>, "
                   f"looks <b>{html.escape(row['suggested'])}</b> (p of label {row['score']:.2f})")
        try:
            picture = img_tag(thumbnail_jpeg(load_rgb(image_root / first)), mime="image/jpeg", alt=first)
        except ImageError as err:
            picture = f"<p>(image {html.escape(str(err))})</p>"
        cards.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    return "".join(parts) + f'<div class="gallery">{"".join(cards)}</div>'


def about_table(*, metas: dict[str, dict], source: dict, code_version: str,
                counts: dict[str, int] | None = None, splits: dict[str, dict] | None = None) -> str:
    """What the report is a report of: data, how each split was made (``splits``), each backbone with its
    weights and extraction, code. Features written by another producer (no backbone keys in meta.json) are
    said to be so, with only what they record."""
    first = next(iter(metas.values()))
    counts = first.get("splits") or counts or {}
    views = (first.get("views") or {}).get("count", 0) if isinstance(first.get("views"), dict) else 0
    rows = {
        "Dataset": f"{html.escape(str(source.get('dataset') or source.get('handle')))} "
                   f"(images read from {html.escape(str(source.get('root')))})",
        "Images": ", ".join(f"{html.escape(str(split))} {n}" for split, n in counts.items())
                  + (f"; {views} augmented view(s) of each train image" if views else ""),
    }
    if splits:
        rows["Splits"] = "; ".join(f"{html.escape(s)}: {html.escape(str(entry['how']))}" for s, entry in splits.items())
    for name, meta in metas.items():
        pretrained = {True: "pretrained: true", False: "<b>pretrained: false</b>"}.get(meta.get("pretrained"),
                                                                                        "pretrained: not recorded")
        if not all(key in meta for key in features_io.BACKBONE_KEYS):
            recorded = sorted(k for k in meta if k != "classes")
            rows[f"Features {html.escape(name)}"] = (
                f"written outside the extract stage (by another producer); {pretrained}; meta.json records "
                f"{html.escape(', '.join(recorded)) if recorded else 'only the classes'}")
            continue
        transform = meta.get("transform") or {}
        weights = html.escape(f"{meta.get('weights')}" + (f", checkpoint {meta['checkpoint']}"
                                                          if meta.get("checkpoint") else ""))
        speed = (meta.get("speed") or {}).get("images_per_second")
        rows[f"Backbone {html.escape(name)}"] = (
            f"{html.escape(str(meta.get('source', '')))} {html.escape(str(meta.get('arch', 'unknown')))}, weights "
            f"{weights}; {pretrained}; dim {meta.get('feature_dim')}; "
            + html.escape(f"crop {transform.get('crop_size')}, resize {transform.get('resize_size')}, "
                          f"{meta.get('precision')} on {meta.get('device')}, decode {meta.get('decode')}, "
                          f"batch {meta.get('batch_size')}, engine {meta.get('engine', 'local')}")
            + (f"; {speed:,.0f} images/s" if speed else ""))
    rows["Code"] = html.escape(code_version)
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows.items())
    return scroll(f"<table class='about' id='about'>{cells}</table>")


def learning_curve_section(curves: dict[str, pd.DataFrame], readings: dict[str, str]) -> str:
    """The learning curves by pictures, a panel per backbone, and each pair's reading."""
    items = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(text)}</li>" for name, text in readings.items())
    return ("<h2 id='learning-curve'>Would more pictures help?</h2>"
            "<p>Grouped-CV accuracy on growing shares of train's original pictures (whole pictures with all their "
            "copies, stratified by class; the classifier's own selection nested at each size), with 95% intervals, "
            "a panel per backbone on a shared axis. "
            "The last point is the leaderboard's grouped-CV figure.</p>"
            + img_tag(png(learning_curve_figure(curves)), alt="learning curve by pictures")
            + f"<ul class='readings'>{items}</ul>")


def backbone_section(name: str, feats: features_io.Features, history: pd.DataFrame | None) -> list[str]:
    """A map of a bounded sample of one backbone's embeddings (memory does not grow with the dataset), and its
    linear head's training curve."""
    X, labels, split_names, total = embedding_sample(feats, limit=MAP_POINTS)
    parts = [f"<h2 id='backbone-{html.escape(name)}'>Backbone {html.escape(name)}</h2>",
             "<h3>Embedding map</h3>", img_tag(png(embedding_map_figure(X, labels, split_names)), alt="embedding map")]
    if len(X) < total:
        parts.append(f"<p>{len(X):,} of {total:,} images, a stratified sample (by split and class, seeded).</p>")
    if history is not None:
        parts += ["<h3>Linear head training</h3>", img_tag(png(history_figure(history)), alt="training")]
    return parts


def build_report(*, leaderboard: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                 feats: dict[str, features_io.Features], histories: dict[str, pd.DataFrame], image_root: Path,
                 source: dict, code_version: str, learning_curves: dict[str, pd.DataFrame] | None = None,
                 learning_readings: dict[str, str] | None = None, splits: dict[str, dict] | None = None,
                 label_issues: str | None = None, decision: dict | None = None) -> str:
    """The report page as HTML text; ``predictions``, ``learning_curves`` and ``learning_readings`` keyed by
    ``<backbone>/<classifier>``, ``feats`` and ``histories`` by backbone; ``splits``: how each split was made;
    ``decision``: comparison.json's ``"decision"``, when there."""
    classes = next(iter(feats.values())).classes
    best = rank_order(leaderboard)[0]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Backbone and classifier report</title>"
             f"<style>{STYLE}</style></head><body><h1>Frozen-embedding backbones and classifiers: report</h1>",
             about_table(metas={name: f.meta for name, f in feats.items()}, source=source, code_version=code_version,
                         counts={split: len(f.paths) for split, f in next(iter(feats.values())).splits.items()},
                         splits=splits)]
    # backbones with a row whose pretrained is not true: random weights, or weights nobody vouched for
    unverified = list(dict.fromkeys(leaderboard.loc[~flags(leaderboard["pretrained"]), "backbone"]))
    if unverified:
        parts.append(f"<p class='warn'><b>Random or unverified backbone weights (pretrained: false): "
                     f"{html.escape(', '.join(unverified))}.</b> Their results test the machinery only.</p>")
    parts += ["<h2 id='leaderboard'>Leaderboard</h2>",
              "<p>Every backbone/classifier pair, ranked by accuracy under cross-validation grouped by original "
              "picture, all on the same folds: <i>CV p vs best</i> is a corrected paired t-test, Holm-adjusted. "
              + ("<i>P(best)</i>: the probability that the pair is the best, with its 95% rank interval; "
                 "<i>≈ best</i>: practically equivalent to the best. " if "p_best" in leaderboard else "")
              + "Test accuracy with a Wilson 95% interval; exact McNemar p-values on the same test images.</p>",
              scroll(leaderboard_table(leaderboard).to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                                            na_rep="–", classes="leaderboard"))]
    parts.append(cost_section(leaderboard, decision))
    parts += ["<h2 id='grid'>Backbone × classifier</h2>", img_tag(png(grid_figure(leaderboard)), alt="grid")]
    leading, chosen = leading_pairs(leaderboard)
    parts += ["<h2 id='confusion'>Test confusion matrices</h2>",
              f"<p>The {len(leading)} leading pair(s), {chosen}; every pair's test predictions are in "
              "<code>artifacts/plots/confusion/&lt;backbone&gt;/&lt;classifier&gt;.csv</code>.</p>"
              if len(leading) < len(predictions) else "",
              img_tag(png(confusion_figure({p: predictions[p] for p in leading}, classes)), alt="confusion matrices")]
    parts += ["<h2 id='per-class'>Per-class precision and recall (test)</h2>",
              "<p>A row per pair, by rank; P precision, R recall; n: the class's test images.</p>",
              scroll(per_class_table({p: predictions[p] for p in rank_order(leaderboard)}, classes)
                     .to_html(float_format=lambda v: f"{v:.2f}"))]
    parts += [f"<h2 id='misclassified'>Misclassified test images ({html.escape(best)}, best by grouped CV)</h2>",
              misclassified_gallery(predictions[best], image_root)]
    if label_issues:
        parts.append(label_issues)
    if learning_curves:
        parts.append(learning_curve_section(learning_curves, learning_readings or {}))
    for name, f in feats.items():
        parts += backbone_section(name, f, histories.get(name))
    parts.append("</body></html>")
    return "\n".join(parts)
