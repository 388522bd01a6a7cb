"""``python -m emdino.ssl.export``: teacher backbone -> safetensors, plus a model card.

Examples::

    python -m emdino.ssl.export /work/ckpt/run/last.pt --out-dir /work/ckpt/export \\
        --name emdino-vitt8-cpu --probes probe.json --baseline probe_random.json

writes ``<name>.safetensors`` (float16 by default), ``<name>.card.md`` and ``<name>.card.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from emdino.ssl.card import build_card, write_card
from emdino.ssl.checkpoint import export_backbone

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main(argv: Sequence[str] | None = None) -> int:
    """Export a checkpoint's teacher backbone and write its card; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m emdino.ssl.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="pretraining checkpoint (.pt)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", required=True, help="file stem and model name")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float16")
    p.add_argument("--network", choices=["teacher", "student"], default="teacher")
    p.add_argument("--probes", help="python -m emdino.eval report of this checkpoint (JSON)")
    p.add_argument("--baseline", help="the same report of a random-init backbone (JSON)")
    p.add_argument("--note", action="append", default=[], help="a caveat for the card")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    weights = out / f"{args.name}.safetensors"
    try:
        export_backbone(args.checkpoint, weights, dtype=_DTYPES[args.dtype], which=args.network)
    except (FileNotFoundError, ValueError) as err:
        print(f"emdino.ssl.export: {err}", file=sys.stderr)
        return 2
    print(f"weights: {weights}")
    if args.probes:
        probes = json.loads(Path(args.probes).read_text())
        baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
        card = build_card(
            name=args.name,
            export_path=weights,
            checkpoint_path=args.checkpoint,
            probes=probes,
            baseline=baseline,
            notes=args.note,
        )
        md, js = write_card(card, out, args.name)
        print(f"card: {md}\ncard: {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
