"""The phantom API: validate arguments, render blocks (with halos), assemble lazily with dask."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from itertools import product
from typing import Any

import dask
import dask.array as da
import numpy as np

from em5m.synth.contrast import MODALITIES, Contrast, Scene
from em5m.synth.fields import mix_int
from em5m.synth.geometry import Tissue, World
from em5m.synth.noise import NoiseModel, blur_xy, psf_radius, section_kernel
from em5m.volume import Volume

#: Default voxel size (nm) per axis when none is given (Lucchi++-like FIB-SEM).
DEFAULT_VOXEL = 5.0
#: Default PSF sigmas (z, y, x) in nm per modality. TEM sections are projections: no z PSF.
DEFAULT_PSF = {"sem": (4.0, 5.0, 5.0), "tem": (0.0, 4.0, 4.0)}
FIELDS = ("image", "clean", "membranes", "mitochondria", "cells", "mito_instances")
_DTYPES = {
    "image": np.uint8,
    "clean": np.float32,
    "membranes": np.bool_,
    "mitochondria": np.bool_,
    "cells": np.int32,
    "mito_instances": np.int32,
}
# Render tiles span about this fraction of the cell spacing (few cells to test per voxel),
# within voxel-count limits (cache-sized, but not so small that Python overhead dominates).
_TILE_CELL_FRACTION = 0.4
_TILE_Z = (4, 16)
_TILE_XY = (32, 128)
_TAG_NOISE = 0x4E4F49


@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered phantom (or one block of it) and its ground truth.

    Attributes:
        image: uint8 image as acquired (after PSF, sectioning and noise).
        clean: float32 noise-free image in [0, 1] (after PSF and sectioning).
        membranes: bool, cell membranes (at least ~one voxel wide, closed).
        mitochondria: bool, mitochondria including their envelope.
        cells: int32 cell instance ids; every voxel has one (membranes belong to the nearest
            cell). ``np.where(membranes, 0, cells)`` gives boundary-separated labels.
        mito_instances: int32 mitochondrion ids, 0 outside.
        voxel_size: nm per axis, in array order. axes: ``("z", "y", "x")`` or ``("y", "x")``.
        modality, seed: how it was made. origin: index of ``image[0, ...]`` in the full phantom
            of shape ``shape``.

    Ground truth is sampled on each section's mid-plane; the images integrate the section.
    """

    image: np.ndarray
    clean: np.ndarray
    membranes: np.ndarray
    mitochondria: np.ndarray
    cells: np.ndarray
    mito_instances: np.ndarray
    voxel_size: tuple[float, ...]
    axes: tuple[str, ...]
    modality: str
    seed: int
    origin: tuple[int, ...]
    shape: tuple[int, ...]

    def to_volume(self) -> Volume:
        """The image as an :class:`em5m.Volume` (voxel size and axes attached).

        Examples:
            >>> phantom((32, 32), voxel_size=(8, 8)).to_volume().voxel_size
            (8.0, 8.0)
        """
        meta = {"synth": {"modality": self.modality, "seed": self.seed, "origin": self.origin}}
        return Volume.from_array(
            self.image, axes=self.axes, voxel_size=self.voxel_size, source="<synth>", metadata=meta
        )


@dataclass(frozen=True, eq=False)
class _Setup:
    """Validated, resolved rendering parameters (internally always 3-D: z, y, x)."""

    shape: tuple[int, ...]  # as the user gave it (2 or 3 entries)
    voxel_size: tuple[float, ...]  # as the user gave it
    modality: str
    seed: int
    world: World
    contrast: Contrast
    noise: NoiseModel | None
    vz: float
    vy: float
    vx: float
    samples: int  # fine z samples per section
    sigma: tuple[float, float, float]  # PSF sigma in fine voxels (z, y, x)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def shape3(self) -> tuple[int, int, int]:
        return (1, *self.shape) if self.ndim == 2 else self.shape  # type: ignore[return-value]

    @property
    def footprint(self) -> float:
        return 0.5 * (self.vy + self.vx)

    @property
    def membrane_gt(self) -> float:
        # Half-width of the membrane mask: the physical membrane, but never thinner than what
        # keeps it closed under 4-connectivity in a section.
        t = self.world.tissue
        return max(t.extracellular_gap / 2 + t.membrane_thickness, 0.75 * max(self.vy, self.vx))


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_zero(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == 0


def _per_axis(value: Any, ndim: int, name: str, *, allow_zero: bool = False) -> tuple[float, ...]:
    vals = (value,) * ndim if isinstance(value, numbers.Real) else tuple(value)
    if len(vals) != ndim:
        raise ValueError(f"{name} needs {ndim} values (one per axis), got {value!r}")
    if allow_zero:
        return tuple(0.0 if _is_zero(v) else _positive(v, name) for v in vals)
    return tuple(_positive(v, name) for v in vals)


def _setup(
    shape: Sequence[int],
    *,
    voxel_size: float | Sequence[float] | None = None,
    modality: str = "sem",
    seed: int = 0,
    noise: NoiseModel | None = NoiseModel(),  # noqa: B008 - immutable
    psf_sigma: float | Sequence[float] | None = None,
    section_thickness: float | None = None,
    z_samples: int | None = None,
    tissue: Tissue | None = None,
    **tissue_options: Any,
) -> _Setup:
    try:
        shp = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of 2 or 3 ints, got {shape!r}") from None
    if len(shp) not in (2, 3) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in shp
    ):
        raise ValueError(f"shape must be 2 or 3 positive ints, got {shape!r}")
    shp = tuple(int(s) for s in shp)
    ndim = len(shp)
    vs = _per_axis(DEFAULT_VOXEL if voxel_size is None else voxel_size, ndim, "voxel_size")
    if not isinstance(modality, str) or modality.lower() not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {sorted(MODALITIES)}")
    modality = modality.lower()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if noise is not None and not isinstance(noise, NoiseModel):
        raise ValueError(f"noise must be a NoiseModel or None, got {noise!r}")
    if tissue is None:
        tissue = Tissue()
    elif not isinstance(tissue, Tissue):
        raise ValueError(f"tissue must be a Tissue, got {tissue!r}")
    if tissue_options:
        known = {f.name for f in fields(Tissue)}
        unknown = sorted(set(tissue_options) - known)
        if unknown:
            raise ValueError(f"unknown phantom options {unknown}; known: {sorted(known)}")
        tissue = replace(tissue, **tissue_options)

    if ndim == 3:
        if section_thickness is not None:
            raise ValueError("section_thickness is for 2-D phantoms; a volume uses voxel_size[0]")
        vz, vy, vx = vs
    else:
        vy, vx = vs
        vz = (
            min(vy, vx)
            if section_thickness is None
            else _positive(section_thickness, "section_thickness")
        )
    if z_samples is None:
        samples = max(1, math.ceil(vz / min(vy, vx) - 1e-9))
    elif not _is_int(z_samples) or z_samples < 1:
        raise ValueError(f"z_samples must be a positive int, got {z_samples!r}")
    else:
        samples = int(z_samples)

    psf = DEFAULT_PSF[modality] if psf_sigma is None else psf_sigma
    if psf_sigma is None and ndim == 2:
        psf = psf[1:]
    psf = _per_axis(psf, ndim, "psf_sigma", allow_zero=True)
    pz, py, px = psf if ndim == 3 else (0.0, *psf)
    sigma = (pz / (vz / samples), py / vy, px / vx)

    world = World(seed=int(seed), tissue=tissue)
    extent = max(n * v for n, v in zip((1, *shp) if ndim == 2 else shp, (vz, vy, vx), strict=True))
    if extent / 1000.0 > world.max_extent_um():
        raise ValueError(
            f"phantom extent {extent / 1000:.0f} µm exceeds {world.max_extent_um():.0f} µm"
        )
    return _Setup(
        shape=shp,
        voxel_size=vs,
        modality=modality,
        seed=int(seed),
        world=world,
        contrast=MODALITIES[modality],
        noise=noise,
        vz=vz,
        vy=vy,
        vx=vx,
        samples=samples,
        sigma=sigma,
    )


def _block_slices(block: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Validate a block: one step-1 slice or ``(start, stop)`` of non-negative ints per axis."""
    bad = ValueError(f"block needs a slice or (start, stop) per axis of {shape}: {block!r}")
    try:
        items = tuple(block)
    except TypeError:
        raise bad from None
    if len(items) != len(shape):
        raise bad
    out = []
    for item, n in zip(items, shape, strict=True):
        try:
            if isinstance(item, slice):
                if item.step not in (None, 1):
                    raise bad
                start = 0 if item.start is None else operator.index(item.start)
                stop = n if item.stop is None else operator.index(item.stop)
            else:
                start, stop = (operator.index(v) for v in item)
        except (TypeError, ValueError):
            raise bad from None
        if not 0 <= start < stop <= n:
            raise ValueError(f"block {block!r} is empty or outside shape {shape}")
        out.append(slice(start, stop))
    return tuple(out)


def _tile_shape(setup: _Setup) -> tuple[int, int, int]:
    span = _TILE_CELL_FRACTION * setup.world.cells.spacing
    tz = int(np.clip(round(span * setup.samples / setup.vz), *_TILE_Z))
    ty = int(np.clip(round(span / setup.vy), *_TILE_XY))
    tx = int(np.clip(round(span / setup.vx), *_TILE_XY))
    return tz, ty, tx


def _render(setup: _Setup, block: tuple[slice, ...]) -> dict[str, np.ndarray]:
    """Render one block (3-D slices in the internal z, y, x frame)."""
    (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in block)
    nz, ny, nx = z1 - z0, y1 - y0, x1 - x0
    S = setup.samples
    hz, kernel = section_kernel(S, setup.sigma[0])
    hy, hx = psf_radius(setup.sigma[1]), psf_radius(setup.sigma[2])
    f0, f1 = z0 * S - hz, z1 * S + hz  # fine z slices that feed the block's sections
    dzf = setup.vz / S
    zf = (np.arange(f0, f1) + 0.5) * dzf
    ys = (np.arange(y0 - hy, y1 + hy) + 0.5) * setup.vy
    xs = (np.arange(x0 - hx, x1 + hx) + 0.5) * setup.vx
    scene = Scene(
        world=setup.world,
        contrast=setup.contrast,
        footprint=setup.footprint,
        membrane_gt=setup.membrane_gt,
        lo=np.array([zf[0], ys[0], xs[0]]),
        hi=np.array([zf[-1], ys[-1], xs[-1]]),
    )
    clean = np.zeros((nz, ny, nx), np.float32)
    gt = {
        "cells": np.zeros((nz, ny, nx), np.int32),
        "membranes": np.zeros((nz, ny, nx), bool),
        "mito_instances": np.zeros((nz, ny, nx), np.int32),
    }
    mid = {k * S + S // 2: k - z0 for k in range(z0, z1)}  # mid-plane fine slice -> section
    tz, ty, tx = _tile_shape(setup)
    for a in range(f0, f1, tz):
        b = min(a + tz, f1)
        slab = np.empty((b - a, len(ys), len(xs)), np.float32)
        for ya, xa in product(range(0, len(ys), ty), range(0, len(xs), tx)):
            sy, sx = slice(ya, ya + ty), slice(xa, xa + tx)
            tile = scene.render(zf[a - f0 : b - f0], ys[sy], xs[sx])
            slab[:, sy, sx] = tile.intensity
            # Ground truth of the tile's interior part on section mid-planes.
            iy = slice(max(ya, hy), min(ya + ty, hy + ny))
            ix = slice(max(xa, hx), min(xa + tx, hx + nx))
            if iy.stop <= iy.start or ix.stop <= ix.start:
                continue
            src = (slice(iy.start - ya, iy.stop - ya), slice(ix.start - xa, ix.stop - xa))
            dst = (slice(iy.start - hy, iy.stop - hy), slice(ix.start - hx, ix.stop - hx))
            for j in range(a, b):
                if j in mid:
                    gt["cells"][(mid[j], *dst)] = tile.cells[(j - a, *src)]
                    gt["membranes"][(mid[j], *dst)] = tile.membranes[(j - a, *src)]
                    gt["mito_instances"][(mid[j], *dst)] = tile.mito[(j - a, *src)]
        blurred = blur_xy(slab, setup.sigma[1], setup.sigma[2])[:, hy : hy + ny, hx : hx + nx]
        _add_to_sections(clean, blurred, a, z0, S, hz, kernel)
    np.clip(clean, 0.0, 1.0, out=clean)
    return {
        "image": _acquire(setup, clean, (z0, y0, x0)),
        "clean": clean,
        "membranes": gt["membranes"],
        "mitochondria": gt["mito_instances"] > 0,
        "cells": gt["cells"],
        "mito_instances": gt["mito_instances"],
    }


def _add_to_sections(
    sections: np.ndarray,
    fine: np.ndarray,
    first: int,
    z0: int,
    samples: int,
    halo: int,
    kernel: np.ndarray,
) -> None:
    """Add fine slices ``first, first + 1, ...`` to the thick sections they feed.

    Section ``k`` (``sections[k - z0]``) is ``sum_j kernel[j - (k * samples - halo)] * fine_j``,
    added in increasing ``j``, so any block reproduces the same floating-point sums.
    """
    z1 = z0 + sections.shape[0]
    tmp = np.empty(sections.shape[1:], np.float32)
    for j in range(first, first + fine.shape[0]):
        for k in range(
            max(z0, (j - halo - samples) // samples + 1), min(z1, (j + halo) // samples + 1)
        ):
            off = j - (k * samples - halo)
            if 0 <= off < len(kernel):
                np.multiply(fine[j - first], np.float32(kernel[off]), out=tmp)
                sections[k - z0] += tmp


def _acquire(setup: _Setup, clean: np.ndarray, origin: tuple[int, int, int]) -> np.ndarray:
    """Detector noise and 8-bit quantization of the noise-free image of a block at ``origin``.

    SEM detects backscattered electrons (``1 - clean``) and shows them inverted; TEM detects
    the transmitted beam (``clean``).
    """
    if setup.noise is None:
        shown = clean.copy()
    else:
        inverted = setup.contrast.inverted
        signal = 1.0 - clean if inverted else clean
        shown = setup.noise.apply(signal, seed=mix_int(setup.seed, _TAG_NOISE), origin=origin)
        if inverted:
            np.subtract(np.float32(1.0), shown, out=shown)
    np.clip(shown, 0.0, 1.0, out=shown)
    shown *= np.float32(255.0)
    return np.rint(shown, out=shown).astype(np.uint8)


def _render_user(setup: _Setup, block: tuple[slice, ...]) -> dict[str, np.ndarray]:
    """Render a block given in the user's 2-D or 3-D frame; arrays come back in that frame."""
    block3 = (slice(0, 1), *block) if setup.ndim == 2 else block
    out = _render(setup, block3)
    if setup.ndim == 2:
        out = {k: v[0] for k, v in out.items()}
    return out


def phantom_block(
    shape: Sequence[int], block: Sequence[slice | tuple[int, int]], **options: Any
) -> Phantom:
    """Render one block of the phantom of ``shape``: equal to ``phantom(shape)`` cropped there.

    Geometry, textures and noise are functions of world position, and the PSF is computed over a
    halo, so blocks can be rendered independently (in any order, on any worker) and agree
    exactly across their borders.

    Args:
        shape: full phantom shape.
        block: one ``slice`` or ``(start, stop)`` per axis, inside ``shape``.
        **options: as :func:`phantom`.

    Examples:
        >>> full = phantom((48, 48), voxel_size=(8, 8), seed=3)
        >>> part = phantom_block((48, 48), (slice(10, 30), (20, 48)), voxel_size=(8, 8), seed=3)
        >>> bool(np.array_equal(full.image[10:30, 20:48], part.image))
        True
    """
    setup = _setup(shape, **options)
    slices = _block_slices(block, setup.shape)
    arrays = _render_user(setup, slices)
    return Phantom(
        **arrays,
        voxel_size=setup.voxel_size,
        axes=("z", "y", "x")[3 - setup.ndim :],
        modality=setup.modality,
        seed=setup.seed,
        origin=tuple(s.start for s in slices),
        shape=setup.shape,
    )


def phantom(
    shape: Sequence[int],
    *,
    voxel_size: float | Sequence[float] | None = None,
    modality: str = "sem",
    seed: int = 0,
    noise: NoiseModel | None = NoiseModel(),  # noqa: B008 - immutable
    psf_sigma: float | Sequence[float] | None = None,
    section_thickness: float | None = None,
    z_samples: int | None = None,
    tissue: Tissue | None = None,
    **tissue_options: Any,
) -> Phantom:
    """A procedural EM phantom (2-D image or 3-D volume) with ground truth.

    Sizes are physical (nm), so the same seed at 4 nm and at 8 nm voxels shows the same tissue at
    two resolutions. Same arguments give identical arrays; another seed gives other tissue.

    Args:
        shape: ``(y, x)`` or ``(z, y, x)`` in voxels.
        voxel_size: nm per axis in array order (or one number); default 5 nm.
        modality: ``"sem"`` (FIB-SEM-like, inverted backscatter contrast) or ``"tem"``.
        seed: non-negative int.
        noise: detector noise, or ``None`` for ``image`` = quantized ``clean``.
        psf_sigma: Gaussian PSF sigma in nm per axis (or one number); default per modality.
        section_thickness: 2-D only: thickness (nm) of the section the image projects; default
            one pixel (a thin plane).
        z_samples: fine z samples averaged into each section (default ``ceil(z / xy voxel)``);
            render time grows with it.
        tissue: :class:`Tissue` parameters; ``**tissue_options`` override single fields
            (``cell_diameter=2000``, ``mito_fraction=0.1``, ``vesicle_clusters=0``...).

    Returns:
        :class:`Phantom`.

    Raises:
        ValueError: bad shape, voxel size, modality, seed or option.

    Examples:
        >>> p = phantom((64, 64), voxel_size=(5, 5), seed=1)
        >>> p.image.dtype, p.image.shape, p.axes
        (dtype('uint8'), (64, 64), ('y', 'x'))
        >>> v = phantom((4, 32, 32), voxel_size=(40, 5, 5), modality="tem").to_volume()
        >>> v.voxel_size
        (40.0, 5.0, 5.0)
    """
    full = tuple(slice(None) for _ in range(len(shape) if hasattr(shape, "__len__") else 0))
    return phantom_block(
        shape,
        full,
        voxel_size=voxel_size,
        modality=modality,
        seed=seed,
        noise=noise,
        psf_sigma=psf_sigma,
        section_thickness=section_thickness,
        z_samples=z_samples,
        tissue=tissue,
        **tissue_options,
    )


def phantom_dask(
    shape: Sequence[int],
    *,
    chunks: Any = None,
    fields: Sequence[str] = ("image",),
    **options: Any,
) -> dict[str, da.Array]:
    """Lazy phantom: dask arrays whose chunks are rendered on demand, independently.

    Memory stays bounded by a few chunks, so phantoms far larger than RAM can be written chunk by
    chunk (e.g. with :func:`em5m.save_volume`). The fields asked for together share one render
    per chunk when computed together.

    Args:
        shape: full shape. chunks: dask chunks (default 64 x 512 x 512 / 1024 x 1024).
        fields: any of ``image``, ``clean``, ``membranes``, ``mitochondria``, ``cells``,
            ``mito_instances``.
        **options: as :func:`phantom`.

    Examples:
        >>> arrs = phantom_dask((8, 64, 64), chunks=(4, 32, 32), voxel_size=(8, 8, 8))
        >>> arrs["image"].chunks[0]
        (4, 4)
    """
    setup = _setup(shape, **options)
    bad = [f for f in fields if f not in FIELDS]
    if bad or not fields:
        raise ValueError(f"unknown fields {bad}; choose from {FIELDS}")
    if chunks is None:
        chunks = (64, 512, 512) if setup.ndim == 3 else (1024, 1024)
    try:
        norm = da.core.normalize_chunks(chunks, setup.shape)
    except (ValueError, TypeError) as err:
        raise ValueError(f"bad chunks {chunks!r}: {err}") from None
    token = dask.base.tokenize(
        setup.shape, setup.voxel_size, setup.modality, setup.seed, repr(setup.noise),
        setup.samples, setup.sigma, repr(setup.world.tissue), norm,
    )  # fmt: skip
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in norm]
    grid = list(product(*(range(len(c)) for c in norm)))
    blocks: dict[str, dict[tuple[int, ...], da.Array]] = {f: {} for f in fields}
    for idx in grid:
        sl = tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, idx, strict=True))
        shp = tuple(x.stop - x.start for x in sl)
        job = dask.delayed(_render_user, pure=True)(
            setup, sl, dask_key_name=f"synth-phantom-{token}-" + "-".join(map(str, idx))
        )
        for f in fields:
            blocks[f][idx] = da.from_delayed(job[f], shp, dtype=_DTYPES[f])
    out = {}
    for f in fields:
        nested: Any = np.empty(tuple(len(c) for c in norm), dtype=object)
        for idx, arr in blocks[f].items():
            nested[idx] = arr
        out[f] = da.block(nested.tolist())
    return out


def phantom_volume(shape: Sequence[int], *, chunks: Any = None, **options: Any) -> Volume:
    """The lazy phantom image as an :class:`em5m.Volume` (see :func:`phantom_dask`).

    Examples:
        >>> phantom_volume((8, 64, 64), chunks=(4, 32, 32), voxel_size=(10, 5, 5)).shape
        (8, 64, 64)
    """
    setup = _setup(shape, **options)
    image = phantom_dask(shape, chunks=chunks, **options)["image"]
    meta = {"synth": {"modality": setup.modality, "seed": setup.seed}}
    return Volume(image, ("z", "y", "x")[3 - setup.ndim :], setup.voxel_size, "<synth>", meta)
