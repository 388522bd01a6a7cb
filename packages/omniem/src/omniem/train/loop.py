"""`train`: the OmniEM training loop (autocast, checkpoints, exact resume, validation).

A run folder holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``curves.png``, ``last.pt``
(model, optimizer, step, RNG: ``resume=True`` continues from it) and ``model.safetensors`` (the
best validated weights, or the last ones without validation) with its card in the metadata.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdino.precision import autocast, resolve_precision
from emdino.ssl.curves import append_jsonl, plot_curves, read_jsonl
from omniem.infer import predict_image
from omniem.modelfile import load_model, save_model
from omniem.nets import OmniEM, build
from omniem.train.config import RunConfig, save_config
from omniem.train.data import SplitArrays, load_split, loader, training_sampler
from omniem.train.ema import WeightAverage
from omniem.train.losses import build_loss

Progress = Callable[[dict[str, Any]], None]
CURVE_KEYS = ("loss", "val_score", "lr", "images_per_s")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, cfg: RunConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``.

    With a time budget the decay follows whichever of steps and wall clock is further along, so
    a budgeted run still ends at the low learning rate.

    Examples:
        >>> from omniem.train.config import load_config
        >>> cfg = load_config(None, ["optim.total_steps=100", "optim.warmup_steps=10"])
        >>> round(lr_factor(4, cfg), 3), round(lr_factor(55, cfg), 3), round(lr_factor(100, cfg), 3)
        (0.5, 0.505, 0.01)
    """
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    t = (step - o.warmup_steps) / max(1, o.total_steps - o.warmup_steps)
    budget = cfg.train.time_budget_s
    if budget:
        t = max(t, elapsed_s / budget)
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def build_network(cfg: RunConfig, device: torch.device) -> OmniEM:
    """The network of ``cfg.net``, initialized from ``cfg.init_from`` when given."""
    img = int(cfg.data.crop)
    if cfg.init_from:
        from omniem.registry import resolve_model_path

        net = load_model(resolve_model_path(cfg.init_from), device=str(device), img_size=img)
        if net.config.model_dump() != cfg.net.model_dump():
            net.config = cfg.net
        net.set_backbone_mode(cfg.net.backbone_mode)
        return net
    return build(cfg.net, img_size=img, device=str(device))


def _param_groups(net: OmniEM, cfg: RunConfig) -> list[dict[str, Any]]:
    bb = [p for p in net.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in net.backbone.parameters()}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "lr_mult": 1.0}]
    if bb:
        groups.append({"params": bb, "lr_mult": cfg.optim.backbone_lr_mult})
    return groups


def validate(net: OmniEM, arrays: SplitArrays, cfg: RunConfig) -> dict[str, float]:
    """Score on the validation arrays: foreground/mean IoU for labels, PSNR for restoration."""
    from omniem import metrics

    n = len(arrays.images)
    take = n if cfg.train.val_max_images is None else min(n, cfg.train.val_max_images)
    idx = np.linspace(0, n - 1, take).round().astype(int)
    dtype = cfg.train.precision
    t = cfg.train
    if cfg.net.task == "restoration":
        from omniem import degrade

        rng = np.random.default_rng(1234)
        psnrs = []
        for i in idx:
            clean = arrays.images[i].astype(np.float32) / 255.0
            if cfg.data.target == "downsample":
                inp = degrade.downsample2x(clean)
                clean = clean[: inp.shape[0] * 2, : inp.shape[1] * 2]
            else:
                inp = degrade.poisson_gaussian(
                    clean, **degrade.NOISE_LEVELS[cfg.data.noise_levels[-1]], rng=rng
                )
            out = predict_image(net, inp, tile=t.val_tile, overlap=t.val_overlap, dtype=dtype)
            psnrs.append(metrics.psnr(out[0].cpu().numpy(), clean, data_range=1.0))
        return {"val_score": float(np.mean(psnrs)), "val_psnr": float(np.mean(psnrs))}
    counts = metrics.SegmentationCounts(cfg.net.out_channels)
    for i in idx:
        prob = predict_image(
            net, arrays.images[i], tile=t.val_tile, overlap=t.val_overlap, dtype=dtype
        )
        if cfg.net.task == "semantic":
            pred = prob.argmax(0).cpu().numpy()
            target = arrays.labels[i]
        else:
            pred = (prob[0] > 0.5).cpu().numpy().astype(np.int64)
            target = (arrays.labels[i] > 0).astype(np.int64)
        counts.update(pred, target)
    iou = counts.iou()
    if cfg.net.out_channels == 2 or cfg.net.task == "instances":
        score = float(iou[1])
        return {"val_score": score, "val_iou": score, "val_dice": float(counts.dice()[1])}
    miou = float(np.nanmean(iou))
    return {
        "val_score": miou,
        "val_miou": miou,
        **{f"val_iou_{c}": float(v) for c, v in enumerate(iou)},
    }


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train(
    cfg: RunConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Train ``cfg`` into the run folder ``out``; returns the path of ``model.safetensors``.

    Raises:
        FileExistsError: ``out`` holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without ``out/last.pt``.
    """
    out = Path(out)
    last = out / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume")
    if not resume and (out / "metrics.jsonl").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.train.device)
    # The saved config says what the run computed in, not "auto".
    precision = resolve_precision(cfg.train.precision, device)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})
    save_config(cfg, out / "config.yaml")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    net = build_network(cfg, device)
    net.train()
    opt = torch.optim.AdamW(
        _param_groups(net, cfg), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    loss_fn = build_loss(cfg.loss, cfg.net.task, cfg.net.out_channels)
    with_labels = cfg.net.task != "restoration"
    train_arrays = load_split(
        cfg.data,
        cfg.data.train_split,
        cfg.data.train_slices,
        with_labels=with_labels,
        bin_shifts=cfg.data.bin_shifts,
    )
    val_arrays = (
        load_split(cfg.data, cfg.data.val_split, cfg.data.val_slices, with_labels=with_labels)
        if cfg.data.val_split
        else None
    )
    ema = WeightAverage(net, cfg.optim.ema_decay) if cfg.optim.ema_decay is not None else None
    step, best, bad_vals, wall0 = 0, -math.inf, 0, 0.0
    if resume:
        ck = torch.load(last, map_location=device, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ema is not None:
            if "ema" not in ck:
                raise ValueError(f"{last}: optim.ema_decay is set but the run was started without")
            ema.load_state_dict(ck["ema"])
        step, best, bad_vals, wall0 = ck["step"], ck["best"], ck["bad_vals"], ck["wall_s"]
        _set_rng_state(ck["rng"])
    sampler = training_sampler(
        train_arrays,
        cfg.data,
        cfg.augment,
        task=cfg.net.task,
        output_scale=cfg.net.output_scale,
        seed=cfg.seed + step,
    )
    batches = iter(loader(sampler, cfg.optim.batch_size, cfg.data.workers))
    card = {
        **cfg.card.model_dump(mode="json"),
        "task": cfg.net.task,
        "backbone": cfg.net.backbone,
        # The tiling it was validated with is the one to run it with (omniem.infer.model_tiling).
        "tile": cfg.train.val_tile,
        "overlap": cfg.train.val_overlap,
    }
    t_start = time.perf_counter()
    window: list[float] = []
    t_window = time.perf_counter()
    stop_reason = "total_steps"

    def checkpoint() -> None:
        tmp = last.with_name("last.pt.partial")
        torch.save(
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "best": best,
                "bad_vals": bad_vals,
                "wall_s": wall0 + time.perf_counter() - t_start,
                "rng": _rng_state(),
                **({"ema": ema.state_dict()} if ema is not None else {}),
            },
            tmp,
        )
        os.replace(tmp, last)

    def averaged() -> contextlib.AbstractContextManager[OmniEM]:
        # The weights to validate and save: the moving average when there is one.
        return ema.applied(net) if ema is not None else contextlib.nullcontext(net)

    def run_validation() -> bool:
        nonlocal best, bad_vals
        if val_arrays is None:
            return False
        with averaged():
            scores = validate(net, val_arrays, cfg)
        rec = {"step": step, **scores, "wall_s": wall0 + time.perf_counter() - t_start}
        append_jsonl(out / "metrics.jsonl", rec)
        if progress:
            progress(rec)
        if scores["val_score"] > best:
            best, bad_vals = scores["val_score"], 0
            with averaged():
                save_model(net, out / "model.safetensors", card={**card, "step": step, **scores})
        else:
            bad_vals += 1
        return cfg.train.patience is not None and bad_vals >= cfg.train.patience

    stop_at = cfg.optim.total_steps
    if cfg.train.stop_after_steps is not None:
        stop_at = min(stop_at, cfg.train.stop_after_steps)
    while step < stop_at:
        batch = {k: v.to(device) for k, v in next(batches).items()}
        f = lr_factor(step, cfg, wall0 + time.perf_counter() - t_start)
        for g in opt.param_groups:
            g["lr"] = cfg.optim.lr * f * g["lr_mult"]
        with autocast(precision, device):
            y = net(batch["image"])
        loss = loss_fn(y, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower optim.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(
                [p for g in opt.param_groups for p in g["params"]], cfg.optim.clip_grad
            )
        opt.step()
        if ema is not None:
            ema.update(net)
        step += 1
        window.append(float(loss.detach()))
        if step % cfg.train.log_every == 0 or step == stop_at:
            dt = time.perf_counter() - t_window
            rec = {
                "step": step,
                "loss": float(np.mean(window)),
                "lr": cfg.optim.lr * f,
                "images_per_s": len(window) * cfg.optim.batch_size / max(dt, 1e-9),
                "wall_s": wall0 + time.perf_counter() - t_start,
            }
            append_jsonl(out / "metrics.jsonl", rec)
            if progress:
                progress(rec)
            window, t_window = [], time.perf_counter()
        over_budget = (
            cfg.train.time_budget_s is not None
            and wall0 + time.perf_counter() - t_start >= cfg.train.time_budget_s
        )
        validate_now = (
            step % cfg.train.val_every == 0 and step < cfg.optim.total_steps and not over_budget
        )
        if validate_now and run_validation():
            stop_reason = "early_stopping"
            break
        if step % cfg.train.checkpoint_every == 0:
            checkpoint()
        if over_budget:
            stop_reason = "time_budget"
            break
    checkpoint()
    finished = step >= cfg.optim.total_steps or stop_reason != "total_steps"
    if finished and stop_reason != "early_stopping":
        run_validation()
    if val_arrays is None or not (out / "model.safetensors").exists():
        with averaged():
            save_model(net, out / "model.safetensors", card={**card, "step": step})
    append_jsonl(
        out / "metrics.jsonl",
        {
            "step": step,
            "event": "stop",
            "reason": stop_reason if finished else "stop_after_steps",
            "wall_s": wall0 + time.perf_counter() - t_start,
        },
    )
    # A missing plotting backend must not lose a finished run.
    with contextlib.suppress(Exception):
        plot_curves(read_jsonl(out / "metrics.jsonl"), out / "curves.png", keys=CURVE_KEYS)
    return out / "model.safetensors"
