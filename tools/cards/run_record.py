"""What a finished `omniem train` run folder records, for the model-card tools."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def read_run(run: Path) -> tuple[dict, int, float]:
    """The run's resolved ``config.yaml``, its last step and its training wall time (seconds)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    steps = max((r.get("step", 0) for r in recs), default=0)
    wall = max((r.get("wall_s", 0.0) for r in recs), default=0.0)
    return cfg, steps, wall


def precision_words(cfg: dict) -> str:
    """How the run computed, from its saved ``train.precision`` (resolved since "auto" existed;
    older runs, all bf16, saved "bf16")."""
    return "bf16 autocast" if cfg["train"].get("precision", "bf16") == "bf16" else "fp32"
