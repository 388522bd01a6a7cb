"""The model registry: architectures by name (code) and pretrained configurations (data).

Names follow timm's ``arch.tag`` convention. An *architecture* (``vit_small_patch14``) is a builder
registered by its family module (`emdino.models.vit`); a *pretrained configuration*
(``vit_small_patch14.dinov2``) says which weights fit it: file or URL, sha256, size, the image size
its position embedding was made for, normalization, licence and training data. Pretrained
configurations live in ``pretrained.yaml`` beside this module, so adding weights is a data change.

Every architecture also has a ``.random`` configuration (seeded random initialisation, no file),
so pipelines and tests run offline before any weights exist.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from emdino.errors import UnknownModelError

#: Normalization of EM-DINO v1 (on [0, 1] intensities, the grey value replicated to 3 channels).
EMDINO_MEAN = 0.595446
EMDINO_STD = 0.211906


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture.

    Args:
        name: registry name, e.g. ``vit_small_patch14``.
        family: module that builds it (``vit``).
        builder: ``builder(img_size=..., in_chans=..., **params) -> nn.Module``.
        params: architecture hyper-parameters passed to the builder.
        default_img_size: pos-embed grid size (pixels) used by the ``.random`` configuration.
    """

    name: str
    family: str
    builder: Callable[..., Any]
    params: Mapping[str, Any]
    default_img_size: int

    @property
    def patch_size(self) -> int:
        return int(self.params["patch_size"])

    @property
    def embed_dim(self) -> int:
        return int(self.params["embed_dim"])

    @property
    def depth(self) -> int:
        return int(self.params["depth"])


@dataclass(frozen=True)
class PretrainedCfg:
    """One pretrained configuration (a row of ``pretrained.yaml``).

    Args:
        arch: architecture name.
        tag: weights tag (``dinov2``, ``emdino_v1``, ``random``, ...).
        img_size: side (pixels) of the image grid the checkpoint's position embedding was made for.
        in_chans: input channels of the checkpoint (3 for RGB-trained weights; emdino builds a
            1-channel model and folds them, see `emdino.weights.convert.fold_input_channels`).
        mean: normalization mean per checkpoint channel, on [0, 1] intensities.
        std: normalization std per checkpoint channel.
        url: download URL, or None when the file must be placed by hand.
        filename: file name in the cache.
        sha256: expected sha256 of the file, or None when not known (then not checked).
        size: expected size in bytes, or None when not known.
        source: where the file comes from, in words (shown when it is missing).
        license: licence of the weights.
        training_data: what the weights were trained on.
        pos_interp_offset: DINOv2's position-embedding interpolation offset (0.1 for DINOv2 and
            EM-DINO v1; 0 means "interpolate to an explicit size", as timm does).
        pos_interp_antialias: antialias when resampling the position embedding.
        description: one line for ``emdino list``.
        notes: anything a user should know (unknown hash, where the default is going, ...).
        default_tile: tile side (pixels) for tiled feature extraction when none is given; None
            means ``img_size`` (a model pretrained on small crops may still prefer larger tiles).
        bundled: the file ships inside the package (``emdino/models/weights/<filename>``), so it
            works offline with nothing to download.
    """

    arch: str
    tag: str
    img_size: int
    in_chans: int = 1
    mean: tuple[float, ...] = (EMDINO_MEAN,)
    std: tuple[float, ...] = (EMDINO_STD,)
    url: str | None = None
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None
    source: str = ""
    license: str = "unknown"
    training_data: str = "unknown"
    pos_interp_offset: float = 0.0
    pos_interp_antialias: bool = True
    description: str = ""
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())
    bundled: bool = False
    default_tile: int | None = None

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def random_init(self) -> bool:
        """True for configurations without weights (seeded random initialisation)."""
        return self.filename is None and self.url is None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["name"] = self.name
        return d


_ARCHS: dict[str, ArchSpec] = {}
_EXTRA_PRETRAINED: dict[str, PretrainedCfg] = {}


def register_arch(
    name: str,
    builder: Callable[..., Any],
    *,
    family: str,
    default_img_size: int,
    **params: Any,
) -> ArchSpec:
    """Register an architecture under ``name`` (done by the family modules at import).

    Args:
        name: unique registry name.
        builder: callable building the model from ``img_size``, ``in_chans`` and ``params``.
        family: family module name.
        default_img_size: position-embedding grid size (pixels) of the ``.random`` configuration.
        params: hyper-parameters (must include ``patch_size``, ``embed_dim`` and ``depth``).

    Raises:
        ValueError: the name is taken or a required parameter is missing.

    Examples:
        >>> from emdino.models.vit import build_vit
        >>> spec = register_arch("vit_demo_patch8", build_vit, family="vit", default_img_size=64,
        ...                      patch_size=8, embed_dim=32, depth=2, num_heads=2)
        >>> get_arch("vit_demo_patch8").embed_dim
        32
        >>> unregister_arch("vit_demo_patch8")
    """
    if name in _ARCHS:
        raise ValueError(f"architecture {name!r} is already registered")
    if "." in name:
        raise ValueError(f"architecture names contain no '.', got {name!r}")
    missing = {"patch_size", "embed_dim", "depth"} - set(params)
    if missing:
        raise ValueError(f"architecture {name!r} lacks parameters {sorted(missing)}")
    spec = ArchSpec(name, family, builder, dict(params), int(default_img_size))
    _ARCHS[name] = spec
    return spec


def unregister_arch(name: str) -> None:
    """Remove an architecture (no error when absent); for tests and plug-ins."""
    _ARCHS.pop(name, None)


def _ensure_families() -> None:
    # Family modules register their architectures when imported.
    from emdino.models import vit  # noqa: F401


def get_arch(name: str) -> ArchSpec:
    """The `ArchSpec` registered as ``name``.

    Raises:
        UnknownModelError: unknown name (the message lists close matches).
    """
    _ensure_families()
    if name not in _ARCHS:
        raise UnknownModelError(f"unknown architecture {name!r}{_suggest(name, list(_ARCHS))}")
    return _ARCHS[name]


def list_archs(pattern: str | None = None) -> list[str]:
    """Registered architecture names, sorted, optionally filtered by an fnmatch ``pattern``."""
    _ensure_families()
    names = sorted(_ARCHS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


@cache
def _table() -> dict[str, Any]:
    import yaml

    text = resources.files("emdino.models").joinpath("pretrained.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "models" not in data:
        raise RuntimeError("emdino/models/pretrained.yaml is malformed: no 'models' table")
    return data


def _cfg_from_row(name: str, row: Mapping[str, Any]) -> PretrainedCfg:
    arch, _, tag = name.partition(".")
    if not tag:
        raise RuntimeError(f"pretrained.yaml: entry {name!r} is not of the form arch.tag")
    row = dict(row)
    for key in ("mean", "std", "aliases"):
        if key in row:
            row[key] = tuple(row[key])
    return PretrainedCfg(arch=arch, tag=tag, **row)


def _random_cfg(arch: ArchSpec) -> PretrainedCfg:
    return PretrainedCfg(
        arch=arch.name,
        tag="random",
        img_size=arch.default_img_size,
        description=f"{arch.name} with seeded random weights (no file; for pipelines and tests)",
        training_data="none",
        license="n/a",
        notes="Features of random weights are not meaningful; normalization is EM-DINO's.",
    )


def _pretrained() -> dict[str, PretrainedCfg]:
    _ensure_families()
    out = {name: _cfg_from_row(name, row) for name, row in _table()["models"].items()}
    out.update(_EXTRA_PRETRAINED)
    for arch in _ARCHS.values():
        out.setdefault(f"{arch.name}.random", _random_cfg(arch))
    return out


def register_pretrained(cfg: PretrainedCfg, *, overwrite: bool = False) -> None:
    """Add a pretrained configuration at run time (a lab's own weights).

    Raises:
        ValueError: the name exists and ``overwrite`` is False, or the architecture is unknown.
    """
    get_arch(cfg.arch)
    if cfg.name in _pretrained() and not overwrite:
        raise ValueError(f"pretrained configuration {cfg.name!r} exists; pass overwrite=True")
    _EXTRA_PRETRAINED[cfg.name] = cfg


def unregister_pretrained(name: str) -> None:
    """Remove a configuration added with `register_pretrained` (no error when absent)."""
    _EXTRA_PRETRAINED.pop(name, None)


def default_model() -> str:
    """Name of the model used when none is given (see ``default`` in ``pretrained.yaml``)."""
    return str(_table()["default"])


def _aliases(cfgs: Mapping[str, PretrainedCfg]) -> dict[str, str]:
    out = {}
    for cfg in cfgs.values():
        for alias in cfg.aliases:
            out[alias] = cfg.name
    return out


def resolve_name(name: str) -> str:
    """The full ``arch.tag`` name for ``name``.

    Accepts a full name, an alias (``dinov2_vits14``), ``"default"``, or a bare architecture
    (its first pretrained tag in the table, else ``.random``).

    Raises:
        UnknownModelError: nothing matches (the message lists close matches).

    Examples:
        >>> resolve_name("dinov2_vits14")
        'vit_small_patch14.dinov2'
        >>> resolve_name("vit_tiny_patch16")
        'vit_tiny_patch16.random'
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    cfgs = _pretrained()
    if name == "default":
        name = default_model()
    if name in cfgs:
        return name
    aliases = _aliases(cfgs)
    if name in aliases:
        return aliases[name]
    if name in list_archs():
        tagged = [n for n in cfgs if n.partition(".")[0] == name and not n.endswith(".random")]
        return tagged[0] if tagged else f"{name}.random"
    raise UnknownModelError(
        f"unknown model {name!r}{_suggest(name, list(cfgs) + list(aliases))}; "
        "`emdino list` shows all names"
    )


def get_pretrained(name: str) -> PretrainedCfg:
    """The `PretrainedCfg` for a name (see `resolve_name` for what names are accepted)."""
    return _pretrained()[resolve_name(name)]


def list_models(pattern: str | None = None, *, include_random: bool = True) -> list[str]:
    """Names of the pretrained configurations, sorted.

    Args:
        pattern: fnmatch pattern, e.g. ``"*dinov2*"``.
        include_random: include the ``.random`` configuration of every architecture.

    Examples:
        >>> "vit_large_patch14.emdino_v1" in list_models()
        True
        >>> list_models("vit_giant*", include_random=False)
        ['vit_giant_patch14.dinov2', 'vit_giant_patch14_reg4.dinov2']
    """
    names = sorted(_pretrained())
    if not include_random:
        names = [n for n in names if not n.endswith(".random")]
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def _suggest(name: str, candidates: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
