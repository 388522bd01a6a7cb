"""Training configuration: ``default.yaml`` + override files + ``--set key=value``, validated.

The resolved configuration is saved as ``config.yaml`` in the run folder. Override files are
partial YAML mappings (the bundled task recipes in ``omniem/train/configs/`` are examples).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from emdino.ssl.config import layered_config
from omniem.nets.config import NetConfig

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where the images and targets come from.

    ``target`` picks how a target is made from an em5m reference dataset:
    ``label`` (``labels[label_key]``, optionally remapped by ``label_map``; a bool label becomes
    0/1), ``noise`` (the clean image is the target, the input gets Poisson-Gaussian noise),
    ``blind_spot`` (self-supervised denoising of the image itself) or ``downsample`` (the input is
    the 2x area down-sampled image; the target the original).
    """

    dataset: str = "lucchi_pp"
    train_split: str = "train"
    #: Slices of the train split used for training (Python slice text "a:b:c", or "all").
    train_slices: str = "all"
    val_split: str | None = "val"
    val_slices: str = "all"
    target: Literal["label", "noise", "blind_spot", "downsample"] = "label"
    label_key: str = "mitochondria"
    label_map: dict[int, int] | None = None
    #: Denoising (target ``noise``) only: real noisy datasets without clean targets, as
    #: (name, split) pairs, trained self-supervised (blind spot) in the same batches.
    self_supervised: list[tuple[str, str]] = Field(default_factory=list)
    #: Expected fraction of the samples of a batch drawn from ``self_supervised``.
    self_supervised_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    crop: int = Field(256, ge=16)
    #: Restoration only: area-bin every image by this factor when loaded (2: Lucchi++'s 5 nm
    #: slices become 10 nm ones with half the noise, so targets are cleaner than the gain asked).
    bin: int = Field(1, ge=1, le=8)
    #: Training split only, with ``bin > 1``: bin every image at this many grid offsets per axis
    #: (offsets ``k * bin // bin_shifts``), ``bin_shifts ** 2`` binned copies: distinct
    #: (input, target) pairs from the same slices, against over-fitting small sets.
    bin_shifts: int = Field(1, ge=1, le=8)
    #: Fraction of crops centred on foreground (segmentation); the rest are uniform.
    pos_fraction: float = Field(0.5, ge=0.0, le=1.0)
    noise_levels: list[str] = Field(default_factory=lambda: ["low", "high"])
    blind_spot_fraction: float = Field(0.02, gt=0.0, lt=0.5)
    workers: int = Field(0, ge=0)


class AugmentConfig(_Strict):
    flip: bool = True
    rot90: bool = True
    gamma_p: float = Field(0.5, ge=0, le=1)
    gamma: tuple[float, float] = (0.7, 1.5)
    intensity_p: float = Field(0.5, ge=0, le=1)
    contrast: float = 0.2
    brightness: float = 0.1
    elastic_p: float = Field(0.0, ge=0, le=1)


class LossConfig(_Strict):
    #: dice_ce (semantic), dice_bce (instances), focal; l1, l1_ssim, l2 (restoration; l2 is
    #: what PSNR measures).
    kind: Literal["dice_ce", "dice_bce", "focal", "l1", "l1_ssim", "l2"] = "dice_ce"
    ssim_weight: float = 0.2
    #: Optional EM-DINO feature loss weight for restoration (cosine distance of patch features).
    feature_weight: float = 0.0
    class_weights: list[float] | None = None


class OptimConfig(_Strict):
    total_steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    #: Backbone learning rate = lr * backbone_lr_mult (fine-tuning a pretrained encoder gently).
    backbone_lr_mult: float = Field(0.1, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    clip_grad: float | None = 1.0
    #: Validate and save an exponential moving average of the weights with this decay per step
    #: (None: the weights as they are).
    ema_decay: float | None = Field(None, ge=0, lt=1)


class TrainConfig(_Strict):
    #: auto: bf16 autocast where the device computes bf16 natively, else fp32
    #: (`emdino.precision`); the run's saved config records which.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = "auto"
    num_threads: int | None = None
    log_every: int = Field(10, ge=1)
    val_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    #: Stop after this many validations without improvement (None: never).
    patience: int | None = None
    #: Stop after this many seconds of training (wall clock), then validate and save.
    time_budget_s: float | None = None
    #: Stop after this step in this invocation (the run stays resumable).
    stop_after_steps: int | None = None
    #: Sliding-window tiling of validation; saved in the model's card as the tiling to run the
    #: model with (``omniem.infer.model_tiling``: evaluate, predict and the engine default to it).
    val_tile: int = Field(256, ge=8)
    val_overlap: float = Field(0.25, ge=0, lt=1)
    #: Validate on at most this many slices (None: all of the validation split).
    val_max_images: int | None = None


class ModelCardConfig(_Strict):
    name: str = "omniem-model"
    description: str = ""
    license: str = "see training data"
    training_data: str = ""
    classes: list[str] | None = None
    voxel_size_nm: list[float] | None = None


class RunConfig(_Strict):
    """The full training configuration (see ``configs/default.yaml``)."""

    seed: int = 0
    net: NetConfig = Field(default_factory=NetConfig)
    #: Initialize from a trained OmniEM model (name or file), e.g. to fine-tune a bundled one.
    init_from: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    card: ModelCardConfig = Field(default_factory=ModelCardConfig)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        task = self.net.task
        restoration_losses = {"l1", "l1_ssim", "l2"}
        if task == "restoration" and self.loss.kind not in restoration_losses:
            raise ValueError(
                f"task restoration needs loss.kind l1, l1_ssim or l2, got {self.loss.kind}"
            )
        if task != "restoration" and self.loss.kind in restoration_losses:
            raise ValueError(f"loss.kind {self.loss.kind} is for restoration, task is {task}")
        if task == "restoration" and self.data.target == "label":
            raise ValueError("task restoration needs data.target noise, blind_spot or downsample")
        if task != "restoration" and self.data.target != "label":
            raise ValueError(f"data.target {self.data.target} needs task restoration")
        if self.data.self_supervised and self.data.target != "noise":
            raise ValueError(
                "data.self_supervised mixes blind-spot samples into supervised denoising; "
                f"it needs data.target noise, got {self.data.target}"
            )
        if self.data.crop % 8:
            raise ValueError(f"data.crop must be a multiple of 8, got {self.data.crop}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def resolve_config_path(config: str | Path) -> Path:
    """A file path or the name of a bundled recipe (``mito_2d`` -> configs/mito_2d.yaml)."""
    path = Path(config)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{config}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config file {config!r}; bundled recipes: {names}")


def load_config(
    config: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """Resolve default.yaml + override file(s) + ``key=value`` assignments.

    Raises:
        FileNotFoundError: a configuration file does not exist.
        ValueError: a bad assignment or a configuration that does not validate.

    Examples:
        >>> cfg = load_config("mito_2d", ["optim.total_steps=5"])
        >>> cfg.optim.total_steps, cfg.net.task, cfg.net.out_channels
        (5, 'semantic', 2)
    """
    raw = layered_config(DEFAULT_CONFIG, config, overrides, resolve_config_path)
    return RunConfig.model_validate(raw)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def parse_slices(text: str, n: int) -> list[int]:
    """Indices selected by ``"all"`` or Python slice text ``"a:b[:c]"`` out of ``n``.

    Examples:
        >>> parse_slices("all", 4), parse_slices("1:3", 4), parse_slices("::2", 5)
        ([0, 1, 2, 3], [1, 2], [0, 2, 4])
        >>> parse_slices("-2:", 5)
        [3, 4]
    """
    if text.strip() == "all":
        return list(range(n))
    parts = [int(p) if p.strip() else None for p in text.split(":")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"bad slice text {text!r}; use 'all' or 'start:stop[:step]'")
    if len(parts) == 1:
        return [list(range(n))[parts[0]]] if parts[0] is not None else list(range(n))
    return list(range(n))[slice(*parts)]
