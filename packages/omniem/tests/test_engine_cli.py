"""``omniem predict`` and ``omniem plan`` on small real files (Lucchi++ val slices as TIFF and
OME-Zarr) with a tiny random model file: outputs, progress, resume/overwrite, memory refusal
and one-line errors (exit 2) that name the file or option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from omniem.cli import main
from omniem.engine import predict
from omniem.engine.ledger import Ledger

OPTS = ["--tile", "64", "--block", "1,64", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def files(emssl_data, tmp_path_factory) -> dict[str, Path]:
    """A tiny model file and a 2 x 100 x 130 crop of Lucchi++ val as TIFF and as OME-Zarr."""
    import em5m
    import em5m.datasets
    from omniem.modelfile import save_model
    from omniem.nets import NetConfig, build

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = NetConfig(
        backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8, backbone_mode="frozen"
    )
    net = build(cfg, img_size=64)
    card = {"name": "tiny", "classes": ["background", "mitochondrion"], "voxel_size_nm": [5, 5]}
    model = save_model(net, d / "tiny.safetensors", card=card)
    img = em5m.datasets.load("lucchi_pp", split="val").image[:2, 300:400, 400:530]
    img = np.ascontiguousarray(img)
    tifffile.imwrite(d / "em.tif", img)
    vol = em5m.Volume.from_array(img, voxel_size=(5.0, 5.0, 5.0))
    zarr_in = em5m.save_volume(vol, d / "em.ome.zarr")
    return {"dir": d, "model": model, "tif": d / "em.tif", "zarr": Path(zarr_in), "img": img}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as this process: bit-identical sums
    return subprocess.run(
        [sys.executable, "-m", "omniem.cli", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def test_predict_tiff_end_to_end(files, tmp_path) -> None:
    out = tmp_path / "pred.ome.zarr"
    r = _cli("predict", files["tif"], out, "--model", files["model"], *OPTS)
    assert r.returncode == 0, r.stderr
    assert "12/12" in r.stderr and "block" in r.stderr  # tqdm: blocks done/total, rate
    assert f"wrote {out}" in r.stdout and "labels (2, 100, 130) uint8" in r.stdout
    led = Ledger.open(out)
    assert led.is_complete and led.done() == set(range(12))
    got = zarr.open_group(out, mode="r")["s0"][:]
    ref = predict(files["model"], files["tif"], tile=64, block=(1, 64), dtype="fp32")
    assert got.dtype == np.uint8 and np.array_equal(got, ref)
    # A complete output is not replaced without --overwrite; with it, it is.
    r = _cli("predict", files["tif"], out, "--model", files["model"], *OPTS)
    assert r.returncode == 2 and "complete prediction" in r.stderr and "--overwrite" in r.stderr
    assert str(out) in r.stderr and "Traceback" not in r.stderr
    r = _cli("predict", files["tif"], out, "--model", files["model"], *OPTS, "--overwrite", "-q")
    assert r.returncode == 0 and "12/12" not in r.stderr


def test_predict_zarr_on_two_cpu_workers(files, tmp_path, capsys) -> None:
    out = tmp_path / "z.ome.zarr"
    code = main(
        ["predict", str(files["zarr"]), str(out), "--model", str(files["model"]), *OPTS,
         "--devices", "cpu:2", "--voxel-size", "5,5,5", "--output-kind", "probabilities"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "12/12" in err
    got = zarr.open_group(out, mode="r")["s0"][:]
    ref = predict(
        files["model"], files["img"], tile=64, block=(1, 64), dtype="fp32", output="probabilities"
    )
    assert got.shape == (2, 2, 100, 130) and np.array_equal(got, ref)
    attrs = zarr.open_group(out, mode="r").attrs
    assert attrs["omniem"]["complete"] is True
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0][
        "scale"
    ] == [1.0, 5.0, 5.0, 5.0]


def test_plan_json_and_text(files, capsys) -> None:
    code = main(["plan", str(files["tif"]), "--model", str(files["model"]), *OPTS, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    p = json.loads(out)
    assert p["n_blocks"] == 12 and p["output_shape"] == [2, 100, 130]
    assert p["peak_ram_bytes"] > 0 and p["memory"]["result"] == 0  # written out of core
    assert p["devices"] == "cpu" and p["memory_limit_bytes"] > 0
    code = main(
        ["plan", str(files["tif"]), "--model", str(files["model"]), *OPTS, "--time",
         "--devices", "cpu:2"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "blocks    12 of (1, 64, 64)" in text and "2 worker processes" in text
    assert "time      ~" in text and "for 2 workers" in text


def test_predict_refuses_a_plan_larger_than_memory(files, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "m.zarr"
    args = ["predict", str(files["tif"]), str(out), "--model", str(files["model"]), *OPTS]
    assert main([*args, "--max-memory", "1M"]) == 2
    err = capsys.readouterr().err.strip()
    assert "memory" in err and "1.0 MiB" in err and "--force" in err and str(files["tif"]) in err
    assert len(err.splitlines()) == 1 and not out.exists()
    monkeypatch.setenv("OMNIEM_MAX_MEMORY", "1K")
    assert main(args) == 2
    assert "OMNIEM_MAX_MEMORY" in capsys.readouterr().err
    assert main([*args, "--force", "-q"]) == 0
    assert Ledger.open(out).is_complete


def test_errors_are_one_line_and_name_the_culprit(files, tmp_path, capsys) -> None:
    model, tif = str(files["model"]), str(files["tif"])
    flat = tmp_path / "flat.tif"  # a 2D image: orthoplanes need a volume
    tifffile.imwrite(flat, files["img"][0])
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 10)
    notours = tmp_path / "notours.zarr"
    notours.mkdir()
    cases = [
        (["predict", str(broken), "o.zarr", "--model", model], "broken.tif"),
        (["plan", str(tmp_path / "missing.tif"), "--model", model], "missing.tif"),
        (["predict", tif, "o.zarr", "--model", "no-such-model"], "--model no-such-model"),
        (["predict", tif, "o.zarr", "--model", str(tmp_path / "m.safetensors")], "m.safetensors"),
        (["predict", tif, str(notours), "--model", model, *OPTS], "notours.zarr"),
        (["predict", str(flat), "o.zarr", "--model", model, "--orthoplanes"], "flat.tif"),
        (["predict", tif, "o.zarr", "--model", model, "--devices", "gpu"], "--devices gpu"),
        (["plan", tif, "--model", model, "--voxel-size", "5,x"], "--voxel-size"),
        (["plan", tif, "--model", model, "--overlap", "1.5"], "--overlap"),
        (["predict", tif, "o.zarr", "--model", model, "--max-memory", "lots"], "--max-memory"),
    ]
    from omniem.registry import list_models

    if "mito-2d" not in list_models(bundled_only=True):
        cases.append((["predict", tif, "o.zarr", "--model", "mito-2d"], "not bundled"))
    for args, culprit in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert culprit in err and "Traceback" not in err, (args, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"omniem {args[0]}: "), err
    assert not Path("o.zarr").exists()


def test_sigkill_half_way_then_rerun_gives_the_uninterrupted_output(files, tmp_path) -> None:
    """A real SIGKILL of the CLI process at about half the blocks, then a rerun."""
    import signal
    import time

    import em5m
    import em5m.datasets

    img = np.ascontiguousarray(em5m.datasets.load("lucchi_pp", split="val").image[:6, :128, :192])
    src = tmp_path / "src.tif"
    tifffile.imwrite(src, img)
    args = [src, "--model", files["model"], *OPTS, "-q"]
    ref_out = tmp_path / "ref.ome.zarr"
    assert _cli("predict", src, ref_out, *args[1:]).returncode == 0
    total = len(Ledger.open(ref_out).done())  # 6 slices x 2 x 3 blocks = 36
    out = tmp_path / "killed.ome.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "omniem.cli", "predict", *map(str, [src, out, *args[1:]])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / ".omniem" / "ledger.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.is_file() and len(ledger.read_text().splitlines()) - 1 >= total // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = Ledger.open(out)
    assert not killed.is_complete and 0 < len(killed.done()) < total
    r = _cli("predict", src, out, *args[1:])
    assert r.returncode == 0, r.stderr
    done = Ledger.open(out)
    assert done.is_complete and done.done() == set(range(total))
    a = zarr.open_group(ref_out, mode="r")["s0"][:]
    b = zarr.open_group(out, mode="r")["s0"][:]
    assert np.array_equal(a, b)
