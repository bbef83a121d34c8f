"""The report's HTML parts: class names that are not Python names, and a page that stays readable at many pairs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.common import features as features_io
from pipeline.evaluate.leaderboard import render_markdown
from pipeline.reporting import page as report_page
from pipeline.reporting.decision import pareto_front
from pipeline.reporting.page import build_report, learning_curve_section, misclassified_gallery
from pipeline.reporting.sample import embedding_sample, stratified_sample

DECISION = ["p_best", "rank_low", "rank_high", "equivalent", "params_millions", "gflops", "images_per_second",
            "classifier_ms_per_1000", "model_bytes", "ms_per_image", "load_average"]


def fabricated_run(root, *, backbones, classifiers, classes, train_per_class=6, held_out_per_class=2, dim=16,
                   unverified=1, seed=0):
    """What the report stage reads, made up: features folders (the first ``unverified`` backbones with random
    weights), predictions, training and learning curves, a leaderboard with compare's decision and cost columns,
    and comparison.json's ``decision``. Returns build_report's keyword arguments."""
    rng = np.random.default_rng(seed)
    feats, predictions, curves, readings, histories, rows = {}, {}, {}, {}, {}, []
    for b, backbone in enumerate(backbones):
        directory = root / "features" / backbone
        directory.mkdir(parents=True)
        index = []
        for split, per_class in [("train", train_per_class), ("valid", held_out_per_class),
                                 ("test", held_out_per_class)]:
            y = np.repeat(np.arange(len(classes)), per_class)
            out = features_io.allocate(directory, split, len(y), dim)
            out[:] = rng.normal(size=(len(y), dim)) + 3 * np.eye(len(classes), dim)[y]
            out.flush()
            index += [(split, f"{split}/{classes[c]}/{i}.png", classes[c]) for i, c in enumerate(y)]
        pd.DataFrame(index, columns=features_io.INDEX_COLUMNS).to_csv(directory / features_io.INDEX, index=False)
        (directory / features_io.META).write_text(json.dumps({"classes": classes, "pretrained": b >= unverified}))
        feats[backbone] = features_io.load(directory, mmap=True)
        histories[backbone] = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.2, 0.7, 0.5]})
        held = [r for r in index if r[0] != "train"]
        for classifier in classifiers:
            pair, skill = f"{backbone}/{classifier}", 0.4 + 0.5 * rng.random()
            true = np.array([r[2] for r in held])
            predicted = np.where(rng.random(len(held)) < skill, true, rng.choice(classes, len(held)))
            predictions[pair] = pd.DataFrame({"image": [r[1] for r in held], "split": [r[0] for r in held],
                                              "true": true, "predicted": predicted,
                                              **{f"p_{c}": np.where(predicted == c, 0.7, 0.1) for c in classes}})
            sizes = np.array([0.25, 0.5, 1.0]) * train_per_class * len(classes)
            curves[pair] = pd.DataFrame({"pictures": sizes, "accuracy": skill - np.array([0.2, 0.08, 0])}).assign(
                accuracy_low=lambda f: f["accuracy"] - 0.05, accuracy_high=lambda f: f["accuracy"] + 0.05)
            readings[pair] = "Flat over the last two points."
            test = true[[r[0] == "test" for r in held]] == predicted[[r[0] == "test" for r in held]]
            rows.append({"backbone": backbone, "classifier": classifier, "method": classifier, "cv_accuracy": skill,
                         "cv_accuracy_std": 0.02, "cv_accuracy_ci95_low": skill - 0.04,
                         "cv_accuracy_ci95_high": skill + 0.04, "cv_p_vs_best_holm": 0.5, "cv_leaky_accuracy": skill,
                         "test_accuracy": test.mean(), "test_accuracy_ci95_low": test.mean() - 0.1,
                         "test_accuracy_ci95_high": test.mean() + 0.1, "test_balanced_accuracy": test.mean(),
                         "test_macro_f1": test.mean(), "test_log_loss": 1.0, "test_ece": 0.05,
                         "mcnemar_p_vs_head": 0.3, "mcnemar_p_vs_runner_up": np.nan, "test_n": len(test),
                         "feature_dim": dim, "extract_images_per_second": 100.0, "pretrained": b >= unverified,
                         "ms_per_image": 2.0 ** (b + rng.random()), "params_millions": 5.0 * (b + 1),
                         "gflops": 0.5 * (b + 1), "images_per_second": 500 / (b + 1), "classifier_ms_per_1000": 3.0,
                         "model_bytes": 10_000, "load_average": 0.4})
    table = pd.DataFrame(rows).sort_values("cv_accuracy", ascending=False, ignore_index=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    weights = np.exp(40 * table["cv_accuracy"])
    table["p_best"] = weights / weights.sum()
    table["rank_low"] = (table["rank"] - 2).clip(lower=1)
    table["rank_high"] = (table["rank"] + 2).clip(upper=len(table))
    table["equivalent"] = table["cv_accuracy"] >= table["cv_accuracy"].iloc[0] - 0.05
    best = f"{table['backbone'].iloc[0]}/{table['classifier'].iloc[0]}"
    decision = {"best": best, "equivalence": 0.01, "equivalent": [best], "cheapest_equivalent": best,
                "sentence": f"The cheapest pair practically equivalent to the best is {best}.",
                "method": "a bootstrap of pictures over the out-of-fold predictions",
                "leaves_out": "training-set variance",
                "selection": {"observed": float(table["cv_accuracy"].iloc[0]), "corrected": 0.61,
                              "method": "bootstrap bias-corrected CV", "pairs": len(table)}}
    return {"leaderboard": table, "predictions": predictions, "feats": feats, "histories": histories,
            "image_root": root, "source": {"dataset": "fabricated", "root": str(root)}, "code_version": "test",
            "learning_curves": curves, "learning_readings": readings, "decision": decision}


def test_the_gallery_takes_class_names_that_are_not_python_names(tmp_path):
    """Class names are folder names: spaces, digits first, keywords. Each names a probability column."""
    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "dog.png")
    predictions = pd.DataFrame({"image": ["dog.png"], "split": ["test"], "true": ["2 sad"],
                                "predicted": ["golden retriever"], "p_2 sad": [0.25], "p_golden retriever": [0.75]})
    page = misclassified_gallery(predictions, tmp_path)
    assert "predicted <b>golden retriever</b> (p=0.75)" in page and "<img" in page


def test_the_learning_curve_section_draws_every_classifier_and_gives_each_reading():
    curve = pd.DataFrame({"pictures": [74, 148, 296], "accuracy": [0.3, 0.4, 0.5], "accuracy_low": [0.2, 0.3, 0.4],
                          "accuracy_high": [0.4, 0.5, 0.6]})
    page = learning_curve_section({"knn": curve, "svm": curve.assign(accuracy=0.45)},
                                  {"knn": "Still rising at 100% (+0.100): more pictures would likely help.",
                                   "svm": "Flat over the last two points."})
    assert "id='learning-curve'" in page and page.count("data:image/png;base64,") == 1
    assert "<b>knn</b>: Still rising at 100% (+0.100)" in page and "<b>svm</b>: Flat" in page


def test_at_many_pairs_per_class_scores_are_a_row_per_pair_and_only_the_leading_confusions_are_drawn(tmp_path):
    run = fabricated_run(tmp_path, backbones=["rand", "b1", "b2"], classifiers=["head", "knn", "svm"],
                         classes=["cat", "2 dog", "NA"])
    page = build_report(**run)
    per_class = page[page.index("id='per-class'"):page.index("id='misclassified'")]
    ranked = [f"{b}/{c}" for b, c in zip(run["leaderboard"]["backbone"], run["leaderboard"]["classifier"])]
    assert re.findall(r"<th>([^<]+/[^<]+)</th>", per_class) == ranked  # one row per pair, by rank
    assert "cat (n=2)" in per_class and "2 dog (n=2)" in per_class  # each class's test support, once
    confusion = page[page.index("id='confusion'"):page.index("id='per-class'")]
    shown = int(run["leaderboard"]["equivalent"].sum())
    assert f"The {min(shown, 6)} leading pair(s)" in confusion and "artifacts/plots/confusion/" in confusion
    assert "pretrained: false): rand.</b>" in page  # the banner names the backbone it is about
    assert page.count("<table") == page.count("<div class='scroll'><table")  # every table scrolls in its own box


def test_the_leaderboard_shows_the_decision_and_a_cost_section_when_compare_wrote_them(tmp_path):
    run = fabricated_run(tmp_path, backbones=["b1", "b2"], classifiers=["head", "knn"], classes=["a", "b"],
                         unverified=0)
    page = build_report(**run)
    for shown in ["P(best)", "rank 95%", "≈ best", "ms / image", "id='cost'", "Pareto front",
                  "The cheapest pair practically equivalent to the best is",
                  "selection-corrected estimate 0.610</b> (bootstrap bias-corrected CV)", "training-set variance"]:
        assert shown in page, shown
    assert "Random or unverified" not in page and "dim</th>" not in page  # dim is in the About table


def test_an_older_comparison_without_decision_columns_still_makes_a_page(tmp_path):
    run = fabricated_run(tmp_path, backbones=["b1", "b2"], classifiers=["head", "knn"], classes=["a", "b"])
    run["leaderboard"] = run["leaderboard"].drop(columns=DECISION)
    page = build_report(**{**run, "decision": None})
    assert "P(best)" not in page and "No cost in this leaderboard" in page
    assert "The 4 leading pair(s)" not in page  # four pairs: all drawn, no sentence about the rest


def test_the_markdown_banner_names_the_backbones_with_random_weights(tmp_path):
    run = fabricated_run(tmp_path, backbones=["rand", "b1"], classifiers=["head"], classes=["a", "b"])
    text = render_markdown(run["leaderboard"], {"backbones": []})
    assert "**RANDOM OR UNVERIFIED BACKBONE WEIGHTS (pretrained: false): rand.**" in text


@pytest.mark.parametrize(("cost", "accuracy", "front"), [
    ([1, 2, 3], [0.5, 0.6, 0.7], [True, True, True]),  # each dearer pair is also better
    ([1, 2, 3], [0.7, 0.6, 0.5], [True, False, False]),  # the cheapest is also the best
    ([1, 1, 2, 4], [0.6, 0.6, 0.6, 0.8], [True, True, False, True]),  # a tie stays; as good but dearer does not
])
def test_the_pareto_front_keeps_the_pairs_no_other_beats_on_both_cost_and_accuracy(cost, accuracy, front):
    assert pareto_front(np.array(cost), np.array(accuracy)).tolist() == front


def test_the_embedding_sample_is_bounded_seeded_and_keeps_every_split_and_class(tmp_path, monkeypatch):
    cells = np.repeat(np.arange(6), [5000, 3000, 1000, 40, 3, 200])
    rows = stratified_sample(cells, limit=500, minimum=5, seed=0)
    counts = np.bincount(cells[rows], minlength=6)
    assert len(rows) == 500 and len(set(rows)) == len(rows)
    assert counts[4] == 3 and counts[3] >= 5  # a small cell keeps at least a few (or all it has)
    assert abs(counts[0] / counts[1] - 5 / 3) < 0.1  # large cells in proportion
    assert rows.tolist() == stratified_sample(cells, limit=500, minimum=5, seed=0).tolist()
    assert stratified_sample(cells[:100], limit=500).tolist() == list(range(100))  # small data: every row
    run = fabricated_run(tmp_path, backbones=["b"], classifiers=["head"], classes=list("abcd"), train_per_class=300)
    X, labels, splits, total = embedding_sample(run["feats"]["b"], limit=200)
    assert total == 4 * (300 + 2 + 2) and len(X) == len(labels) == len(splits) == 200
    assert {(s, c) for s, c in zip(splits, labels)} == {(s, c) for s in ("train", "valid", "test") for c in "abcd"}
    monkeypatch.setattr(report_page, "MAP_POINTS", 200)
    section = "".join(report_page.backbone_section("b", run["feats"]["b"], None))
    assert "200 of 1,216 images, a stratified sample" in section
