"""The pretraining loop, checkpoints, DDP/FSDP, and ``emdino pretrain``.

Usage::

    emdino pretrain CONFIG [--set key.sub=value ...] [--out DIR] [--resume]
    torchrun --nproc-per-node 2 -m emdino.ssl.train CONFIG --out DIR   # multi-process

``CONFIG`` is a YAML file of overrides of ``configs/default.yaml`` or the name of a bundled one
(``vitt8_cpu``, ``vits14_cpu``, ...). A run folder holds ``config.yaml`` (resolved),
``metrics.jsonl``, ``curves.png``, ``last.pt`` and numbered checkpoints. ``--resume`` continues
from ``last.pt`` exactly (same losses as an uninterrupted run), refusing a changed configuration
except for the ``train`` section and data-loader workers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdino.precision import resolve_precision
from emdino.ssl import distributed
from emdino.ssl.checkpoint import backbone_state_dict, load_checkpoint, restore, save_checkpoint
from emdino.ssl.config import PretrainConfig, load_config, save_config
from emdino.ssl.curves import append_jsonl, plot_curves, read_jsonl
from emdino.ssl.data import build_dataset, build_loader
from emdino.ssl.meta_arch import SSLMetaArch
from emdino.ssl.monitor import check_collapse, warn_collapse
from emdino.ssl.optim import apply_schedules, build_optimizer, param_groups
from emdino.ssl.schedules import build_schedules

#: Config sections/keys that may change between a run and its resumption.
RESUMABLE_CHANGES = ("train.", "data.workers", "data.prefetch_factor", "name")
#: Per-step losses, averaged over ranks and over a logging window.
LOSS_KEYS = ("loss", "dino", "koleo", "ibot")
#: Collapse monitor (emdino.ssl.monitor): averaged ignoring NaN (a rank without iBOT targets).
MONITOR_KEYS = ("dino_target_entropy", "ibot_target_entropy")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ and that may not change on resume.

    Keys present in only one of the two are options added or removed between code versions; they
    are taken to keep the old behaviour and are not reported.

    Examples:
        >>> config_changes({"optim": {"base_lr": 1}}, {"optim": {"base_lr": 2}})
        ['optim.base_lr']
    """
    a, b = _flatten(old), _flatten(new)
    return [k for k in sorted(a) if k in b and a[k] != b[k] and not k.startswith(RESUMABLE_CHANGES)]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _wrap_student(meta: SSLMetaArch, cfg: PretrainConfig, info: distributed.DistInfo) -> None:
    if info.world_size == 1:
        return
    if cfg.dist.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.local_rank] if info.device.type == "cuda" else None
        meta.wrap_student(DDP(meta.student, device_ids=ids, broadcast_buffers=False))
        return
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # Shard student and teacher the same way so the EMA is a local, shard-wise update.
    for net in (meta.student, meta.teacher):
        for blk in net.backbone.vit.blocks:
            fully_shard(blk)
        fully_shard(net)
    # The teacher runs through teacher_forward, not forward: it needs FSDP's unshard hooks too.
    register_fsdp_forward_method(meta.teacher, "teacher_forward")
    meta.wrap_student(meta.student)


class _StopFlag:
    """Set by SIGTERM/SIGINT: finish the step, checkpoint, exit."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a test thread)
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop = True

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def init_backbone(meta: SSLMetaArch, path: str | Path) -> None:
    """Load a checkpoint's teacher backbone (or an export) into the student and the teacher.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the weights do not fit the configured architecture.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"train.init_backbone: {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = {k: v.float() for k, v in load_file(str(p)).items()}
    else:
        weights = backbone_state_dict(load_checkpoint(p), "teacher")
    for net in (meta.student, meta.teacher):
        try:
            net.backbone.vit.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{p} does not fit this configuration's backbone: {err}") from None


def train(
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) pretraining.

    Args:
        cfg: the resolved configuration.
        out_dir: run folder (created). Without ``resume`` it must not hold a checkpoint yet.
        resume: continue from ``out_dir/last.pt`` (starts fresh if there is none).
        on_step: called after every step with that step's record (rank-averaged losses).

    Returns:
        ``{"step", "history", "out_dir", "wall_s", "images_seen"}``; ``history`` holds every
        step's record of this invocation.

    Raises:
        FileExistsError: ``out_dir`` already has a checkpoint and ``resume`` is False.
        ValueError: the configuration changed in a way that would break an exact resume.
    """
    info = distributed.setup(cfg.train.device, cfg.dist.backend)
    # The saved config (and a resume's comparison) holds the precision computed in, not "auto".
    precision = resolve_precision(cfg.train.precision, info.device)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    out = Path(out_dir)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume or another --out")
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    # Identical initialisation on every rank; per-rank RNG afterwards (stochastic depth).
    _seed_all(cfg.seed)
    meta = SSLMetaArch(cfg, info.device)
    if cfg.train.init_backbone and not (resume and last.exists()):
        init_backbone(meta, cfg.train.init_backbone)
    _wrap_student(meta, cfg, info)
    _seed_all(cfg.seed + 1000 * info.rank)
    groups = param_groups(
        meta.student.named_parameters(),
        cfg.model.depth,
        cfg.optim.layerwise_decay,
        cfg.optim.patch_embed_lr_mult,
    )
    optimizer = build_optimizer(groups, cfg.optim.betas)
    schedules = build_schedules(cfg)

    start, wall_before, seen_before = 0, 0.0, 0
    if resume and last.exists():
        state = load_checkpoint(last)
        changed = config_changes(state["config"], cfg.to_dict())
        if changed:
            raise ValueError(f"cannot resume {last}: configuration changed at {changed}")
        start = restore(meta, optimizer, state)
        wall_before = float(state["extra"].get("wall_s", 0.0))
        seen_before = int(state["extra"].get("images_seen", 0))
        del state

    total = cfg.optim.total_steps
    end = (
        total
        if cfg.train.stop_after_steps is None
        else min(total, start + cfg.train.stop_after_steps)
    )
    dataset = build_dataset(cfg)
    if distributed.is_main():
        append_jsonl(
            out / "metrics.jsonl",
            {
                "event": "start",
                "step": start,
                "world_size": info.world_size,
                "device": str(info.device),
                "threads": torch.get_num_threads(),
                "dataset_entries": len(dataset),
                "sources": dataset.summary(),
            },
        )
    loader = build_loader(dataset, cfg, start, info.rank, info.world_size, total_steps=end)

    stop = _StopFlag()
    stop.install()
    history: list[dict[str, Any]] = []
    window: list[dict[str, Any]] = []
    warned: set[str] = set()
    collapse_after = cfg.optim.warmup_steps + cfg.optim.freeze_last_layer_steps
    step = start
    t_run = time.perf_counter()
    t_prev = time.perf_counter()
    meta.student.train()
    try:
        for batch in loader:
            t_data = time.perf_counter() - t_prev
            values = schedules.at(step)
            apply_schedules(optimizer, values["lr"], values["wd"], values["last_layer_lr"])
            optimizer.zero_grad(set_to_none=True)
            losses = meta.forward_backward(batch, values["teacher_temp"])
            with torch.profiler.record_function("optimizer"):
                norms = meta.clip_gradients(cfg.optim.clip_grad)
                optimizer.step()
            with torch.profiler.record_function("ema"):
                meta.update_teacher(values["momentum"])
            step += 1
            # Rank-averaged losses: equal to a single process holding the global batch.
            vec = torch.stack([losses[k] for k in LOSS_KEYS]).cpu()
            vec = distributed.all_reduce_(vec) / info.world_size
            now = time.perf_counter()
            rec = {
                "step": step,
                **dict(zip(LOSS_KEYS, vec.tolist(), strict=True)),
                **_rank_nanmean({k: losses[k] for k in MONITOR_KEYS}),
                **values,
                **norms,
                "step_s": now - t_prev,
                "data_s": t_data,
                "images_per_s": cfg.optim.batch_size / max(now - t_prev, 1e-9),
            }
            t_prev = now
            history.append(rec)
            window.append(rec)
            if on_step is not None:
                on_step(rec)
            if not np.isfinite(rec["loss"]):
                raise FloatingPointError(f"loss is {rec['loss']} at step {step}")
            wall = wall_before + (now - t_run)
            seen = seen_before + (step - start) * cfg.optim.batch_size
            if distributed.is_main() and (step % cfg.train.log_every == 0 or step == end):
                logged = _window_record(window, wall, seen)
                append_jsonl(out / "metrics.jsonl", logged)
                window = []
                for head in ("dino", "ibot"):
                    msg = check_collapse(
                        head, logged[f"{head}_target_entropy"], step, collapse_after
                    )
                    if msg and head not in warned:
                        warned.add(head)
                        warn_collapse(msg)
                        append_jsonl(
                            out / "metrics.jsonl",
                            {"event": "collapse", "step": step, "head": head, "message": msg},
                        )
            stop_now = _agree(stop.stop)
            if step % cfg.train.checkpoint_every == 0 or step == end or stop_now:
                _checkpoint(meta, optimizer, step, cfg, out, wall, seen)
            if stop_now:
                break
    finally:
        stop.uninstall()
    wall = wall_before + (time.perf_counter() - t_run)
    return {
        "step": step,
        "history": history,
        "out_dir": str(out),
        "wall_s": wall,
        "images_seen": seen_before + (step - start) * cfg.optim.batch_size,
    }


def _agree(flag: bool) -> bool:
    """True on every rank if any rank was asked to stop."""
    t = distributed.all_reduce_(torch.tensor([1.0 if flag else 0.0]))
    return bool(t.item() > 0)


def _rank_nanmean(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each scalar over the ranks where it is finite (NaN where it is nowhere)."""
    v = torch.stack([values[k].float().cpu() for k in values])
    ok = torch.isfinite(v)
    sums = distributed.all_reduce_(torch.stack([torch.where(ok, v, 0.0), ok.float()]))
    mean = sums[0] / sums[1]  # 0/0 = NaN where no rank had a value
    return dict(zip(values, mean.tolist(), strict=True))


def _window_record(window: list[dict[str, Any]], wall: float, seen: int) -> dict[str, Any]:
    last = window[-1]
    averaged = (*LOSS_KEYS, *MONITOR_KEYS)
    rec: dict[str, Any] = {k: v for k, v in last.items() if k not in averaged}
    for k in LOSS_KEYS:
        rec[k] = float(np.mean([r[k] for r in window]))
    for k in MONITOR_KEYS:
        finite = [r[k] for r in window if np.isfinite(r[k])]
        rec[k] = float(np.mean(finite)) if finite else None  # JSON null, not NaN
    total_s = sum(r["step_s"] for r in window)
    rec["images_per_s"] = len(window) * (last["images_per_s"] * last["step_s"]) / max(total_s, 1e-9)
    rec["data_s"] = float(np.mean([r["data_s"] for r in window]))
    rec["step_s"] = total_s / len(window)
    rec["wall_s"] = wall
    rec["images_seen"] = seen
    return rec


def _checkpoint(
    meta: SSLMetaArch,
    optimizer: torch.optim.Optimizer,
    step: int,
    cfg: PretrainConfig,
    out: Path,
    wall: float,
    seen: int,
) -> None:
    last = out / "last.pt"
    save_checkpoint(
        last,
        meta=meta,
        optimizer=optimizer,
        step=step,
        config=cfg.to_dict(),
        extra={"wall_s": wall, "images_seen": seen},
    )
    if not distributed.is_main():
        return
    if cfg.train.keep_checkpoints > 0:
        numbered = out / f"step_{step:07d}.pt"
        if not numbered.exists():
            try:
                os.link(last, numbered)
            except OSError:
                import shutil

                shutil.copyfile(last, numbered)
        for old in sorted(out.glob("step_*.pt"))[: -cfg.train.keep_checkpoints]:
            old.unlink()
    records = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    if records:
        plot_curves(records, out / "curves.png")


# ---------------------------------------------------------------------------------------------
# Command line


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``CONFIG``, ``--set``, ``--out``, ``--resume`` to a parser."""
    parser.add_argument(
        "config",
        help="override YAML file or bundled config name (vitt8_cpu, vits14_cpu, default, ...)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (dotted key, YAML value); repeatable",
    )
    parser.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    return parser


def add_pretrain_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pretrain`` on an argparse subparsers object; dispatch with ``args.func(args)``.

    Examples:
        >>> p = argparse.ArgumentParser(prog="emdino")
        >>> sub = p.add_subparsers()
        >>> _ = add_pretrain_parser(sub)
        >>> args = p.parse_args(["pretrain", "vitt8_cpu", "--set", "seed=1"])
        >>> args.overrides
        ['seed=1']
    """
    parser = subparsers.add_parser(
        "pretrain",
        help="DINOv2 self-supervised pretraining",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pretrain_arguments(parser)
    parser.set_defaults(func=run_from_args)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Execute a parsed ``pretrain`` command; returns the exit code (2 on user errors)."""
    try:
        cfg = load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"emdino pretrain: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    try:
        result = train(cfg, out, resume=args.resume)
    except (FileExistsError, ValueError) as err:
        print(f"emdino pretrain: {err}", file=sys.stderr)
        return 2
    if distributed.is_main():
        print(f"emdino pretrain: step {result['step']}/{cfg.optim.total_steps}, run in {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``emdino pretrain`` as a function (``python -m emdino.ssl.train`` and torchrun use it).

    Examples:
        >>> main(["tiny_test", "--out", "/tmp/run"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(
        prog="emdino pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pretrain_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
