"""The OmniEM engine against MONAI's sliding window on one volume, in the same run.

Usage::

    python tools/bench/inference.py [--model mito-2d] [--shape 32 2048 2048] [--tile 256]
                                    [--overlap 0.25] [--batch-size 8] [--devices cpu:2] [--out DIR]

Volume: a mosaic of the Lucchi++ validation slices (``EMSSL_DATA``) tiled to ``shape`` (uint8),
else an em5m.synth phantom. Both sides use the same model, tile and overlap (Gaussian blending):

- baseline: ``monai.inferers.sliding_window_inference`` over each in-memory slice, fp32;
- engine: ``omniem.engine.predict`` to an OME-Zarr target in its best mode on this machine
  (precision ``auto``: bf16 autocast where the CPU computes bf16, else fp32; ``--batch-size``
  tiles per forward pass, default blocks, ``--devices``: by
  default one worker process per core, which `tools/bench/forward_modes.py` measures fastest).

Reports seconds, voxels/s, ``ratio_vs_monai`` (MONAI time / engine time), Dice between the two
masks, and the model FLOP utilization of the engine: FLOPs of one tile forward
(``torch.utils.flop_counter``) x tiles run / time, against the matmul rate measured here in the
engine's precision (``engine_dtype``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from pretrain import matmul_rate  # noqa: E402

from omniem.engine.devices import cpu_cores  # noqa: E402


def volume(shape: tuple[int, int, int]) -> np.ndarray:
    z, h, w = shape
    try:
        import em5m.datasets

        src = np.asarray(em5m.datasets.load("lucchi_pp", split="val").image)
    except Exception:  # no EMSSL_DATA: a phantom of the same size
        from em5m import synth

        vol = synth.phantom((z, h, w), voxel_size=(5.0, 5.0, 5.0), modality="sem", seed=0)
        return np.asarray(vol.to_volume().data)
    reps = (-(-z // src.shape[0]), -(-h // src.shape[1]), -(-w // src.shape[2]))
    return np.tile(src, reps)[:z, :h, :w].copy()


def tile_flops(net: torch.nn.Module, tile: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(torch.rand(1, 1, tile, tile))
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="mito-2d")
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 2048, 2048])
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--devices", default=f"cpu:{cpu_cores()}")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="engine side: torch.compile with inductor freezing (compile time counts)",
    )
    args = ap.parse_args()
    from monai.inferers import sliding_window_inference

    import omniem
    from omniem.engine import predict

    net = omniem.load(args.model)
    vol = volume(tuple(args.shape))
    voxels = vol.size
    from emdino.precision import resolve_precision

    engine_dtype = resolve_precision("auto", "cpu")
    rate = matmul_rate(torch.bfloat16 if engine_dtype == "bf16" else torch.float32)
    res: dict = {
        "benchmark": "inference",
        "model": args.model,
        "shape": list(vol.shape),
        "tile": args.tile,
        "overlap": args.overlap,
        "cpus": os.cpu_count(),
        "engine_dtype": engine_dtype,
        "matmul_flops": rate,
    }

    t0 = time.perf_counter()
    monai_mask = np.empty(vol.shape, np.uint8)
    with torch.inference_mode():
        for z in range(vol.shape[0]):
            x = torch.from_numpy(vol[z].astype(np.float32) / 255.0)[None, None]
            y = sliding_window_inference(
                x,
                (args.tile, args.tile),
                args.batch_size,
                net,
                overlap=args.overlap,
                mode="gaussian",
                padding_mode="reflect",
            )
            monai_mask[z] = y[0].argmax(0).numpy()
            print(f"monai: slice {z + 1}/{vol.shape[0]}", file=sys.stderr, flush=True)
    t_monai = time.perf_counter() - t0

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-inference-")) / "engine.ome.zarr"
    t0 = time.perf_counter()
    predict(
        net,
        vol,
        out,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        dtype=engine_dtype,
        output="labels",
        devices=args.devices,
        overwrite=True,
        compile=args.compile,
    )
    t_engine = time.perf_counter() - t0
    import em5m

    engine_mask = np.asarray(em5m.open_volume(out).data)
    a, b = monai_mask > 0, engine_mask > 0
    dice = 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())

    from omniem.engine import plan

    p = plan(net, vol, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size)
    n_tiles = int(p["tile_runs"])
    flops = tile_flops(net, args.tile) * n_tiles
    res.update(
        engine_devices=args.devices,
        engine_compile=args.compile,
        engine_block_shape=list(p["block_shape"]),
        engine_halo_overhead=p["halo_overhead"],
        monai_fp32_s=round(t_monai, 1),
        engine_s=round(t_engine, 1),
        ratio_vs_monai=round(t_monai / t_engine, 3),
        dice_engine_vs_monai=float(dice),
        engine_voxels_per_s=voxels / t_engine,
        monai_voxels_per_s=voxels / t_monai,
        engine_tiles=n_tiles,
        engine_model_flops=flops,
        engine_mfu_vs_matmul=flops / t_engine / rate,
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
