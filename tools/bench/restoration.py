"""Restoration models against their classical baselines on held-out real slices, in one run.

Usage::

    python tools/bench/restoration.py denoise --model denoise-2d [--out result.json]
    python tools/bench/restoration.py sr2x --model sr2x-2d [--out result.json]

``--bin 2`` area-bins every slice 2x first (10 nm targets; the model must be trained the same way,
``data.bin: 2``). Each result has ``target_noise_std`` (`omniem.degrade.estimate_noise_std` of the
clean slices) and ``psnr_at_target_noise_db`` (the PSNR of a method whose only error were the
targets' own noise): no method scores much above it against these targets.

``--tta`` runs the model with 8-fold flip/rot90 test-time augmentation (8x its compute);
``--dtype`` picks the model's precision: ``auto`` (default: bf16 autocast where the CPU computes
bf16, else fp32), ``bf16`` or ``fp32`` (about 1.7x slower than bf16 on an AVX512-BF16 CPU).

Data (``--data``): ``lucchi`` (default), the Lucchi++ validation slices (``lucchi_pp/val``,
slices 132-164 of the training volume, held out of every training run here), every third slice;
``flyem``, the FlyEM medulla volume's slices 201-249, every second (held out of training; the
training run validated on 200-240 every 10th, so none of these). A centred crop of at most
512 x 512, in [0, 1]. NLM is tuned on training slices of the same set.

- ``denoise``: each slice gets synthetic Poisson-Gaussian noise at the two levels of
  `omniem.degrade.NOISE_LEVELS` (seeded per slice and level). Reported per level: PSNR and SSIM
  of the noisy input, of scikit-image non-local means with ``sigma`` / ``h`` tuned by grid search
  on *training* slices (`omniem.degrade.tune_nlm`, never the evaluation slices), and of the
  model. Issue 6 asks: model >= noisy + 6 dB and >= NLM + 1 dB at both levels.
- ``sr2x``: each slice is 2x area down-sampled (`omniem.degrade.downsample2x`) and brought back
  by bicubic interpolation and by the model. Issue 6 asks: model >= bicubic + 1.5 dB.

Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from emdino.precision import resolve_precision

CROP = 512
NLM_SIGMAS = (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.2, 0.24)
NLM_H = (0.6, 0.8, 1.0, 1.2, 1.4, 1.6)


#: Evaluation sets: dataset, (split, slices) scored, (split, slices) tuning NLM, description.
DATA = {
    "lucchi": (
        "lucchi_pp",
        ("val", "0:33:3"),
        ("train", "0:132:33"),
        "Lucchi++ 5 nm FIB-SEM, lucchi_pp/val (slices 132-164 of the volume) every 3rd slice",
    ),
    "flyem": (
        "flyem_medulla",
        ("all", "201:250:2"),
        ("all", "0:200:50"),
        "FlyEM medulla 10 nm FIB-SEM, held-out slices 201-249 every 2nd (training used 0-199 "
        "and validated on 200-240 every 10th)",
    ),
}


def _slices(dataset: str, split: str, slices: str, bin: int = 1) -> list[np.ndarray]:
    from em5m import datasets
    from omniem.train.config import parse_slices
    from omniem.train.data import bin_images

    vol = datasets.load(dataset, split=split).image
    vol = np.asarray(vol[parse_slices(slices, vol.shape[0])])
    if bin > 1:  # the same binning as training's data.bin
        vol = bin_images(vol, bin)
    h, w = vol.shape[1:]
    ch, cw = min(CROP, h), min(CROP, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return [s[y0 : y0 + ch, x0 : x0 + cw].astype(np.float32) / 255.0 for s in vol]


def _target_noise(clean: list[np.ndarray]) -> dict[str, float]:
    """Noise in the targets themselves: its estimated std, and the PSNR of a method whose only
    error were that noise (approximate: the estimate includes some texture, see
    `omniem.degrade.estimate_noise_std`)."""
    from omniem import degrade

    sigma = float(np.mean([degrade.estimate_noise_std(c) for c in clean]))
    return {
        "target_noise_std": round(sigma, 4),
        "psnr_at_target_noise_db": round(float(-20 * np.log10(sigma)), 2),
    }


#: How the model runs (`omniem.infer.predict_image`), set from the command line: ``tta`` averages
#: over the 8 flips/rotations; ``dtype`` as `emdino.precision` (the engine's default: auto).
INFER: dict = {"tta": False, "dtype": "auto"}


def _run(net, image: np.ndarray) -> np.ndarray:  # noqa: ANN001
    from omniem.infer import predict_image

    return predict_image(net, image, **INFER)[0].numpy()


def _scores(out: list[np.ndarray], clean: list[np.ndarray]) -> dict[str, float]:
    from omniem import metrics

    pairs = list(zip(out, clean, strict=True))
    return {
        "psnr": float(np.mean([metrics.psnr(o, c, data_range=1.0) for o, c in pairs])),
        "ssim": float(np.mean([metrics.ssim(o, c, data_range=1.0) for o, c in pairs])),
    }


def denoise(net, val: list[np.ndarray], tune: list[np.ndarray]) -> dict:  # noqa: ANN001
    from omniem import degrade

    res = {}
    for li, (level, params) in enumerate(degrade.NOISE_LEVELS.items()):
        noisy = [
            degrade.poisson_gaussian(c, **params, rng=1000 * li + k) for k, c in enumerate(val)
        ]
        tune_noisy = [
            degrade.poisson_gaussian(c, **params, rng=50000 + 1000 * li + k)
            for k, c in enumerate(tune)
        ]
        t0 = time.perf_counter()
        best = degrade.tune_nlm(tune_noisy, tune, NLM_SIGMAS, h_factors=NLM_H)
        nlm = [degrade.nlm_denoise(n, sigma=best.sigma, h_factor=best.h_factor) for n in noisy]
        t1 = time.perf_counter()
        model = [np.clip(_run(net, n), 0.0, 1.0) for n in noisy]
        t2 = time.perf_counter()
        r = {
            **_target_noise(val),
            "noise": params,
            "noisy": _scores(noisy, val),
            "nlm": _scores(nlm, val),
            "nlm_setting": {"sigma": best.sigma, "h_factor": best.h_factor},
            "model": _scores(model, val),
            "nlm_s": round(t1 - t0, 1),
            "model_s": round(t2 - t1, 1),
        }
        r["gain_vs_noisy_db"] = round(r["model"]["psnr"] - r["noisy"]["psnr"], 3)
        r["gain_vs_nlm_db"] = round(r["model"]["psnr"] - r["nlm"]["psnr"], 3)
        r["meets_issue_6"] = r["gain_vs_noisy_db"] >= 6.0 and r["gain_vs_nlm_db"] >= 1.0
        res[level] = r
    return res


def sr2x(net, val: list[np.ndarray]) -> dict:  # noqa: ANN001
    from omniem import degrade

    small = [degrade.downsample2x(c) for c in val]
    bicubic = [degrade.bicubic_upsample(s, 2) for s in small]
    model = [np.clip(_run(net, s), 0.0, 1.0) for s in small]
    r = {"bicubic": _scores(bicubic, val), "model": _scores(model, val), **_target_noise(val)}
    r["gain_vs_bicubic_db"] = round(r["model"]["psnr"] - r["bicubic"]["psnr"], 3)
    r["meets_issue_6"] = r["gain_vs_bicubic_db"] >= 1.5
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["denoise", "sr2x"])
    ap.add_argument("--model", required=True, help="registry name or model file")
    ap.add_argument("--out")
    ap.add_argument("--tta", action="store_true", help="8-fold flip/rot90 test-time augmentation")
    ap.add_argument(
        "--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="model precision"
    )
    ap.add_argument("--data", choices=sorted(DATA), default="lucchi", help="evaluation set")
    ap.add_argument(
        "--bin",
        type=int,
        default=1,
        help="area-bin the slices first (2: 10 nm targets, as a model trained with data.bin=2)",
    )
    args = ap.parse_args(argv)
    INFER.update(tta=args.tta, dtype=args.dtype)
    import torch

    from omniem import registry

    torch.manual_seed(0)
    net = registry.load(args.model)
    dataset, (split, slices), (tune_split, tune_slices), text = DATA[args.data]
    val = _slices(dataset, split, slices, bin=args.bin)
    result = {
        "benchmark": f"restoration/{args.task}",
        "model": args.model,
        "tta": args.tta,
        "dtype": resolve_precision(args.dtype, "cpu"),
        "data": f"{text} ({len(val)} slices), binned {args.bin}x, centred "
        f"{val[0].shape[0]} x {val[0].shape[1]} px crops",
    }
    if args.task == "denoise":
        tune = _slices(dataset, tune_split, tune_slices, bin=args.bin)  # tunes the NLM baseline
        result["nlm_tuned_on"] = f"{dataset}/{tune_split} slices {tune_slices} (same crops)"
        result["levels"] = denoise(net, val, tune)
    else:
        result.update(sr2x(net, val))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
