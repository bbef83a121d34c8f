"""Figures and tables for the visual report, from plain arrays and DataFrames.

Rendered headless (matplotlib's Agg backend) to PNG bytes, so the report is one
self-contained HTML file.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def img_tag(data: bytes, *, mime: str = "image/png", alt: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


MANY_CLASSES = 15  # past this a confusion matrix drops its counts and a map its class legend: they would not read


def colours(count: int) -> list:
    """One colour per item, distinct up to 20 (tab10, tab20); past that sampled along a perceptual map, since
    a qualitative map would repeat or, indexed past its end, give every later item its last colour."""
    if count <= 20:
        palette = plt.cm.tab10 if count <= 10 else plt.cm.tab20
        return [palette(i) for i in range(count)]
    return [plt.cm.turbo(i / (count - 1)) for i in range(count)]


def panel_grid(count: int, *, per_row: int, width: float, height: float, **shared) -> tuple[plt.Figure, np.ndarray]:
    """A grid of ``count`` panels, ``per_row`` to a row, each ``width`` x ``height`` inches; spare cells blank."""
    columns = max(1, min(per_row, count))
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False, **shared)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    return fig, axes


def confusion_figure(predictions: dict[str, pd.DataFrame], classes: list[str]) -> plt.Figure:
    """One test-set confusion matrix per classifier, three to a row, counts in the cells; past
    ``MANY_CLASSES`` the colour alone, two to a row and larger, so that the class names stay apart."""
    many = len(classes) > MANY_CLASSES
    side = max(3.8, 0.13 * len(classes) + 2) if many else 3.8
    fig, axes = panel_grid(len(predictions), per_row=2 if many else 3, width=side, height=side - 0.2)
    for ax, (name, frame) in zip(axes.flat, predictions.items()):
        test = frame[frame["split"] == "test"]
        cm = confusion_matrix(test["true"], test["predicted"], labels=classes)
        ax.imshow(cm, cmap="Blues")
        for (i, j), count in [] if many else np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > cm.max() / 2 else "black")
        ax.set(title=name, xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted")
        ax.set_xticklabels(classes, rotation=90 if many else 45, ha="center" if many else "right",
                           fontsize=6 if many else None)
        ax.set_yticklabels(classes, fontsize=6 if many else None)
    for row in axes:
        row[0].set_ylabel("true")
    fig.tight_layout()
    return fig


def per_class_table(predictions: dict[str, pd.DataFrame], classes: list[str]) -> pd.DataFrame:
    """Test precision (P) and recall (R) of each class, one row per pair: rows stay few columns wide enough to
    compare as pairs are added. Every pair is tested on the same images, so each class header gives its
    test support once."""
    rows, support = {}, np.zeros(len(classes), dtype=int)
    for name, frame in predictions.items():
        test = frame[frame["split"] == "test"]
        precision, recall, _, support = precision_recall_fscore_support(
            test["true"], test["predicted"], labels=classes, zero_division=0)
        rows[name] = np.column_stack([precision, recall]).ravel()
    header = pd.MultiIndex.from_tuples([(f"{c} (n={n})", m) for c, n in zip(classes, support) for m in "PR"])
    return pd.DataFrame.from_dict(rows, orient="index", columns=header)


def embedding_map_figure(X: np.ndarray, labels: list[str], splits: list[str], *, seed: int = 0) -> plt.Figure:
    """PCA and t-SNE maps of the embeddings, coloured by class, marked by split; the legend names the classes
    up to ``MANY_CLASSES``, the splits always. t-SNE maps every row given: the caller bounds them (a sample)."""
    X = np.asarray(X, dtype=np.float64)
    maps = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(X)}
    if len(X) >= 5:
        perplexity = float(min(30, (len(X) - 1) / 3))
        maps["t-SNE"] = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(X)
    fig, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps), 5), squeeze=False)
    classes = sorted(set(labels))
    markers = {"train": ".", "valid": "s", "test": "^"}
    labels_arr, splits_arr = np.array(labels), np.array(splits)
    palette = colours(len(classes))
    for ax, (title, points) in zip(axes[0], maps.items()):
        for colour, c in zip(palette, classes):
            for split, marker in markers.items():
                mask = (labels_arr == c) & (splits_arr == split)
                if mask.any():
                    ax.scatter(*points[mask].T, s=14 if split == "train" else 30, marker=marker, color=colour,
                               alpha=0.7)
        ax.set(title=title, xticks=[], yticks=[])
    handles = [plt.Line2D([], [], color="grey", marker=m, linestyle="none") for m in markers.values()]
    names = [*markers]
    if len(classes) <= MANY_CLASSES:
        handles += [plt.Line2D([], [], color=colour, marker="o", linestyle="none") for colour in palette]
        names += classes
    axes[0][-1].legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5),
                       title=None if len(classes) <= MANY_CLASSES else f"{len(classes)} classes, a colour each")
    return fig


def history_figure(history: pd.DataFrame) -> plt.Figure:
    """The linear head's losses per epoch, and valid accuracy."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for column in ["train_loss", "valid_loss"]:
        if column in history:
            ax.plot(history["epoch"], history[column], label=column)
    ax.set(xlabel="epoch", ylabel="cross-entropy")
    if "valid_accuracy" in history:
        twin = ax.twinx()
        twin.plot(history["epoch"], history["valid_accuracy"], color="grey", linestyle=":", label="valid_accuracy")
        twin.set_ylabel("valid accuracy")
        twin.legend(loc="upper center")
    ax.legend(loc="upper right")
    return fig


def learning_curve_figure(curves: dict[str, pd.DataFrame]) -> plt.Figure:
    """Grouped-CV accuracy by original pictures, a small panel per backbone (keys ``<backbone>/<classifier>``)
    with its classifiers as lines and 95% bands; one y axis and one colour per classifier across panels, so
    that 24 lines stay apart."""
    panels: dict[str, dict[str, pd.DataFrame]] = {}
    for name, points in curves.items():
        backbone, _, classifier = name.rpartition("/")
        panels.setdefault(backbone, {})[classifier] = points.sort_values("pictures")
    names = list(dict.fromkeys(c for p in panels.values() for c in p))
    colour = dict(zip(names, colours(len(names))))
    fig, axes = panel_grid(len(panels), per_row=3, width=4.2, height=3.0, sharey=True)
    for ax, (backbone, lines) in zip(axes.flat, panels.items()):
        for classifier, points in lines.items():
            ax.plot(points["pictures"], points["accuracy"], marker="o", markersize=3, color=colour[classifier])
            ax.fill_between(points["pictures"], points["accuracy_low"], points["accuracy_high"],
                            color=colour[classifier], alpha=0.15)
        ax.set(title=backbone, xlabel="original pictures in train")
    for row in axes:
        row[0].set_ylabel("grouped-CV accuracy")
    fig.legend([plt.Line2D([], [], color=c, marker="o") for c in colour.values()], names, ncol=len(names),
               loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def cost_figure(table: pd.DataFrame, *, front: np.ndarray, equivalent: np.ndarray) -> plt.Figure:
    """Grouped-CV accuracy (95% interval as error bars) against ``ms_per_image`` on a log axis: colour names
    the backbone, marker the classifier, so 24 points need no labels; filled markers are the pairs practically
    equivalent to the best (``equivalent``); the Pareto ``front`` (a mask too) is joined, each of its pairs
    marked with its rank (short labels do not collide where names would)."""
    backbones = list(dict.fromkeys(table["backbone"]))
    classifiers = list(dict.fromkeys(table["classifier"]))
    palette, shapes = colours(len(backbones)), "osD^vP*Xph"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r, filled in zip(table.itertuples(), equivalent):
        colour = palette[backbones.index(r.backbone)]
        ax.errorbar(r.ms_per_image, r.cv_accuracy, yerr=[[r.cv_accuracy - r.cv_accuracy_ci95_low],
                                                         [r.cv_accuracy_ci95_high - r.cv_accuracy]],
                    marker=shapes[classifiers.index(r.classifier) % len(shapes)], markersize=8, color=colour,
                    markerfacecolor=colour if filled else "white", elinewidth=0.8, capsize=2, linestyle="none")
    edge = table[front].sort_values("ms_per_image")
    ax.step(edge["ms_per_image"], edge["cv_accuracy"], where="post", color="black", linewidth=1, alpha=0.6)
    for r in edge.itertuples():
        ax.annotate(f"#{r.rank}", (r.ms_per_image, r.cv_accuracy), xytext=(7, 4), textcoords="offset points",
                    fontsize=9, fontweight="bold")
    handles = ([plt.Line2D([], [], color=c, linewidth=6) for c in palette]
               + [plt.Line2D([], [], color="grey", marker=shapes[i % len(shapes)], markerfacecolor="white",
                             linestyle="none") for i in range(len(classifiers))]
               + [plt.Line2D([], [], color="grey", marker="o", linestyle="none"),
                  plt.Line2D([], [], color="black", alpha=0.6)])
    ax.legend(handles, [*backbones, *classifiers, "filled: equivalent to the best", "Pareto front (#rank)"],
              fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set(xscale="log", xlabel="ms per image (backbone + classifier, log scale)", ylabel="grouped-CV accuracy")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def thumbnail_jpeg(image, *, size: int = 160) -> bytes:
    image = image.copy()
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def grid_figure(table: pd.DataFrame) -> plt.Figure:
    """Grouped-CV accuracy of every backbone x classifier pair as a heatmap, each cell with its 95% interval."""
    backbones = list(dict.fromkeys(table["backbone"]))
    classifiers = sorted(dict.fromkeys(table["classifier"]))
    values = np.full((len(backbones), len(classifiers)), np.nan)
    fig, ax = plt.subplots(figsize=(1.9 * len(classifiers) + 2.5, 0.9 * len(backbones) + 1.4))
    for r in table.itertuples():
        i, j = backbones.index(r.backbone), classifiers.index(r.classifier)
        values[i, j] = r.cv_accuracy
        ax.text(j, i, f"{r.cv_accuracy:.3f}\n[{r.cv_accuracy_ci95_low:.2f}, {r.cv_accuracy_ci95_high:.2f}]",
                ha="center", va="center", fontsize=8)
    image = ax.imshow(values, cmap="YlGn", vmin=np.nanmin(values) - 0.05, vmax=np.nanmax(values) + 0.02)
    ax.set(xticks=range(len(classifiers)), yticks=range(len(backbones)), xlabel="classifier",
           title="grouped-CV accuracy [95% interval]")
    ax.set_xticklabels(classifiers)
    ax.set_yticklabels(backbones)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig
