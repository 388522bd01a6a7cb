"""Pretraining configuration: pydantic models, YAML files, overrides and ``--set key=value``.

A run's configuration is ``configs/default.yaml`` (the one complete file), deep-merged with zero or
more short override files, then with ``--set`` assignments (dotted keys, YAML-parsed values). The
resolved configuration is validated by `PretrainConfig` (unknown keys are errors) and saved with
the run as ``config.yaml``.

Schedules are counted in optimizer steps, not epochs: EM corpora have no natural epoch length.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Folder of the bundled configuration files.
CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The ViT backbone (a timm ``VisionTransformer``, single channel by default)."""

    patch_size: int = Field(14, ge=1)
    embed_dim: int = Field(384, ge=8)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    in_chans: int = Field(1, ge=1)
    qkv_bias: bool = True
    #: LayerScale init value (DINOv2: 1e-5); None disables LayerScale.
    layerscale: float | None = 1e-5
    #: Stochastic depth of the student (the teacher never drops paths).
    drop_path_rate: float = Field(0.1, ge=0, lt=1)
    grad_checkpointing: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        return self


class HeadConfig(_Strict):
    """DINO projection head (MLP + weight-normed prototypes); iBOT shares it unless separate."""

    n_prototypes: int = Field(65536, ge=2)
    bottleneck_dim: int = Field(256, ge=2)
    hidden_dim: int = Field(2048, ge=2)
    nlayers: int = Field(3, ge=1)
    ibot_separate_head: bool = False
    ibot_n_prototypes: int = Field(65536, ge=2)


class LossConfig(_Strict):
    """Loss weights, temperatures and teacher centering."""

    dino_weight: float = Field(1.0, ge=0)
    ibot_weight: float = Field(1.0, ge=0)
    koleo_weight: float = Field(0.1, ge=0)
    #: KoLeo over the global batch (all ranks) instead of each rank's batch (DINOv2: local).
    koleo_distributed: bool = False
    student_temp: float = Field(0.1, gt=0)
    centering: Literal["sinkhorn_knopp", "mean"] = "sinkhorn_knopp"
    sinkhorn_iterations: int = Field(3, ge=1)
    #: EMA momentum of the mean center (``centering: mean`` only).
    center_momentum: float = Field(0.9, ge=0, lt=1)


class TeacherConfig(_Strict):
    """EMA teacher: cosine momentum schedule and temperature warm-up."""

    momentum: float = Field(0.992, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)
    temp: float = Field(0.07, gt=0)
    warmup_temp: float = Field(0.04, gt=0)
    warmup_temp_steps: int = Field(0, ge=0)


class OptimConfig(_Strict):
    """AdamW with cosine lr / weight-decay schedules, layer-wise lr decay and clipping."""

    total_steps: int = Field(ge=1)
    #: Images per optimizer step summed over all ranks.
    batch_size: int = Field(ge=1)
    #: Learning rate before scaling by the batch size (see ``lr_scaling``).
    base_lr: float = Field(0.004, gt=0)
    lr_scaling: Literal["sqrt_wrt_1024", "linear_wrt_256", "none"] = "sqrt_wrt_1024"
    min_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    #: Max gradient norm, applied per module (backbone, heads) as in DINOv2; None = no clipping.
    clip_grad: float | None = 3.0
    layerwise_decay: float = Field(0.9, gt=0, le=1)
    patch_embed_lr_mult: float = Field(0.2, ge=0)
    #: Steps during which the prototypes (last layer of the heads) get lr 0.
    freeze_last_layer_steps: int = Field(0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

    @property
    def lr(self) -> float:
        """Peak learning rate after batch-size scaling."""
        if self.lr_scaling == "sqrt_wrt_1024":
            return self.base_lr * math.sqrt(self.batch_size / 1024)
        if self.lr_scaling == "linear_wrt_256":
            return self.base_lr * self.batch_size / 256
        return self.base_lr

    @model_validator(mode="after")
    def _fits(self) -> OptimConfig:
        if self.warmup_steps >= self.total_steps:
            raise ValueError("optim.warmup_steps must be smaller than optim.total_steps")
        return self


class CropsConfig(_Strict):
    """Multi-crop: 2 global views (teacher + student) and N local views (student only)."""

    n_global: Literal[2] = 2
    global_size: int = Field(224, ge=8)
    global_scale: tuple[float, float] = (0.32, 1.0)
    n_local: int = Field(8, ge=0)
    local_size: int = Field(98, ge=8)
    local_scale: tuple[float, float] = (0.05, 0.32)
    #: Aspect-ratio range of the random resized crops.
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


class AugmentConfig(_Strict):
    """Grey-level EM augmentations (no colour jitter). Probabilities are per view."""

    flip: bool = True
    rot90: bool = True
    #: Probability of the brightness/contrast jitter; factors drawn from 1 +- the values.
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0, lt=1)
    contrast: float = Field(0.4, ge=0, lt=1)
    gamma_p: float = Field(0.5, ge=0, le=1)
    gamma: tuple[float, float] = (0.7, 1.5)
    #: Gaussian blur probability of global view 1, global view 2 and each local view (DINO).
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_p: float = Field(0.3, ge=0, le=1)
    #: Std of additive Gaussian noise on the [0, 1] image, drawn uniformly from this range.
    noise_std: tuple[float, float] = (0.0, 0.05)
    #: Solarization probability of global view 2 (view 1 is never solarized, as in DINO).
    solarize_p: float = Field(0.2, ge=0, le=1)


class MaskConfig(_Strict):
    """iBOT block masking of the student's global views."""

    sample_probability: float = Field(0.5, ge=0, le=1)
    ratio: tuple[float, float] = (0.1, 0.5)
    min_patches: int = Field(4, ge=1)


class SourceConfig(_Strict):
    """One image source.

    kinds:
        ``dataset``: an em5m reference dataset split (``name``, ``split``; ``slices`` optional).
        ``volume``: anything `em5m.open_volume` reads (``uri``); its 2D slices along z.
        ``images``: a glob of 2D image files (``uri``), each opened with `em5m.open_volume`.
        ``corpus``: an em5m corpus folder (``uri``): ``shard-NNNNNN.tar`` with ``<key>.png`` and
        ``<key>.json`` members, plus an optional parquet manifest.
    """

    kind: Literal["dataset", "volume", "images", "corpus"]
    name: str | None = None
    split: str | None = None
    uri: str | None = None
    #: Python-style slice of z indices, e.g. ``"0:132"`` (dataset/volume sources).
    slices: str | None = None
    #: Multiplies how often this source's images are drawn.
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> SourceConfig:
        if self.kind == "dataset" and not self.name:
            raise ValueError("a dataset source needs name (and usually split)")
        if self.kind != "dataset" and not self.uri:
            raise ValueError(f"a {self.kind} source needs uri")
        return self


class DataConfig(_Strict):
    """Image sources, tiling and normalization."""

    sources: list[SourceConfig] = Field(default_factory=list)
    #: Side of the random tile cut from a large image before the multi-crop (px).
    tile_size: int = Field(448, ge=8)
    #: Normalization of the [0, 1] grey image (EM-DINO convention).
    mean: float = 0.595446
    std: float = Field(0.211906, gt=0)
    #: Percentile window mapping non-uint8 images to [0, 1].
    percentiles: tuple[float, float] = (0.5, 99.5)
    workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(2, ge=1)


class TrainConfig(_Strict):
    """Precision, device, logging and checkpointing."""

    #: Autocast dtype of the forward passes (weights, optimizer and losses stay float32); auto:
    #: bf16 where the device computes it natively, else fp32 (`emdino.precision`). A run saves
    #: the resolved value.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: torch intra-op threads per process; None leaves torch's default.
    num_threads: int | None = None
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    #: Numbered checkpoints kept besides ``last.pt`` (0: only ``last.pt``).
    keep_checkpoints: int = Field(2, ge=0)
    #: Stop this invocation after that many steps (the schedule still spans total_steps); a
    #: later ``--resume`` continues. None: run to total_steps.
    stop_after_steps: int | None = Field(None, ge=1)
    #: Start both backbones from these weights (a pretraining checkpoint ``.pt``, whose teacher
    #: backbone is taken, or an exported ``.safetensors``); heads start fresh. Continues
    #: pretraining of an existing model under a new recipe. Ignored when resuming.
    init_backbone: str | None = None


class DistConfig(_Strict):
    """Multi-process training (launched with torchrun; single process otherwise)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    #: ``auto``: NCCL on CUDA, gloo on CPU.
    backend: Literal["auto", "gloo", "nccl"] = "auto"


class PretrainConfig(_Strict):
    """The full pretraining configuration (see ``configs/default.yaml`` for every field)."""

    name: str = "emdino"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    teacher: TeacherConfig = TeacherConfig()
    optim: OptimConfig
    crops: CropsConfig = CropsConfig()
    augment: AugmentConfig = AugmentConfig()
    mask: MaskConfig = MaskConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    dist: DistConfig = DistConfig()

    @model_validator(mode="after")
    def _crops_fit_patches(self) -> PretrainConfig:
        p = self.model.patch_size
        for what, size in (("global", self.crops.global_size), ("local", self.crops.local_size)):
            if size % p:
                raise ValueError(f"crops.{what}_size {size} is not a multiple of patch {p}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-friendly dict (tuples become lists)."""
        return _plain(self.model_dump(mode="json"))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; nested mappings merge, anything else replaces.

    Examples:
        >>> deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
        {'a': {'b': 1, 'c': 3}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_set(config: Mapping[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``key.sub=value`` assignment; the value is parsed as YAML.

    Args:
        config: the raw (unvalidated) configuration dict.
        assignment: ``dotted.key=value``, e.g. ``optim.base_lr=0.001`` or ``crops.ratio=[1,1]``.

    Raises:
        ValueError: no ``=``, an empty key, or a key path through a non-mapping.

    Examples:
        >>> apply_set({"optim": {"base_lr": 0.004}}, "optim.base_lr=1e-3")
        {'optim': {'base_lr': 0.001}}
    """
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set has an empty key part: {assignment!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and _looks_float(value):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string; a number is meant
    out = copy.deepcopy(dict(config))
    node = out
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return out


def _looks_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (floats like ``1e-3`` are read as numbers).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a YAML mapping.
    """
    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a configuration file must hold a mapping")
    return _numbers(data)


def _numbers(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and _looks_float(obj) and any(c in obj for c in "eE"):
        return float(obj)
    return obj


def resolve_config_path(config: str | Path) -> Path:
    """A configuration path, or the name of a bundled one (``vitt8_cpu`` -> configs/...yaml).

    Raises:
        FileNotFoundError: neither a file nor a bundled name; the message lists the bundled ones.
    """
    path = Path(config)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{config}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config file {config!r}; bundled configs: {names}")


def load_config(
    config: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
) -> PretrainConfig:
    """Resolve default.yaml + override file(s) + ``--set`` assignments into a validated config.

    Args:
        config: an override file (path or bundled name), a list of them applied in order, or None
            for the defaults alone.
        overrides: ``key=value`` assignments applied last.

    Raises:
        FileNotFoundError: a configuration file does not exist.
        ValueError: bad assignment, or the result does not validate (pydantic's ValidationError
            is a ValueError and names the offending keys).

    Examples:
        >>> cfg = load_config("vitt8_cpu", ["optim.total_steps=200"])
        >>> cfg.optim.total_steps, cfg.model.patch_size
        (200, 8)
    """
    raw = layered_config(DEFAULT_CONFIG, config, overrides, resolve_config_path)
    return PretrainConfig.model_validate(raw)


def layered_config(
    default: Path,
    config: str | Path | Sequence[str | Path] | None,
    overrides: Sequence[str],
    resolve: Callable[[str | Path], Path],
) -> dict[str, Any]:
    """The raw mapping of ``default`` + override file(s) (``resolve``d) + ``key=value`` overrides.

    Shared by every package whose configurations are one full default YAML plus short overrides.
    """
    raw = read_yaml(default)
    if config is None:
        files: list[str | Path] = []
    elif isinstance(config, str | Path):
        files = [config]
    else:
        files = list(config)
    for f in files:
        path = resolve(f)
        if path.resolve() != default.resolve():
            raw = deep_merge(raw, read_yaml(path))
    for assignment in overrides:
        raw = apply_set(raw, assignment)
    return raw


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
