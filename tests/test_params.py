import os
from pathlib import Path

import pytest
import yaml

from pipeline.common.errors import PipelineError
from pipeline.common.params import SECTIONS, ParamsError, load_section, parse_section, read_params

PROJECT = Path(__file__).resolve().parents[1]


def test_the_shipped_params_file_is_valid():
    for name in SECTIONS:
        load_section(name, PROJECT / "params.yaml")


def _write(tmp_path, **overrides):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_unknown_key_is_named_with_the_known_ones(tmp_path):
    path = _write(tmp_path, cv__fold=5)
    with pytest.raises(ParamsError, match=r"Unknown key\(s\) cv.fold .*known keys of 'cv'"):
        load_section("cv", path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"extract__batch_size": 0}, r"extract.batch_size=0 is out of range: it must be >= 1"),
        ({"extract__batch_size": "big"}, r"extract.batch_size='big' has the wrong type: expected int"),
        ({"extract__device": "tpu"}, r"extract.device='tpu' is not allowed: choose one of \['auto'"),
        ({"cv__folds": 1}, r"cv.folds=1 is out of range"),
        ({"cv__n_jobs": 0}, r"cv.n_jobs=0 is invalid"),
        ({"audit__on_leak": "ignore"}, r"audit.on_leak='ignore' is not allowed: choose one of \['error', 'warn', 'drop'\]"),
        ({"audit__near_duplicate_correlation": 1.5}, r"audit.near_duplicate_correlation=1.5 is out of range: it must be "
                                                     r"in \[-1, 1\]"),
        ({"extract__decode": "gpu"}, r"extract.decode='gpu' is not allowed: choose one of \['auto', 'cpu', 'device'\]"),
        ({"views__count": True}, r"views.count=True has the wrong type"),
        ({"learning_curve__fractions": [0.5, 0]}, r"learning_curve.fractions=\[0.5, 0\] is out of range: .* \(0, 1\]"),
        ({"learning_curve__fractions": [0.5, 1.5]}, r"learning_curve.fractions=\[0.5, 1.5\] is out of range"),
        ({"learning_curve__fractions": ["half"]}, r"learning_curve.fractions=\['half'\] must be a list of numbers"),
        ({"learning_curve__fractions": []}, r"learning_curve.fractions=\[\] must be a list of numbers"),
        ({"learning_curve__fractions": 0.5}, r"learning_curve.fractions=0.5 has the wrong type: expected list"),
        ({"learning_curve__fractions": [0.5, 0.5]}, r"learning_curve.fractions=\[0.5, 0.5\] repeats a value"),
        ({"learning_curve__draws": 0}, r"learning_curve.draws=0 is out of range: it must be >= 1"),
        ({"learning_curve__enabled": "yes"}, r"learning_curve.enabled='yes' has the wrong type: expected bool"),
    ],
)
def test_bad_values_name_the_parameter_and_the_allowed_values(tmp_path, override, message):
    path = _write(tmp_path, **override)
    section = next(iter(override)).split("__")[0]
    with pytest.raises(ParamsError, match=message):
        load_section(section, path)


def test_learning_curve_fractions_below_one_are_the_ones_computed_in_order():
    params = parse_section(SECTIONS["learning_curve"], {"enabled": True, "fractions": [0.75, "5e-1", 1, 0.25],
                                                        "draws": 2, "seed": 0}, "learning_curve")
    assert params.below_full == [0.25, 0.5, 0.75]  # 1 is the train stage's point, never recomputed


def test_ints_are_accepted_where_floats_are_expected():
    params = parse_section(SECTIONS["views"], {"count": 1, "crop_scale_min": 1, "hflip": 0, "jitter": 0, "seed": 0,
                                               "use": True}, "views")
    assert params.crop_scale_min == 1.0 and isinstance(params.crop_scale_min, float)


def test_missing_file_and_missing_section_are_clear(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        read_params(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("data: {}\n")
    with pytest.raises(ParamsError, match="Section 'cv' is missing"):
        load_section("cv", tmp_path / "p.yaml")


def test_prepare_catches_a_typo_in_any_section_before_work(tmp_path, monkeypatch):
    from pipeline.common.params import validate_all
    from tests.conftest import run_stage

    validate_all(PROJECT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["classifiers"]["svm"]["C"] = [0]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"classifiers.svm.C=\[0\] is invalid"):
        run_stage("prepare", tmp_path / "p.yaml")
    params["classifiers"]["svm"]["C"] = [1.0]
    params["classifiers"]["head"]["dropout"] = 1.5
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"classifiers.head.dropout=1.5 is out of range"):
        run_stage("prepare", tmp_path / "p.yaml")
    params["classifiers"]["head"]["dropout"] = 0.2
    params["backbones"]["efficientnet_b1"]["weights"] = "IMAGENET1K_V9"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match=r"backbones.efficientnet_b1.weights='IMAGENET1K_V9' is not a weights name"):
        run_stage("prepare", tmp_path / "p.yaml")
    params["backbones"]["efficientnet_b1"]["weights"] = None
    params["heads"] = {}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"Unknown section\(s\) \['heads'\]"):
        run_stage("prepare", tmp_path / "p.yaml")
    assert not (tmp_path / "artifacts").exists()  # nothing written


def test_stage_cli_reports_a_bad_parameter_in_one_line_without_a_traceback(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, extract__batch_size=0)
    from tests.conftest import stage_command

    module, argv = stage_command("prepare")
    result = subprocess.run([sys.executable, "-m", module, *argv, "--params", str(path)], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: extract.batch_size=0 is out of range: it must be >= 1."


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """UTF-8 (an editor's byte-order mark allowed), and a key written twice refused with its line, as DVC refuses it,
    where YAML alone would keep the last value silently."""
    shipped = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + shipped.encode())
    assert read_params(bom) == yaml.safe_load(shipped)
    twice = tmp_path / "twice.yaml"
    twice.write_text(shipped.replace("cv:\n", "cv:\n  folds: 4\n", 1))
    with pytest.raises(ParamsError, match=r"twice.yaml is not valid YAML at line \d+, column 3: the key 'folds' is "
                                          "written twice"):
        read_params(twice)
    assert yaml.safe_load(twice.read_text())["cv"]["folds"] == 5  # what plain YAML would have run with
