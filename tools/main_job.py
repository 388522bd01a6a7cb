"""The README's main job: one EM volume through the most complete EM-SSL pipeline that exists.

Today (data layer): open the volume lazily with its voxel size, standardize intensities with a
robust window, write a multiscale OME-Zarr (NGFF 0.5, atomic) and a PNG of the middle slice, then
re-open the output to check it. Later issues put EM-DINO/OmniEM inference in the middle; this
command stays the same.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="any volume em5m.open_volume reads")
    parser.add_argument("--voxel-size", type=lambda s: tuple(float(v) for v in s.split(",")))
    parser.add_argument("--out", default="out/main-job", help="output folder")
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
    print(f"main-job: done in {time.perf_counter() - t0:.1f} s; outputs in {out.resolve()}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except em5m.EMDataError as err:
        print(f"main-job: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
