"""Write the membrane-2d or organelle-2d model card (markdown) from its run and its scores.

Usage::

    python tools/cards/segmentation_card.py membrane --run RUN_DIR --scores SCORES.json \
        --out packages/omniem/src/omniem/models/cards/membrane-2d.md
    python tools/cards/segmentation_card.py organelle --run RUN_DIR --scores SCORES.json \
        --out packages/omniem/src/omniem/models/cards/organelle-2d.md

``SCORES.json`` is the output of ``tools/bench/segmentation_val.py`` for the exported model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_record import precision_words, read_run  # tools/cards/, this script's folder

DATA = {
    "membrane": (
        "ISBI 2012 segmentation challenge (Drosophila first-instar larva VNC, serial-section TEM, "
        "4 x 4 x 50 nm): labelled slices 0-24 (em5m `isbi2012/train`) for training, 25-29 "
        "(`isbi2012/val`) held out. Public research release of the challenge; cite "
        "Cardona et al. 2010 and Arganda-Carreras et al. 2015."
    ),
    "organelle": (
        "Drosophila larva VNC ssTEM stack 1 (Gerhard et al. 2013, 4.6 x 4.6 x 45-50 nm), "
        "sections 0-15 (em5m `drosophila_vnc/train`) for training, 16-19 (`drosophila_vnc/val`) "
        "held out. CC BY-NC-SA 3.0: non-commercial use."
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=sorted(DATA))
    ap.add_argument("--run", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    run = Path(a.run)
    cfg, steps, wall = read_run(run)
    sc = json.loads(Path(a.scores).read_text())
    name = cfg["card"]["name"]
    o, d = cfg["optim"], cfg["data"]
    lines = [
        f"# {name}",
        "",
        f"{cfg['card']['description'].rstrip('.')}: an OmniEM network (`omniem.nets.OmniEM`, "
        f"{cfg['net']['out_channels']} classes: {', '.join(cfg['card']['classes'])}) on the "
        "bundled EM-DINO ViT-T/8 (`vit_tiny_patch8.emdino`, stored in the file; backbone mode "
        f"`{cfg['net']['backbone_mode']}`).",
        "",
        "## Data and licence",
        "",
        f"- {DATA[a.task]}",
        "- The backbone was pretrained on data including research-only and CC BY-NC-SA 3.0 sets "
        "(see its card): treat these weights as research / non-commercial use.",
        "",
        "## Training",
        "",
        f"- Recipe `{name.replace('-', '_')}` (`omniem train`): {steps} steps of batch "
        f"{o['batch_size']} ({d['crop']} px crops, flips/rot90/gamma/intensity"
        + (", elastic" if cfg["augment"].get("elastic_p", 0) > 0 else "")
        + f"), loss `{cfg['loss']['kind']}`, AdamW (lr {o['lr']}, backbone x "
        f"{o['backbone_lr_mult']}), warm-up and cosine decay over a wall-clock budget of "
        f"{cfg['train']['time_budget_s'] / 60:.0f} min, {precision_words(cfg)}; {wall / 60:.1f} "
        "min of "
        "training wall time. A short run: the scores below are what this budget buys on two "
        "CPU cores, not what the recipe can reach.",
        "- Hardware: 2 CPU cores (AVX-512 BF16, no AMX), 24 GiB RAM, no GPU.",
        "",
        f"## Scores (`tools/bench/segmentation_val.py {a.task} --model {name}`)",
        "",
        f"{sc['data']}, pixels pooled over the slices, 256 px tiles, overlap 0.25, "
        f"{sc.get('precision', 'bf16')}.",
        "",
    ]
    if a.task == "membrane":
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| membrane F1 (Dice) | {sc['membrane_f1']:.3f} |",
            f"| membrane IoU | {sc['membrane_iou']:.3f} |",
            f"| membrane precision / recall | {sc['membrane_precision']:.3f} / "
            f"{sc['membrane_recall']:.3f} |",
            f"| V_Rand (cells, higher is better) | {sc['v_rand']:.3f} |",
            f"| VOI split / merge (bits) | {sc['voi_split']:.3f} / {sc['voi_merge']:.3f} |",
            "",
            f"Cells: {sc['cells_from']}, against the connected components of the true "
            "non-membrane pixels; V_Rand is the ISBI 2012 challenge's foreground-restricted Rand "
            "F-score (1 - adapted Rand error).",
        ]
    else:
        lines += ["| class | IoU | Dice |", "|---|---|---|"]
        for c in sc["iou"]:
            lines.append(f"| {c} | {sc['iou'][c]:.3f} | {sc['dice'][c]:.3f} |")
        lines += [f"| **mean** | {sc['miou']:.3f} | {sc['mdice']:.3f} |"]
    lines.append("")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print(a.out)


if __name__ == "__main__":
    main()
