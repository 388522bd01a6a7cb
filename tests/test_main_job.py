"""The README's main job runs offline and says what it did and where the output is."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import em5m


def _run_job(repo_root, out, env_data, *extra):
    env = {k: v for k, v in os.environ.items() if k != "EMSSL_DATA"}
    if env_data is not None:
        env["EMSSL_DATA"] = str(env_data)
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "main_job.py"), "--out", str(out), *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def _mito_bundled() -> bool:
    from omniem.registry import list_models

    return "mito-2d" in list_models(bundled_only=True)


def _check_prediction(out, shape):
    """The segmentation step's outputs: complete OME-Zarr labels and the overlay PNG."""
    from omniem.engine.ledger import Ledger

    pred = out / "prediction.ome.zarr"
    led = Ledger.open(pred)
    assert led.is_complete and led.done() == set(range(led.n_blocks))
    labels = em5m.open_volume(str(pred))
    assert labels.shape == shape and labels.dtype == np.uint8
    assert set(np.unique(labels.compute())) <= {0, 1}
    assert (out / "overlay.png").stat().st_size > 10_000


def test_main_job_on_real_lucchi_validation_slices(repo_root, tmp_path):
    data = os.environ.get("EMSSL_DATA")
    if not data:
        pytest.fail("EMSSL_DATA must point at the real EM data")
    result = _run_job(repo_root, tmp_path / "job", data)
    assert result.returncode == 0, result.stderr
    assert "Lucchi++ validation slices" in result.stdout
    assert str(tmp_path / "job") in result.stdout
    vol = em5m.open_volume(str(tmp_path / "job" / "volume.ome.zarr"))
    assert vol.shape == (33, 768, 1024) and vol.voxel_size == (5.0, 5.0, 5.0)
    assert vol.dtype == np.uint8 and len(vol.metadata["levels"]) >= 2
    assert (tmp_path / "job" / "preview.png").stat().st_size > 10_000
    if _mito_bundled():  # the middle 5 slices segmented with the bundled model
        assert "segmenting slices 14..18 of 33 with mito-2d" in result.stdout
        _check_prediction(tmp_path / "job", (5, 768, 1024))
    else:
        assert "bundled model mito-2d is missing" in result.stdout
        assert not (tmp_path / "job" / "prediction.ome.zarr").exists()


def test_main_job_segments_with_a_model_file(repo_root, tmp_path, emssl_model):
    """The segmentation step end to end, with a tiny random model file (one slice, fp32)."""
    data = os.environ.get("EMSSL_DATA")
    if not data:
        pytest.fail("EMSSL_DATA must point at the real EM data")
    out = tmp_path / "job"
    result = _run_job(
        repo_root, out, data, "--model", str(emssl_model), "--slices", "1", "--dtype", "fp32"
    )
    assert result.returncode == 0, result.stderr
    assert "segmenting slices 16..16 of 33" in result.stdout and "complete" in result.stdout
    assert "1/1" in result.stderr  # the engine's progress bar
    _check_prediction(out, (1, 768, 1024))


@pytest.fixture
def emssl_model(tmp_path):
    """A tiny random OmniEM model file (mitochondria classes, 5 nm)."""
    import torch

    from omniem.modelfile import save_model
    from omniem.nets import NetConfig, build

    torch.manual_seed(0)
    cfg = NetConfig(
        backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8, backbone_mode="frozen"
    )
    card = {"classes": ["background", "mitochondrion"], "voxel_size_nm": [5.0, 5.0]}
    return save_model(build(cfg, img_size=64), tmp_path / "tiny.safetensors", card=card)


def test_main_job_without_data_uses_the_phantom(repo_root, tmp_path):
    result = _run_job(repo_root, tmp_path / "job", None)
    assert result.returncode == 0, result.stderr
    assert "phantom" in result.stdout and "done in" in result.stdout
    vol = em5m.open_volume(str(tmp_path / "job" / "volume.ome.zarr"))
    assert vol.ndim == 3 and vol.voxel_size is not None
    assert vol.compute().std() > 10  # real structure, not a blank volume
    if _mito_bundled():
        _check_prediction(tmp_path / "job", (5, *vol.shape[1:]))


def test_main_job_reports_bad_input_in_one_line(repo_root, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 10)
    result = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "main_job.py"), "--input", str(bad),
         "--out", str(tmp_path / "job")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "broken.tif" in result.stderr and "Traceback" not in result.stderr
