"""Benchmark emdino feature extraction against a plain timm forward, and large-image memory.

Usage::

    python tools/bench/features.py [--sizes 224 518] [--reps 5] [--big 8192]

1. **Throughput.** ViT-S/14 (``vit_small_patch14.random``; speed does not depend on the weights),
   images/s of ``model.features(uint8 images)`` (normalization, padding, the default four
   intermediate maps, float32 output) for 224 and 518 px input in fp32 and bf16 autocast.
   Baseline measured in the same run, interleaved rep by rep: timm's ``VisionTransformer`` with the
   same weights (``forward_features`` on an already normalized float tensor, the same autocast).
   Reports the median over ``reps`` timed batches and the ratio emdino / timm.
2. **Large image** (``--big N``). Writes an N x N uint8 TIFF (a mosaic of the ISBI 2012 slices in
   ``EMSSL_DATA``, else noise) and runs ``emdino features`` on it in a child process with the
   default model and tile size; reports wall time, tiles and the child's peak RSS
   (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, from a wrapper process so nothing else is
   counted).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Passive OpenMP waiting, as the emdino CLI sets it (must precede the torch import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import emdino  # noqa: E402

MODEL = "vit_small_patch14.random"


def _timm_twin(model: emdino.Backbone) -> torch.nn.Module:
    """A timm ViT (no emdino subclass) holding the same weights; pos-embed resampling as timm's."""
    from timm.models.vision_transformer import VisionTransformer

    twin = VisionTransformer(
        img_size=model.img_size,
        patch_size=14,
        in_chans=1,
        num_classes=0,
        embed_dim=384,
        depth=12,
        num_heads=6,
        init_values=1e-5,
        dynamic_img_size=True,
    )
    twin.load_state_dict(model.vit.state_dict())
    return twin.eval()


def throughput(sizes: list[int], reps: int) -> list[dict]:
    rows = []
    for dtype in ("fp32", "bf16"):
        model = emdino.load(MODEL, dtype=dtype)
        twin = _timm_twin(model)
        for size in sizes:
            batch = 8 if size <= 224 else 2
            x8 = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)
            xn = (x8.float() / 255 - model.mean) / model.std

            def ours(model=model, x8=x8) -> None:
                model.features(x8)

            def timm_forward(model=model, twin=twin, xn=xn) -> None:
                with torch.inference_mode(), model.autocast():
                    twin.forward_features(xn)

            ours()
            timm_forward()  # warm-up (allocations, oneDNN kernels)
            t_ours, t_timm = [], []
            for _ in range(reps):  # interleaved, so machine load affects both alike
                for fn, acc in ((timm_forward, t_timm), (ours, t_ours)):
                    start = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - start)
            ours_ips = batch / statistics.median(t_ours)
            timm_ips = batch / statistics.median(t_timm)
            rows.append(
                {
                    "size": size,
                    "dtype": dtype,
                    "batch": batch,
                    "timm_images_per_s": round(timm_ips, 2),
                    "emdino_images_per_s": round(ours_ips, 2),
                    "ratio_emdino_over_timm": round(ours_ips / timm_ips, 3),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _mosaic(n: int) -> np.ndarray:
    data = os.environ.get("EMSSL_DATA")
    folder = Path(data) / "isbi2012/train/image" if data else None
    if folder is None or not folder.is_dir():
        return np.random.default_rng(0).integers(0, 256, (n, n), dtype=np.uint8)
    from PIL import Image

    tiles = [np.asarray(Image.open(folder / f"{i}.png")) for i in range(30)]
    out = np.empty((n, n), np.uint8)
    k = 0
    for y in range(0, n, 512):
        for x in range(0, n, 512):
            t = tiles[k % len(tiles)]
            k += 1
            out[y : y + 512, x : x + 512] = t[: min(512, n - y), : min(512, n - x)]
    return out


def big_image(n: int, dtype: str, model: str) -> dict:
    import tifffile

    from emdino.models import resolve_name

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"em_{n}.tif"
        tifffile.imwrite(src, _mosaic(n))
        out = Path(tmp) / "feats.zarr"
        cmd = [
            sys.executable,
            "-m",
            "emdino.cli",
            "-q",
            "features",
            str(src),
            "--out",
            str(out),
            "--dtype",
            dtype,
            "--model",
            model,
        ]
        wrapper = (
            "import resource, subprocess, sys, json, time\n"
            "t = time.perf_counter()\n"
            f"rc = subprocess.run({cmd!r}).returncode\n"
            "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, 'maxrss_kb': rss}))\n"
        )
        res = json.loads(
            subprocess.run(
                [sys.executable, "-c", wrapper], check=True, capture_output=True, text=True
            ).stdout
        )
        if res["rc"] != 0:
            raise RuntimeError(f"emdino features failed with exit code {res['rc']}")
        import zarr

        shape = zarr.open_group(str(out), mode="r")["s0"].shape
        return {
            "image": f"{n}x{n} uint8 TIFF ({src.stat().st_size / 2**20:.0f} MiB)",
            "model": resolve_name(model),
            "dtype": dtype,
            "feature_shape": list(shape),
            "output_mib": round(
                sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1
            ),
            "wall_s": round(res["wall_s"], 1),
            "peak_rss_mib": round(res["maxrss_kb"] / 1024, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 518])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--big", type=int, help="also run `emdino features` on an N x N image")
    parser.add_argument("--big-dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--big-model", default="default")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    report: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "emdino": emdino.__version__,
            "load_avg_start": os.getloadavg()[0],
        },
        "model": MODEL,
    }
    if not args.skip_throughput:
        report["throughput"] = throughput(args.sizes, args.reps)
    if args.big:
        report["big_image"] = big_image(args.big, args.big_dtype, args.big_model)
    report["machine"]["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
