"""The README's main job runs offline and says what it did and where the output is."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import em5m


def _run_job(repo_root, out, env_data):
    env = {k: v for k, v in os.environ.items() if k != "EMSSL_DATA"}
    if env_data is not None:
        env["EMSSL_DATA"] = str(env_data)
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "main_job.py"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


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


def test_main_job_without_data_uses_the_phantom(repo_root, tmp_path):
    result = _run_job(repo_root, tmp_path / "job", None)
    assert result.returncode == 0, result.stderr
    assert "phantom" in result.stdout and "done in" in result.stdout
    vol = em5m.open_volume(str(tmp_path / "job" / "volume.ome.zarr"))
    assert vol.ndim == 3 and vol.voxel_size is not None
    assert vol.compute().std() > 10  # real structure, not a blank volume


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
