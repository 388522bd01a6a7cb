"""Write the mito-2d model card (markdown) from its training run, benchmark and evaluation JSON.

Usage::

    python tools/cards/mito_2d_card.py --run RUN_DIR [--run STAGE2_DIR ...] --bench BENCH.json \
        --eval EVAL.json [--eval-tta EVAL_TTA.json] \
        --out packages/omniem/src/omniem/models/cards/mito-2d.md

The first ``--run`` is the OmniEM run of ``tools/bench/mito_baseline.py``; each further one
continues the previous stage (``omniem train mito_2d --set init_from=...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_record import precision_words, read_run  # tools/cards/, this script's folder


def layout(net: dict) -> str:
    """The network's layout in words, from the run's resolved ``net`` configuration."""
    fs, b = net["feature_size"], net["backbone_bin"]
    if net.get("stem_stride", 1) == 2:
        conv = (
            f"a UNet-like convolutional encoder ({fs}-{fs * 8} channels from H/2 to H/16, strided "
            "stem, transposed-convolution head)"
        )
    else:
        conv = f"a UNet-like convolutional encoder ({fs} channels at full resolution)"
    keys = ", ".join(
        f"`{k}: {str(net[k]).lower()}`"
        for k in ("conv_encoder", "stem_stride", "backbone_bin", "feature_size")
        if k in net
    )
    return (
        f"{conv} beside the bundled EM-DINO ViT-T/8 (`vit_tiny_patch8.emdino`), which sees the "
        f"image binned {b}x ({keys})"
    )


def training_mode(cfg: dict) -> tuple[str, str]:
    """How the run trained the backbone, in words: (for the description, for the file)."""
    lr, mult = cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]
    mode = cfg["net"]["backbone_mode"]
    if mode == "frozen":
        return (
            f"the backbone frozen (its bundled weights as they are; the rest trains at lr {lr:g})",
            "the decoder and convolutional encoder; the backbone is the bundled "
            "`vit_tiny_patch8.emdino`, loaded from emdino",
        )
    if mode == "full":
        return (
            f"fine-tuned end to end (decoder lr {lr:g}, backbone lr {lr * mult:g})",
            "decoder and the fine-tuned backbone",
        )
    return (f"backbone mode `{mode}`", "decoder and the trained backbone parts")


def scores_line(name: str, ev: dict) -> str:
    cells = " | ".join(f"{ev[k]:.3f}" for k in ("iou", "dice", "precision", "recall"))
    return f"| {name} | {cells} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, action="append", help="stage run folders, in order")
    ap.add_argument("--bench", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--eval-tta", help="the same with `omniem evaluate --tta`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", help="the shipped float16 file, for its size")
    a = ap.parse_args()
    stages = [read_run(Path(r)) for r in a.run]
    steps = sum(st for _, st, _ in stages)
    wall = sum(w for _, _, w in stages)
    later = "".join(
        f"\n- Stage {i}: the same recipe continued from stage {i - 1} "
        f"(`--set init_from=<stage {i - 1}> "
        f"train.time_budget_s={cfg['train']['time_budget_s']:.0f}`, "
        f"fresh warm-up and cosine decay): {st} steps, {w / 60:.1f} min."
        for i, (cfg, st, w) in enumerate(stages[1:], start=2)
    )
    bench = json.loads(Path(a.bench).read_text())
    ev = json.loads(Path(a.eval).read_text())
    ev_tta = json.loads(Path(a.eval_tta).read_text()) if a.eval_tta else None
    u, o = bench.get("unet", {}), bench.get("omniem", {})
    size = f"{Path(a.weights).stat().st_size / 1e6:.1f} MB" if a.weights else "see the file"
    # Met under one protocol, the same for both models: plain, or both with TTA.
    met = ev["iou"] >= 0.90 and o.get("iou", 0.0) > u.get("iou", 1.0)
    if ev_tta and "tta" in u and "tta" in o:
        met = met or (ev_tta["iou"] >= 0.90 and o["tta"]["iou"] > u["tta"]["iou"])
    mode_words, file_words = training_mode(stages[0][0])
    decay = stages[0][0]["optim"].get("ema_decay")
    ema = (
        f"; the saved weights are the moving average of the trained ones (`optim.ema_decay: "
        f"{decay:g}`)"
        if decay is not None
        else ""
    )
    table = scores_line("mito-2d", ev) + (
        "\n" + scores_line("mito-2d, `--tta`", ev_tta) if ev_tta else ""
    )
    tta_bench = (
        f" With `--tta` (logits averaged over 8 flips/rotations, both models): UNet "
        f"**{u['tta']['iou']:.3f}**, OmniEM **{o['tta']['iou']:.3f}**."
        if "tta" in u and "tta" in o
        else ""
    )
    tile_256 = (
        f" On 256 px tiles (the tiling of earlier releases), plainly: UNet "
        f"{u['tile_256']['iou']:.3f}, OmniEM {o['tile_256']['iou']:.3f}."
        if "tile_256" in u and "tile_256" in o
        else ""
    )
    # UNet steps per OmniEM step in the same time (OmniEM may stop before the budget).
    ratio = (u.get("steps", 0) / u.get("train_s", 1.0)) / max(
        o.get("steps", 1) / o.get("train_s", 1.0), 1e-9
    )
    verdict = (
        "Issue 6's target (IoU >= 0.90 and above the UNet at equal wall clock) is met."
        if met
        else "**Target not met**: issue 6 asks for IoU >= 0.90 and above the UNet at equal wall "
        f"clock. On two CPU cores the UNet took {ratio:.2f} steps for each OmniEM step in the "
        "same time, and the bundled backbone's features are weak (issue 5)."
    )
    if o.get("train_s", bench["budget_s"]) < 0.97 * bench["budget_s"]:
        verdict += (
            f" In this run OmniEM stopped at the recipe's {o['steps']} steps after "
            f"{o['train_s'] / 60:.1f} of the {bench['budget_s'] / 60:.0f} minutes (and the UNet's "
            "cosine decay ended at that step count too); the benchmark now lets the wall clock "
            "alone end both trainings."
        )
    text = f"""# mito-2d

Mitochondria segmentation of 2D EM images (2 classes: background, mitochondrion), an OmniEM
network (`omniem.nets.OmniEM`) in its hybrid layout: {layout(stages[0][0]["net"])};
{mode_words}.

## Data and licence

- Training: Lucchi++ (mouse hippocampus CA1, FIB-SEM, 5 nm) slices 0-131 of the training half
  (em5m `lucchi_pp/train`); validation: slices 132-164, the last 33 (`lucchi_pp/val`), not seen in
  training. EPFL public research release; cite Lucchi et al. 2012 and Casser et al. 2020.
- The backbone was pretrained on data including research-only and CC BY-NC-SA 3.0 sets (see its
  card): treat these weights as research / non-commercial use.
- Training voxel size: 5 nm; the engine resamples other pixel sizes to it.

## Training

- Stage 1: recipe `mito_2d` (`omniem train mito_2d`), run by
  `tools/bench/mito_baseline.py --budget-min {bench["budget_s"] / 60:.0f}`: wall-clock budget
  {bench["budget_s"] / 60:.0f} min, {stages[0][1]} steps of batch 8 (256 px crops, half centred on
  mitochondria, flips/rot90/gamma/intensity), DiceCE, AdamW, warm-up + cosine over the budget,
  {precision_words(stages[0][0])}{ema}; {stages[0][2] / 60:.1f} min.{later}
- In all: {steps} steps ({steps * 8} crops), {wall / 60:.1f} min of training wall time. No model
  selection on the validation slices (`data.val_split=null`: each stage's last weights are kept).
- Hardware: 2 CPU cores (AVX-512 BF16, no AMX), 24 GiB RAM, no GPU.

## Scores on the 33 Lucchi++ validation slices (pixels pooled)

`omniem evaluate --model mito-2d --images VAL/images --labels VAL/labels --json out.json
[--tta]`, sliding-window inference on {ev.get("tile", 256)} px tiles, overlap
{ev.get("overlap", 0.25):g} (this model's tiling: its card's `tile` and `overlap`, which evaluate,
predict and the engine use unless told otherwise):

| model | IoU | Dice | precision | recall |
|---|---|---|---|---|
{table}

Stage 1 against a plain MONAI 2D UNet (32-512 channels, 2 residual units) with the same
{bench["budget_s"] / 60:.0f}-minute budget, same run (`tools/bench/mito_baseline.py`): UNet IoU
**{u.get("iou", float("nan")):.3f}** after {u.get("steps", 0)} steps; OmniEM IoU
**{o.get("iou", float("nan")):.3f}** after {o.get("steps", 0)} steps, both scored on
{bench.get("tile", 256)} px tiles.{tta_bench}{tile_256}

{verdict}

## File

`omniem/models/weights/mito-2d.safetensors`: {file_words}, float16
({size}), network configuration and this card's facts in the safetensors metadata
(`omniem info mito-2d`). Training run config: `omniem/train/configs/mito_2d.yaml` with
`train.time_budget_s` as above and `data.val_split=null`.
"""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(a.out)


if __name__ == "__main__":
    main()
