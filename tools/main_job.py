"""The README's main job: one EM volume through the most complete EM-SSL pipeline that exists.

1. Data: open the volume lazily with its voxel size, standardize intensities with a robust window,
   write a multiscale OME-Zarr (NGFF 0.5, atomic) and a PNG of the middle slice, then re-open the
   output to check it.
2. Segmentation: run OmniEM's out-of-core engine (`omniem.engine.predict`) with the bundled
   ``mito-2d`` model on the middle slices of the (raw) volume, write the labels as a resumable
   OME-Zarr (``prediction.ome.zarr``) and a PNG of the mitochondria mask over the middle slice
   (``overlay.png``). When the ``mito-2d`` weights are not bundled (``omniem list``), the job says
   so and stops after step 1; ``--model FILE`` uses another model file.

Runtime: by default the job predicts the middle ``--slices 5`` slices (the overlay's slice among
them); ``--slices 0`` predicts the whole volume. The default was chosen for the ViT-layout
``mito-2d`` of an earlier release (~1.5-3 s per batch of 4 tiles of 256 px at bf16 on 2 CPU
cores, so ~40-80 s for 5 slices). The shipped hybrid ``mito-2d`` is much cheaper: the 5 slices
took 6.5-6.8 s on 2 cores on 256 px tiles (the two hybrids shipped on 2026-11-25) and 5.4 s on
the 512 px tiles its card names now (2026-12-07); the whole 33-slice volume should take under a
minute (extrapolated, not timed).

Input, in order of preference: --input URI; the Lucchi++ validation slices from EMSSL_DATA (real
FIB-SEM); else a procedural EM phantom (fully offline).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import em5m
from em5m.intensity import estimate_window, to_uint8
from em5m.preview import save_png

#: The segmentation model of the main job (registry name; ``--model`` to use a model file).
DEFAULT_MODEL = "mito-2d"


def pick_input(args: argparse.Namespace) -> tuple[em5m.Volume, str]:
    if args.input:
        vol = em5m.open_volume(args.input)
        if args.voxel_size:
            vol = vol.replace(voxel_size=args.voxel_size)
        return vol, f"user volume {args.input}"
    if os.environ.get("EMSSL_DATA") and Path(os.environ["EMSSL_DATA"]).is_dir():
        from em5m import datasets

        try:
            split = datasets.load("lucchi_pp", split="val")
            return split.image_volume(), "Lucchi++ validation slices (real FIB-SEM, EMSSL_DATA)"
        except em5m.EMDataError as err:
            print(f"main-job: real data not usable ({err}); using a phantom", file=sys.stderr)
    from em5m import synth

    phantom = synth.phantom((32, 512, 512), voxel_size=(5.0, 5.0, 5.0), modality="sem", seed=0)
    return phantom.to_volume(), "procedural EM phantom (em5m.synth, seed 0)"


def model_available(model: str) -> bool:
    """A model file, or a registered model whose weights are bundled; else say what is missing."""
    from omniem.registry import list_models

    if Path(model).is_file() or model in list_models(bundled_only=True):
        return True
    if model in list_models():
        print(
            f"main-job: step 4  skipped: the bundled model {model} is missing (its weights are "
            "not in this installation, see `omniem list`); the outputs are the standardized "
            "volume and its preview"
        )
    else:
        raise SystemExit(f"main-job: error: --model {model}: no such model file or registry name")
    return False


def segment(vol: em5m.Volume, out: Path, args: argparse.Namespace) -> None:
    """Step 4: OmniEM segmentation of the middle slices, OME-Zarr labels and an overlay PNG."""
    if not model_available(args.model):
        return
    from omniem.engine import plan, predict
    from omniem.engine.ledger import Ledger
    from omniem.progress import TqdmProgress

    t0 = time.perf_counter()
    z0 = z1 = None
    src = vol
    if "z" in vol.axes:
        iz = vol.axes.index("z")
        n = vol.shape[iz]
        k = n if args.slices <= 0 else min(args.slices, n)
        z0 = min(max(0, n // 2 - k // 2), n - k)
        z1 = z0 + k  # the middle slice n // 2 is always among them
        index = (slice(None),) * iz + (slice(z0, z1),)
        src = vol.replace(data=vol.data[index])
    # One block per slice (up to 1024 x 1024): progress per slice, no extra halo along z.
    kw = {"devices": args.devices, "dtype": args.dtype, "output": "labels", "block": (1, 1024)}
    p = plan(args.model, src, "prediction.ome.zarr", **kw)
    where = "the image"
    if z0 is not None:
        where = f"slices {z0}..{z1 - 1} of {vol.shape[vol.axes.index('z')]}"
    print(
        f"main-job: step 4  segmenting {where} with {args.model} ({p['n_blocks']} blocks, "
        f"{p['n_batches']} batches of tiles on {args.devices}, {p['dtype']})"
    )
    target = out / "prediction.ome.zarr"
    with TqdmProgress("main-job: predict") as bar:
        bar.start(p["n_blocks"])  # open the bar now, so the first block's rate is right
        pred = predict(args.model, src, target, overwrite=True, progress=bar, **kw)
    labels = em5m.open_volume(pred)
    if not Ledger.open(pred).is_complete or labels.shape != src.shape[-labels.ndim :]:
        raise RuntimeError(f"{pred} is incomplete or reads back as {labels}")
    print(
        f"main-job:         prediction {pred} ({p['output']} {labels.shape} {labels.dtype}, "
        f"complete) in {time.perf_counter() - t0:.1f} s"
    )
    if "z" in labels.axes:
        iz = vol.axes.index("z")
        mid_z = vol.shape[iz] // 2
        image = np.squeeze(np.asarray(vol.data[(slice(None),) * iz + (mid_z,)]))
        mask = np.asarray(labels.data[mid_z - z0])
    else:
        image, mask = np.asarray(vol.data), np.asarray(labels.data)
    overlay = save_png(image, out / "overlay.png", overlay=mask)
    print(
        f"main-job: step 5  overlay {overlay} (mask over the middle slice: "
        f"{100 * float((mask > 0).mean()):.1f} % of pixels labelled)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="any volume em5m.open_volume reads")
    parser.add_argument("--voxel-size", type=lambda s: tuple(float(v) for v in s.split(",")))
    parser.add_argument("--out", default="out/main-job", help="output folder")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="registered OmniEM model or model file"
    )
    parser.add_argument(
        "--slices", type=int, default=5, help="middle slices to segment (0: the whole volume)"
    )
    parser.add_argument("--devices", default="cpu", help="cpu, cpu:N, cuda:0,cuda:1, dask://...")
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 where the CPU computes it natively, else fp32",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    vol, what = pick_input(args)
    print(f"main-job: input   {what}")
    print(f"main-job:         {vol}")
    window = estimate_window(vol)
    std = to_uint8(vol, window)
    print(f"main-job: step 1  intensity window {window.low:.1f}..{window.high:.1f} -> uint8")
    zarr_path = em5m.save_volume(std, out / "volume.ome.zarr", overwrite=True)
    check = em5m.open_volume(zarr_path)
    levels = check.metadata.get("levels") or []
    if check.shape != vol.shape or check.voxel_size != vol.voxel_size:
        raise RuntimeError(f"{zarr_path} reads back as {check}, expected {vol}")
    n_levels = len(levels)
    print(
        f"main-job: step 2  OME-Zarr {zarr_path} ({n_levels} levels, voxel {check.voxel_size} nm)"
    )
    mid = check.data[check.shape[0] // 2] if "z" in check.axes else check.data
    png = save_png(np.asarray(mid), out / "preview.png")
    print(f"main-job: step 3  preview {png}")
    segment(vol, out, args)
    print(f"main-job: done in {time.perf_counter() - t0:.1f} s; outputs in {out.resolve()}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except em5m.EMDataError as err:
        print(f"main-job: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        from omniem.errors import OmniEMError

        if not isinstance(err, (OmniEMError, ValueError)):
            raise
        print(f"main-job: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
