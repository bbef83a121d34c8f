"""prepare on a pool of processes: one decode per image, the same outputs and errors for any worker count."""

import imagehash
import pytest
from PIL import Image, ImageOps

from pipeline.common.cli import run
from pipeline.data.dataset import build_manifest, manifest_hashes, read_manifest
from pipeline.data.images import load_rgb
from pipeline.data.pool import resolve_workers
from tests.conftest import run_stage, split_layout, stage_command, write_params


def damage(layout):
    """A truncated JPEG early in train and a file of junk bytes late in test (manifest order)."""
    good = (layout / "train" / "Angry" / "001.jpg").read_bytes()
    (layout / "train" / "Angry" / "002.jpg").write_bytes(good[: len(good) // 3])
    (layout / "test" / "happy" / "zz.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def prepare(tmp_path, dataset, name, **overrides):
    """Run the prepare stage in ``tmp_path/name``; its exit status, stderr's error line and its outputs."""
    work = tmp_path / name
    work.mkdir()
    params = write_params(work / "params.yaml", {"data.root": str(dataset), **overrides})
    module, argv = stage_command("prepare")
    import importlib

    main = importlib.import_module(module).main
    argv = [str(work / a) if a.startswith("artifacts/") else a for a in argv]
    return run(main, [*argv, "--params", str(params)]), work / "artifacts" / "data"


@pytest.mark.parametrize("mode", ["skip", "error"])
def test_one_and_two_workers_write_the_same_bytes_and_the_same_error(dataset, tmp_path, capfd, mode):
    damage(dataset / "Master Folder")
    outcomes = []
    for workers in (1, 2):
        status, out = prepare(tmp_path, dataset, f"w{workers}", **{"data.num_workers": workers,
                                                                   "data.on_bad_image": mode})
        printed = capfd.readouterr()
        errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
        if mode == "skip":  # the resolved worker count is in the stage's output line
            assert f"; 2 skipped; {workers} worker(s), " in printed.out.splitlines()[0]
        files = {f: (out / f).read_bytes() for f in ("manifest.csv", "skipped.csv")} if status == 0 else None
        outcomes.append((status, errors, files))
    assert outcomes[0] == outcomes[1]
    status, errors, files = outcomes[0]
    if mode == "error":
        assert status == 2 and len(errors) == 1
        assert "train/Angry/002.jpg is not a readable image" in errors[0]  # the first bad file in order
        assert not (tmp_path / "w2" / "artifacts" / "data" / "manifest.csv").exists()
    else:
        assert status == 0
        rows = files["skipped.csv"].decode().splitlines()
        assert [row.split(",")[0] for row in rows] == ["path", "train/Angry/002.jpg", "test/happy/zz.jpg"]
        assert all(",is not a readable image (" in row for row in rows[1:])


def test_the_recorded_hashes_are_those_of_the_images(dataset):
    """As the audit computed them before prepare recorded them: imagehash's dHash of the RGB image and its mirror."""
    layout = dataset / "Master Folder"
    Image.new("RGB", (40, 30), (90, 90, 90)).save(layout / "train" / "Sad" / "flat.png")
    manifest = build_manifest(split_layout(layout), workers=2)[0]
    recorded = manifest_hashes(manifest)
    for i, path in enumerate(manifest["path"]):
        image = load_rgb(layout / path)
        assert recorded.plain[i] == int(str(imagehash.dhash(image)), 16)
        assert recorded.mirrored[i] == int(str(imagehash.dhash(ImageOps.mirror(image))), 16)
    assert manifest["dhash"].str.fullmatch("[0-9a-f]{16}").all()
    assert manifest.set_index("path")["informative"].to_dict() == {
        p: p != "train/Sad/flat.png" for p in manifest["path"]}


def test_each_image_is_decoded_once_across_prepare_and_audit(dataset, tmp_path, monkeypatch):
    opened = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        opened.append(1)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)  # PIL's, counted in this process: one worker
    params = write_params(tmp_path / "params.yaml", {"data.root": str(dataset), "data.num_workers": 1})
    monkeypatch.chdir(tmp_path)
    assert run_stage("prepare", params) == 0
    n = len(read_manifest(tmp_path / "artifacts" / "data" / "manifest.csv"))
    assert len(opened) == n
    assert run_stage("audit", params) == 0
    assert len(opened) == n


def test_num_workers_auto_leaves_one_core_to_the_main_process():
    import os

    cores = len(os.sched_getaffinity(0))
    assert resolve_workers("auto") == max(1, cores - 1)
    assert resolve_workers(3) == 3


def test_num_workers_below_one_is_refused_naming_the_key(dataset, tmp_path, capfd):
    status, _ = prepare(tmp_path, dataset, "w0", **{"data.num_workers": 0})
    assert status == 2
    assert "data.num_workers" in capfd.readouterr().err


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_with_one_line_and_writes_nothing(dataset, tmp_path):
    """Hundreds of large JPEGs keep both workers busy for seconds, so the interrupt lands mid-run (a FIFO would
    not: prepare refuses special files without reading them)."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    from tests.conftest import stage_process

    import shutil

    import numpy as np
    from PIL import Image

    folder = dataset / "Master Folder" / "train" / "Sad"
    big = np.random.default_rng(0).integers(0, 256, size=(1500, 2000, 3), dtype=np.uint8)
    Image.fromarray(big).save(folder / "big-000.jpg", quality=90)
    for i in range(1, 400):
        shutil.copy(folder / "big-000.jpg", folder / f"big-{i:03d}.jpg")
    params = write_params(tmp_path / "params.yaml", {"data.root": str(dataset), "data.num_workers": 2})
    proc = subprocess.Popen(stage_process("prepare", params), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = psutil.Process(proc.pid).children()
            time.sleep(0.1)
        time.sleep(1)  # both workers are decoding
        assert proc.poll() is None and len(workers) == 2
        os.killpg(proc.pid, signal.SIGINT)  # as from a terminal: the stage and its workers alike
        _, err = proc.communicate(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.csv"))
