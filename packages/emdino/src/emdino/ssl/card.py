"""Model card (markdown + JSON) of an exported pretraining run.

The card states what a user needs to trust and reuse the weights: architecture and input
normalisation, the training data with each dataset's licence and citation (from the em5m dataset
registry) and what was held out, the training budget (steps, images seen, wall time, hardware),
and probe results next to a randomly initialised backbone measured with the same probe.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from emdino.ssl.checkpoint import load_checkpoint

#: Slices of the reference datasets held out of the default pretraining sources for the probes.
HELD_OUT = (
    "lucchi_pp val (slices 132..164, the last 33 of the training volume)",
    "isbi2012 val (sections 25..29)",
    "drosophila_vnc val (sections 16..19)",
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def data_section(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per configured source, with licence and citation for reference datasets."""
    out = []
    for src in config["data"]["sources"]:
        entry: dict[str, Any] = {k: v for k, v in src.items() if v is not None}
        if src["kind"] == "dataset":
            from em5m import datasets

            info = datasets.info(src["name"])
            split = info.split(src.get("split"))
            entry.update(
                title=info.title,
                split_description=split.description,
                licence=info.licence,
                citation=info.citation,
                origin=info.source.page,
            )
        out.append(entry)
    return out


def build_card(
    *,
    name: str,
    export_path: str | Path,
    checkpoint_path: str | Path,
    probes: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The card as a JSON-friendly dict.

    Args:
        name: model name.
        export_path: the exported ``.safetensors``.
        checkpoint_path: the checkpoint it was exported from.
        probes: ``python -m emdino.eval`` report of the model.
        baseline: the same report for a randomly initialised backbone (same probe).
        notes: free-text caveats.
    """
    from safetensors import safe_open

    export_path, checkpoint_path = Path(export_path), Path(checkpoint_path)
    state = load_checkpoint(checkpoint_path)
    cfg = state["config"]
    with safe_open(str(export_path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        n_params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    stages = training_stages(checkpoint_path, state)
    card: dict[str, Any] = {
        "name": name,
        "weights": {
            "file": export_path.name,
            "sha256": _sha256(export_path),
            "bytes": os.path.getsize(export_path),
            "format": "safetensors, timm VisionTransformer state dict (teacher network)",
            "parameters": n_params,
            "metadata": meta,
        },
        "architecture": json.loads(meta["arch"]),
        "normalization": json.loads(meta["normalization"]),
        "training": {
            "objective": (
                "DINOv2: DINO class-token loss + iBOT masked-patch loss + KoLeo, EMA teacher"
            ),
            "config": cfg,
            "steps": sum(st["steps"] for st in stages),
            "images_seen": sum(st["images_seen"] or 0 for st in stages),
            "wall_time_s": sum(st["wall_time_s"] or 0.0 for st in stages),
            "stages": stages,
            "hardware": {
                "cpu": _cpu_name(),
                "cpus_visible": os.cpu_count(),
                "torch_threads": cfg["train"]["num_threads"],
                "precision": cfg["train"]["precision"],
                "shared": "2 CPU cores shared with other users (wall time includes contention)",
            },
        },
        "data": {
            "sources": data_section(cfg),
            "held_out_for_evaluation": list(HELD_OUT),
            "labels_used_for_pretraining": False,
        },
        "evaluation": {"model": probes, "random_init_same_probe": baseline},
        "licence_note": (
            "The weights are derived from the datasets above; several are research-only or "
            "non-commercial (CC BY-NC-SA 3.0 for the Drosophila VNC stack). Treat the weights as "
            "research / non-commercial use, share-alike, and cite the datasets."
        ),
        "notes": list(notes or []),
    }
    return card


def training_stages(checkpoint_path: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs behind a checkpoint, oldest first: a run started with ``train.init_backbone``
    from another run's checkpoint continues that run's training (its heads restart).

    Each stage: ``checkpoint``, ``config`` name, ``steps``, ``images_seen``, ``wall_time_s``.

    Raises:
        ValueError: a stage's ``init_backbone`` checkpoint is missing (the lineage would be
            incomplete), or the chain is circular.
    """
    stages: list[dict[str, Any]] = []
    path, st = Path(checkpoint_path), state
    while True:
        cfg = st["config"]
        stages.append(
            {
                "checkpoint": str(path),
                "config": cfg.get("name"),
                "steps": int(st["step"]),
                "images_seen": st["extra"].get("images_seen"),
                "wall_time_s": st["extra"].get("wall_s"),
            }
        )
        parent = (cfg.get("train") or {}).get("init_backbone")
        if not parent:
            return stages[::-1]
        parent_path = Path(parent)
        if parent_path.suffix != ".pt":  # an export: its own card tells its story
            stages.append(
                {
                    "checkpoint": str(parent_path),
                    "config": None,
                    "steps": 0,
                    "images_seen": 0,
                    "wall_time_s": 0.0,
                    "note": "exported weights",
                }
            )
            return stages[::-1]
        if not parent_path.is_file():
            raise ValueError(f"{path} was started from {parent_path}, which is missing")
        if any(s["checkpoint"] == str(parent_path) for s in stages) or len(stages) > 32:
            raise ValueError(f"circular init_backbone chain at {parent_path}")
        path, st = parent_path, load_checkpoint(parent_path)


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def card_markdown(card: dict[str, Any]) -> str:
    """Render the card as markdown."""
    a, t, n = card["architecture"], card["training"], card["normalization"]
    lines = [
        f"# {card['name']}",
        "",
        "EM-DINO backbone pretrained with DINOv2 self-supervision on electron-microscopy images.",
        "",
        "## Weights",
        "",
        f"- file: `{card['weights']['file']}` ({card['weights']['bytes'] / 1e6:.1f} MB, "
        f"{card['weights']['parameters'] / 1e6:.2f} M parameters, float16)",
        f"- sha256: `{card['weights']['sha256']}`",
        f"- {card['weights']['format']}; load with `emdino.ssl.load_exported(path)`",
        f"- architecture: ViT, patch {a['patch_size']}, embed {a['embed_dim']}, "
        f"depth {a['depth']}, {a['num_heads']} heads, {a['in_chans']} input channel, LayerScale "
        f"{a['init_values']}, position embedding for {a['img_size']} px (resampled for other "
        "sizes)",
        f"- input: {n['input']}, then `(x - {n['mean']}) / {n['std']}`",
        "",
        "## Training",
        "",
        f"- objective: {t['objective']}",
        f"- steps: {t['steps']}, batch {t['config']['optim']['batch_size']}, images seen: "
        f"{t['images_seen']}"
        + (
            " in "
            + " then ".join(
                f"{st['steps']} steps of `{st['config']}`" for st in t.get("stages", [])
            )
            + " (each later stage starts from the previous teacher backbone with fresh heads)"
            if len(t.get("stages", [])) > 1
            else ""
        ),
        f"- crops: 2 x {t['config']['crops']['global_size']} px global + "
        f"{t['config']['crops']['n_local']} x {t['config']['crops']['local_size']} px local, "
        f"from {t['config']['data']['tile_size']} px tiles at native pixel size",
        f"- wall time: {t['wall_time_s'] / 3600:.2f} h on {t['hardware']['cpu']} "
        f"({t['hardware']['torch_threads']} threads, {t['hardware']['precision']} autocast; "
        f"{t['hardware']['shared']})",
        f"- configuration `{t['config']['name']}`; the full resolved configuration is in the "
        "JSON card",
        "",
        "## Data (labels not used)",
        "",
        "| source | what | licence |",
        "|---|---|---|",
    ]
    cites: dict[str, str] = {}
    for s in card["data"]["sources"]:
        what = f"`{s.get('name', s.get('uri'))}` {s.get('split', '')}".strip()
        desc = f"{s.get('split_description', s['kind'])}"
        if "title" in s:
            desc += f" of {s['title']}"
            cites[s["name"]] = s["citation"]
        lines.append(f"| {what} | {desc} | {s.get('licence', 'see source')} |")
    lines += ["", "Cite:", ""] + [f"- `{k}`: {v}" for k, v in cites.items()]
    lines += [
        "",
        "Held out of pretraining (so the probes below are measured on unseen slices): "
        + "; ".join(card["data"]["held_out_for_evaluation"])
        + ".",
        "",
        "## Evaluation (frozen features, linear probes)",
        "",
    ]
    model = card["evaluation"]["model"]
    base = card["evaluation"]["random_init_same_probe"] or {}
    proto = model.get("protocol", {})
    lines += [
        f"Protocol: final-norm patch tokens of the last {proto.get('n_last_blocks')} blocks, "
        f"concatenated; non-overlapping {proto.get('tile')} px tiles at native pixel size; "
        "logistic regression on patch features, scores upsampled bilinearly to pixels, trained on "
        "the train slices, scored on the val slices; the same recipe for the random-init "
        "backbone (same architecture, seed 0).",
        "",
        "| task | split | metric | EM-DINO | random init | difference |",
        "|---|---|---|---|---|---|",
    ]
    mres, bres = model.get("results", {}), base.get("results", {})
    for task, r in mres.items():
        b = bres.get(task, {})
        split = r.get("split", "")
        rows: list[tuple[str, Any, Any]] = []
        if "mito_iou" in r:
            rows.append(("mitochondrion IoU", r["mito_iou"], b.get("mito_iou")))
        elif "iou" in r:
            for cls, v in r["iou"].items():
                rows.append((f"IoU {cls}", v, b.get("iou", {}).get(cls)))
            rows.append(("mean IoU", r["miou"], b.get("miou")))
        for k in ("knn_accuracy", "linear_accuracy"):
            if k in r:
                rows.append((k.replace("_", " "), r[k], b.get(k)))
        for metric, v, bv in rows:
            diff = v - bv if isinstance(v, float) and isinstance(bv, float) else ""
            lines.append(f"| {task} | {split} | {metric} | {_fmt(v)} | {_fmt(bv)} | {_fmt(diff)} |")
    lines += [
        "",
        "Cite Lucchi et al. 2012 and Casser et al. 2020 (Lucchi++) and Gerhard et al. 2013 "
        "(Drosophila VNC) with these numbers.",
        "",
        "## Licence",
        "",
        card["licence_note"],
        "",
    ]
    if card["notes"]:
        lines += ["## Notes", ""] + [f"- {x}" for x in card["notes"]] + [""]
    return "\n".join(lines)


def write_card(card: dict[str, Any], out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.card.md`` and ``<stem>.card.json``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.card.md", out / f"{stem}.card.json"
    md.write_text(card_markdown(card))
    js.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return md, js
