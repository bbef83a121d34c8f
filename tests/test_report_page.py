"""The report's HTML parts that read predictions by class name."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from pipeline.reporting.page import learning_curve_section, misclassified_gallery


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
