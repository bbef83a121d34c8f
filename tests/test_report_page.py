"""The report's HTML parts that read predictions by class name."""

from __future__ import annotations

import pandas as pd
from PIL import Image

from pipeline.reporting.page import misclassified_gallery


def test_the_gallery_takes_class_names_that_are_not_python_names(tmp_path):
    """Class names are folder names: spaces, digits first, keywords. Each names a probability column."""
    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "dog.png")
    predictions = pd.DataFrame({"image": ["dog.png"], "split": ["test"], "true": ["2 sad"],
                                "predicted": ["golden retriever"], "p_2 sad": [0.25], "p_golden retriever": [0.75]})
    page = misclassified_gallery(predictions, tmp_path)
    assert "predicted <b>golden retriever</b> (p=0.75)" in page and "<img" in page
