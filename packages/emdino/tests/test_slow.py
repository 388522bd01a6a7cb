"""Slow checks (``pytest -m slow``): peak memory on an 8192 x 8192 image, and the wheel alone in
a clean virtual environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
GIB = 2**30


def _mosaic(emssl_data: Path, n: int) -> np.ndarray:
    """n x n real EM: the 30 ISBI 2012 training slices repeated."""
    tiles = [
        np.asarray(Image.open(emssl_data / f"isbi2012/train/image/{i}.png")) for i in range(30)
    ]
    out = np.empty((n, n), np.uint8)
    k = 0
    for y in range(0, n, 512):
        for x in range(0, n, 512):
            out[y : y + 512, x : x + 512] = tiles[k % 30][: n - y, : n - x]
            k += 1
    return out


def _peak_rss(cmd: list[str]) -> tuple[int, int]:
    """(exit code, peak RSS in bytes) of ``cmd``, measured from a wrapper process."""
    wrapper = (
        "import resource, subprocess, json\n"
        f"rc = subprocess.run({cmd!r}).returncode\n"
        "print(json.dumps([rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, check=True, timeout=1800
    )
    rc, kib = json.loads(out.stdout)
    return rc, kib * 1024


def test_features_of_an_8192_image_stay_under_3_gb(tmp_path, emssl_data):
    import tifffile
    import zarr

    src = tmp_path / "em8192.tif"
    tifffile.imwrite(src, _mosaic(emssl_data, 8192))
    out = tmp_path / "f.zarr"
    # ViT-T/16 keeps the run to minutes on 2 cores; tiling, reading and writing are the ones
    # of any model (tools/bench/features.py --big 8192 measures the default ViT-S/14).
    cmd = [
        sys.executable,
        "-m",
        "emdino.cli",
        "-q",
        "features",
        str(src),
        "--out",
        str(out),
        "--model",
        "vit_tiny_patch16.random",
        "--dtype",
        "bf16",
    ]
    rc, peak = _peak_rss(cmd)
    assert rc == 0
    print(f"peak RSS {peak / 2**20:.0f} MiB")
    assert peak < 3 * GIB, f"peak RSS {peak / GIB:.2f} GiB"
    arr = zarr.open_group(str(out), mode="r")["s0"]
    assert arr.shape == (192, 512, 512)
    corner = arr[:, -40:, -40:]  # last tiles were written (fill value is 0)
    assert np.isfinite(corner).all() and np.abs(corner).sum(axis=0).min() > 0


def test_wheel_alone_in_a_clean_venv_runs_features(tmp_path, emssl_data):
    dist = tmp_path / "dist"
    for pkg in ("em5m", "emdino"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "build",
                "--no-isolation",
                "--wheel",
                "--outdir",
                str(dist),
                str(REPO / "packages" / pkg),
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    wheels = [str(next(dist.glob(f"{pkg}-*.whl"))) for pkg in ("em5m", "emdino")]
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-c",
            str(REPO / "tools" / "constraints.txt"),
            *wheels,
        ],
        check=True,
        capture_output=True,
        timeout=1500,
    )
    image = emssl_data / "omniem_examples/2d_MitoEM_H_0_0_0.tif"
    out = tmp_path / "f.zarr"
    probe = (
        "import importlib.util, sys\n"
        "from emdino.cli import main\n"
        f"rc = main(['-q', 'features', {str(image)!r}, '--out', {str(out)!r}])\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'omniem', 'napari', 'napari_omniem', 'monai', 'qtpy'})\n"
        "installed = [m for m in ('omniem', 'napari', 'monai') if importlib.util.find_spec(m)]\n"
        "print(rc, loaded, installed)\n"
    )
    res = subprocess.run(
        [str(py), "-c", probe], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.stdout.strip() == "0 [] []", res.stdout + res.stderr
    cli = subprocess.run(
        [str(venv / "bin" / "emdino"), "list"], capture_output=True, text=True, timeout=300
    )
    assert cli.returncode == 0 and "vit_large_patch14.emdino_v1" in cli.stdout
    import em5m

    assert em5m.open_volume(out).shape == (384, 16, 16)
