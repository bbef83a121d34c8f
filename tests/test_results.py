"""Model files: what the trusted-type list must cover, beyond what the small dvc repro trains."""

import numpy as np
import skops.io
from sklearn.calibration import CalibratedClassifierCV
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.evaluate.results import TRUSTED_TYPES
from pipeline.evaluate.svm import NewtonLinearSVC


def test_the_svm_above_exact_max_rows_loads_with_the_committed_trusted_types_and_predicts_the_same(tmp_path):
    """The Nystroem + Newton linear SVM (the pets default, too large for the exact SVC) in its calibration."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 16)).astype(np.float32), rng.integers(0, 4, 200)
    svm = Pipeline([("scale", StandardScaler()), ("nystroem", Nystroem(n_components=50, random_state=0)),
                    ("clf", NewtonLinearSVC())])
    model = CalibratedClassifierCV(svm, cv=3, method="sigmoid").fit(X, y)
    skops.io.dump({"model": model}, tmp_path / "model.skops")
    assert set(skops.io.get_untrusted_types(file=tmp_path / "model.skops")) <= set(TRUSTED_TYPES)
    loaded = skops.io.load(tmp_path / "model.skops", trusted=TRUSTED_TYPES)["model"]
    assert (loaded.predict_proba(X) == model.predict_proba(X)).all()
