"""Write the denoise-2d or sr2x-2d model card (markdown) from its run and its benchmark JSON.

Usage::

    python tools/cards/restoration_card.py denoise --run RUN_DIR --bench BENCH.json \
        --out packages/omniem/src/omniem/models/cards/denoise-2d.md
    python tools/cards/restoration_card.py sr2x --run RUN_DIR --bench BENCH.json \
        --out packages/omniem/src/omniem/models/cards/sr2x-2d.md

``BENCH.json`` is the output of ``tools/bench/restoration.py`` for the exported model;
``--bench-tta`` optionally adds the same benchmark run with ``--tta``.

The card describes one run. The shipped sr2x-2d was trained in two stages (the second from the
first's best weights), so its card was edited by hand to list both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_record import precision_words, read_run  # tools/cards/, this script's folder

TITLE = {
    "denoise": ("denoise-2d", "Denoising of 2D EM images (Poisson-Gaussian noise)"),
    "sr2x": ("sr2x-2d", "2x super-resolution of 2D EM images (40 nm in, 20 nm out)"),
}

#: Where a self-supervised dataset comes from, and its licence.
SOURCES = {"emdiffuse": " (EMDiffuse demo data: overlapping crops of one raw TEM image; MIT)"}


def _row(name: str, s: dict) -> str:
    return f"| {name} | {s['psnr']:.2f} | {s['ssim']:.3f} |"


def _noise_line(r: dict) -> str:
    return (
        f"The clean targets carry noise of their own (std about {r['target_noise_std']}, "
        "`omniem.degrade.estimate_noise_std`, which also counts some texture): a method whose "
        f"only error were that noise would score about {r['psnr_at_target_noise_db']} dB."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=sorted(TITLE))
    ap.add_argument(
        "--run", required=True, action="append", help="run folder; repeat for later stages"
    )
    ap.add_argument("--bench", required=True)
    ap.add_argument("--bench-tta", help="the benchmark run with --tta (adds a row)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    name, title = TITLE[a.task]
    stages = [read_run(Path(r)) for r in a.run]
    cfg = stages[-1][0]  # the last stage's recipe (earlier stages: see `init_from`)
    steps, wall = sum(s[1] for s in stages), sum(s[2] for s in stages)

    def stage(c: dict, n: int) -> str:
        mixed = ", with blind-spot samples" if c["data"].get("self_supervised") else ""
        return f"{n} steps (`{c['loss']['kind']}`, `{c['net']['backbone_mode']}`{mixed})"

    stage_text = (
        " in "
        + " then ".join(stage(c, n) for c, n, _ in stages)
        + " (each later stage starts from the previous stage's model, `init_from`)"
        if len(stages) > 1
        else ""
    )
    bench = json.loads(Path(a.bench).read_text())
    tta = json.loads(Path(a.bench_tta).read_text()) if a.bench_tta else None
    o, d, n = cfg["optim"], cfg["data"], cfg["net"]
    title = (cfg.get("card") or {}).get("description", title).rstrip(".")
    binned = int(d.get("bin", 1))
    bin_text = (
        f" area-binned {binned}x to {5 * binned} nm (em5m slices are 5 nm; binning halves the "
        "targets' noise)"
        if binned > 1
        else ""
    )
    tta_name = f"**{name}** with `--tta` (mean over 8 flips/rotations)"
    lines = [
        f"# {name}",
        "",
        f"{title}: an OmniEM network (`omniem.nets.OmniEM`, residual restoration head"
        + (", output scale 2" if a.task == "sr2x" else "")
        + ") on the bundled EM-DINO ViT-T/8 (`vit_tiny_patch8.emdino`, stored in the file; "
        "backbone mode "
        f"`{n['backbone_mode']}`).",
        "",
        "## Data and licence",
        "",
        "- Training: Lucchi++ (mouse hippocampus CA1, FIB-SEM, 5 nm, isotropic) slices 0-131 "
        f"(em5m `lucchi_pp/train`){bin_text}, clean images as targets and "
        + (
            "synthetic Poisson-Gaussian noise at the two levels of `omniem.degrade.NOISE_LEVELS` "
            "as inputs."
            if a.task == "denoise"
            else "their 2x area down-sampled versions (`omniem.degrade.downsample2x`) as inputs."
        ),
        *(
            [
                "- Self-supervised (blind spot, Noise2Void-style; in the same batches, each sample "
                f"with probability {d['self_supervised_fraction']}): real noisy images without "
                "clean targets, "
                + ", ".join(
                    f"em5m `{ds}/{sp}`{SOURCES.get(ds, '')}" for ds, sp in d["self_supervised"]
                )
                + "."
            ]
            if d.get("self_supervised")
            else []
        ),
        "- Evaluation: the held-out slices 132-164 (`lucchi_pp/val`), never trained on; the "
        "training run used 4 of them for its validation loss (model selection).",
        "- EPFL public research release; cite Lucchi et al. 2012 and Casser et al. 2020. The "
        "backbone was pretrained on data including research-only and CC BY-NC-SA 3.0 sets (see "
        "its card): treat these weights as research / non-commercial use.",
        "",
        "## Training",
        "",
        f"- Recipe `{TITLE[a.task][0].replace('-', '_')}` (`omniem train`): {steps} steps"
        f"{stage_text} of batch {o['batch_size']} ({d['crop']} px crops, flips/rot90), loss "
        f"`{cfg['loss']['kind']}`, AdamW (last stage lr {o['lr']}), warm-up and cosine decay over "
        f"a wall-clock budget, {precision_words(cfg)}; {wall / 60:.1f} min of training wall "
        "time.",
        "- Hardware: 2 CPU cores (AVX-512 BF16, no AMX), 24 GiB RAM, no GPU, shared with other "
        "work.",
        "",
        f"## Scores (`tools/bench/restoration.py {a.task} --model {name}"
        + (f" --bin {binned}" if binned > 1 else "")
        + "`, and with `--tta`" * bool(tta)
        + ")",
        "",
        f"{bench['data']}; PSNR in dB (data range 1), SSIM.",
        "",
    ]
    if a.task == "denoise":
        for level, r in bench["levels"].items():
            lines += [
                f"Noise level `{level}` ({r['noise']}):",
                "",
                "| method | PSNR | SSIM |",
                "|---|---|---|",
                _row("noisy input", r["noisy"]),
                _row(
                    f"non-local means (sigma {r['nlm_setting']['sigma']}, h/sigma "
                    f"{r['nlm_setting']['h_factor']}, tuned on training slices)",
                    r["nlm"],
                ),
                _row(f"**{name}**", r["model"]),
                *([_row(tta_name, tta["levels"][level]["model"])] if tta else []),
                "",
                f"Gain: {r['gain_vs_noisy_db']:+.2f} dB over the noisy input (target +6), "
                f"{r['gain_vs_nlm_db']:+.2f} dB over NLM (target +1): "
                + ("**met**." if r["meets_issue_6"] else "**not met**."),
                *(
                    [
                        f"With `--tta`: {tta['levels'][level]['gain_vs_noisy_db']:+.2f} dB and "
                        f"{tta['levels'][level]['gain_vs_nlm_db']:+.2f} dB: "
                        + ("**met**." if tta["levels"][level]["meets_issue_6"] else "**not met**.")
                    ]
                    if tta
                    else []
                ),
                "",
                *([_noise_line(r), ""] if "target_noise_std" in r else []),
            ]
    else:
        lines += [
            "| method | PSNR | SSIM |",
            "|---|---|---|",
            _row("bicubic", bench["bicubic"]),
            _row(f"**{name}**", bench["model"]),
            *([_row(tta_name, tta["model"])] if tta else []),
            "",
            f"Gain over bicubic: {bench['gain_vs_bicubic_db']:+.2f} dB (target +1.5): "
            + ("**met**." if bench["meets_issue_6"] else "**not met**."),
            *(
                [
                    f"With `--tta`: {tta['gain_vs_bicubic_db']:+.2f} dB: "
                    + ("**met**." if tta["meets_issue_6"] else "**not met**.")
                ]
                if tta
                else []
            ),
            "",
            *([_noise_line(bench), ""] if "target_noise_std" in bench else []),
        ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print(a.out)


if __name__ == "__main__":
    main()
