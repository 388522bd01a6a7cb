"""Copy a trained OmniEM model into the package as float16, with its benchmark in the card.

Usage::

    python tools/cards/ship_model.py RUN/model.safetensors \
        packages/omniem/src/omniem/models/weights/NAME.safetensors --bench BENCH.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from omniem.modelfile import load_model, read_metadata, save_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("target")
    ap.add_argument("--bench", help="tools/bench output measured on the source model")
    a = ap.parse_args()
    card = dict(read_metadata(a.source)["card"])
    if a.bench:
        card["benchmark"] = json.loads(Path(a.bench).read_text())
    save_model(load_model(a.source), a.target, card=card, dtype=torch.float16)
    print(a.target)


if __name__ == "__main__":
    main()
