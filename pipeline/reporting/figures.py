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


def confusion_figure(predictions: dict[str, pd.DataFrame], classes: list[str], *, per_row: int = 3) -> plt.Figure:
    """One test-set confusion matrix per classifier, counts in the cells, ``per_row`` to a row."""
    columns = min(per_row, len(predictions))
    rows = -(-len(predictions) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(predictions):]:
        ax.set_axis_off()
    for ax, (name, frame) in zip(axes.flat, predictions.items()):
        test = frame[frame["split"] == "test"]
        cm = confusion_matrix(test["true"], test["predicted"], labels=classes)
        ax.imshow(cm, cmap="Blues")
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > cm.max() / 2 else "black")
        ax.set(title=name, xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted")
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
    for row in axes:
        row[0].set_ylabel("true")
    fig.tight_layout()
    return fig


def per_class_table(predictions: dict[str, pd.DataFrame], classes: list[str]) -> pd.DataFrame:
    """Test precision and recall per class and classifier."""
    rows = []
    for name, frame in predictions.items():
        test = frame[frame["split"] == "test"]
        precision, recall, _, support = precision_recall_fscore_support(
            test["true"], test["predicted"], labels=classes, zero_division=0)
        for c, p, r, n in zip(classes, precision, recall, support):
            rows.append({"classifier": name, "class": c, "precision": p, "recall": r, "test images": n})
    return pd.DataFrame(rows)


def embedding_map_figure(X: np.ndarray, labels: list[str], splits: list[str], *, seed: int = 0,
                         tsne_max: int = 2000) -> plt.Figure:
    """PCA and t-SNE maps of the embeddings, coloured by class, marked by split."""
    X = np.asarray(X, dtype=np.float64)
    maps = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(X)}
    if 5 <= len(X) <= tsne_max:
        perplexity = float(min(30, (len(X) - 1) / 3))
        maps["t-SNE"] = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(X)
    fig, axes = plt.subplots(1, len(maps), figsize=(6 * len(maps), 5), squeeze=False)
    classes = sorted(set(labels))
    markers = {"train": ".", "valid": "s", "test": "^"}
    labels_arr, splits_arr = np.array(labels), np.array(splits)
    for ax, (title, points) in zip(axes[0], maps.items()):
        for ci, c in enumerate(classes):
            for split, marker in markers.items():
                mask = (labels_arr == c) & (splits_arr == split)
                if mask.any():
                    ax.scatter(*points[mask].T, s=14 if split == "train" else 30, marker=marker,
                               color=plt.cm.tab10(ci), alpha=0.7, label=f"{c} ({split})")
        ax.set(title=title, xticks=[], yticks=[])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
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
    """Grouped-CV accuracy by original pictures, one line per classifier, its 95% interval as a band."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, points in curves.items():
        points = points.sort_values("pictures")
        line, = ax.plot(points["pictures"], points["accuracy"], marker="o", label=name)
        ax.fill_between(points["pictures"], points["accuracy_low"], points["accuracy_high"], color=line.get_color(),
                        alpha=0.15)
    ax.set(xlabel="original pictures in train", ylabel="grouped-CV accuracy")
    ax.legend(loc="best")
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
