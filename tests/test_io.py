import os
import signal
import subprocess
import time

import numpy as np
import pytest

from pipeline.common.io import atomic_path, write_json
from tests.conftest import SMALL_RUN, make_dataset, outputs, stage_process, write_params


def test_failure_inside_leaves_the_previous_output_untouched(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text().strip() == '{\n  "a": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_outputs_get_ordinary_permissions(tmp_path):
    write_json(tmp_path / "m.json", {})
    with atomic_path(tmp_path / "d", is_dir=True) as tmp:
        (tmp / "x").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.slow
def test_killed_extract_leaves_no_features_and_the_rerun_recovers(tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=10, augs=2)
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(data), "extract.batch_size": 2})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    stage = stage_process("extract", params)
    for before in ("prepare", "audit"):
        subprocess.run(stage_process(before, params), cwd=tmp_path, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(stage, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".extract-shards/*/*/.rows-*.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # mid-way through filling the (only) shard
    assert proc.poll() is None, "extract finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "features" / "efficientnet_b1").exists()
    assert not list(tmp_path.glob(".extract-shards/*/*/rows-*.npy"))  # no shard looks finished

    subprocess.run(stage, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert not list(tmp_path.glob(".features.tmp-*"))
    first = outputs(tmp_path)
    subprocess.run(stage, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert first == outputs(tmp_path)  # byte-identical embeddings, index and metadata (but its timing) on CPU
    assert np.load(tmp_path / "features" / "efficientnet_b1" / "train.npy").shape == (120, 1280)


@pytest.mark.slow
def test_killed_classifier_stage_leaves_no_outputs_and_the_rerun_recovers(tmp_path):
    from tests.test_train import foreign_features

    foreign_features(tmp_path / "features" / "efficientnet_b1", dim=256, groups_path=tmp_path / "artifacts" / "data" / "groups.csv")
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "evaluation.n_bootstrap": 5000,
                                                     "classifiers.logreg.C": [0.01, 0.1, 1.0, 10.0]})
    stage = stage_process("train", params, "logreg", without=("--manifest",))  # features made elsewhere
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(stage, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # kill once the final model is fitted, while evaluation runs
        if "selected" in line:
            break
    assert proc.poll() is None, "the stage finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    artifacts = tmp_path / "artifacts"
    assert sorted(p.name for p in artifacts.rglob("*") if p.is_file()) == ["folds.csv", "groups.csv"]  # inputs alone
    subprocess.run(stage, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert (artifacts / "metrics" / "efficientnet_b1" / "logreg.json").is_file()
    assert (artifacts / "models" / "efficientnet_b1" / "logreg" / "model.skops").is_file()


def test_outputs_of_a_set_change_together_or_not_at_all(tmp_path):
    from pipeline.common.io import OutputError, output_set

    first, second = tmp_path / "a.json", tmp_path / "b.csv"
    write_json(first, {"run": 1})
    second.write_text("run 1\n")
    (tmp_path / "c.txt").mkdir()  # the last output cannot be written: a folder stands in its place
    with pytest.raises(OutputError, match=r"Cannot write .*c.txt: a folder stands where a file should be"):
        with output_set() as out:
            out.write_json(first, {"run": 2})
            out.write_text(second, "run 2\n")
            out.write_text(tmp_path / "c.txt", "run 2")
    assert first.read_text().strip() == '{\n  "run": 1\n}' and second.read_text() == "run 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv", "c.txt"]  # no temporary left


def test_a_failed_rename_puts_back_the_outputs_already_replaced(tmp_path):
    from pipeline.common.io import OutputError, output_set

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    second.write_text("old b")
    with pytest.raises(OutputError, match=r"Cannot write .*b.txt"):
        with output_set() as out:
            out.write_text(first, "new a")
            out.path(second).unlink()  # its staged file is gone when the set is renamed into place
    assert first.read_text() == "old a" and second.read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_write_error_names_the_file_and_the_cause(tmp_path):
    from pipeline.common.io import OutputError, write_text

    (tmp_path / "out").write_text("a file where a folder should be")
    with pytest.raises(OutputError, match=r"Cannot write .*out/sub/r.txt: a file stands where a folder should be "
                                          r"\(.*out is a file\)"):
        write_text(tmp_path / "out" / "sub" / "r.txt", "x")


def test_a_file_size_limit_is_reported_as_one_line_in_a_stage_process(tmp_path):
    """ulimit -f, as a full disk: the write fails with EFBIG (Python ignores SIGXFSZ)."""
    import resource
    import sys

    code = ("from pathlib import Path\nfrom pipeline.common.cli import run\nfrom pipeline.common.io import write_text\n"
            "raise SystemExit(run(lambda argv: write_text(Path('big.txt'), 'x' * 100000) or 0))")
    (tmp_path / "big.txt").write_text("previous")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000)),
                            env={**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Cannot write big.txt: the file is too large"), result.stderr
    assert (tmp_path / "big.txt").read_text() == "previous" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("stop", ["ctrl-c", "error"])
def test_the_one_line_comes_after_the_progress_bar_of_a_stream_left_open(stop, capfd):
    """A stage stopped between two items of a generator that holds a progress bar (as extract's
    stream does): the bar closes when the generator is collected, and its line must not follow ours."""
    import sys

    from tqdm import tqdm

    from pipeline.common.cli import run
    from pipeline.common.errors import PipelineError

    def stream():
        with tqdm(total=3, desc="items", file=sys.stderr) as bar:
            for item in range(3):
                bar.update()
                yield item

    def main(argv):
        items = stream()
        next(items)
        raise KeyboardInterrupt if stop == "ctrl-c" else PipelineError("the second item is bad")

    code = run(main, [])
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "items:" in err and "Traceback" not in err
    assert (code, last) == ((130, "interrupted") if stop == "ctrl-c" else (2, "error: the second item is bad")), err


def test_a_thread_left_running_does_not_keep_the_stage_from_ending_with_its_line(tmp_path):
    """``ray.init`` left waiting on an address that never answers cannot be stopped, and finalising the
    interpreter under it aborted the process (exit -6, after our line). A thread recorded with
    ``leave_running`` makes ``run`` end the process itself: here one that never returns, which an
    ordinary exit would wait for forever."""
    import sys

    script = tmp_path / "stage.py"
    script.write_text(
        "import threading\n"
        "from pipeline.common.cli import leave_running, run\n"
        "from pipeline.common.errors import PipelineError\n"
        "def main(argv):\n"
        "    thread = threading.Thread(target=threading.Event().wait)  # not a daemon: exit would join it\n"
        "    thread.start()\n"
        "    leave_running(thread)\n"
        "    print('written before the error')\n"
        "    raise PipelineError('the cluster never answered')\n"
        "raise SystemExit(run(main))\n")  # the command line: argv None
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines()[-1] == "error: the cluster never answered", result.stderr
    assert result.stdout == "written before the error\n"  # flushed, though the interpreter is not finalised


def test_run_in_process_returns_its_status_though_a_thread_was_left_running(capfd):
    """Called with arguments (a test, a notebook), ``run`` never ends the process: it returns the status."""
    import threading

    from pipeline.common.cli import leave_running, run
    from pipeline.common.errors import PipelineError

    release = threading.Event()

    def main(argv):
        thread = threading.Thread(target=release.wait, daemon=True)
        thread.start()
        leave_running(thread)
        raise PipelineError("the cluster never answered")

    try:
        assert run(main, []) == 2
    finally:
        release.set()
    assert capfd.readouterr().err.strip().splitlines()[-1] == "error: the cluster never answered"
