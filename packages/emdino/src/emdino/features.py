"""Tiled feature extraction for images and volumes larger than one forward pass.

The image is cut into overlapping square tiles on the patch grid; each tile's features keep only
their central part (up to the middle of each overlap), and the parts are stitched into one map of
``ceil(H / p) x ceil(W / p)`` tokens with the pixel mapping of `emdino.backbone` (token ``(i, j)``
covers pixels ``[i*p, (i+1)*p) x [j*p, (j+1)*p)``). With an overlap of ``o`` tokens every kept
token is at least ``o // 2`` tokens away from its tile's border, where the missing context would
change it; tiles at the image border are shifted inwards so no tile hangs over the image.

`extract_to_zarr` streams the result into Zarr tile by tile (memory bounded by one batch of tiles
and one band of input rows, not by the image), written atomically as an OME-Zarr 0.5 image that
`em5m.open_volume` reads: axes ``c, y, x`` (``c, z, y, x`` for a volume, one slice at a time),
pixel size = input pixel size x patch size, origin at the first token's centre.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdino import __version__
from emdino.backbone import Backbone, TokenGrid

#: ``progress(stage, done, total, info)``: the callback shape em5m uses too.
ProgressFn = Callable[[str, int, int, dict[str, Any]], None]


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis, in tokens: reads ``[start, stop)``, keeps ``[keep0, keep1)``."""

    start: int
    stop: int
    keep0: int
    keep1: int


def plan_axis(n: int, tile: int, overlap: int) -> list[AxisTile]:
    """Tiles of ``tile`` tokens covering ``n`` tokens with at least ``overlap`` tokens of overlap.

    Each tile keeps the tokens up to the middle of its overlaps, so the kept parts partition
    ``[0, n)``. The last tile is shifted back to end at ``n`` (never past the image). One tile of
    ``n`` tokens when ``n <= tile``.

    Examples:
        >>> [(t.start, t.stop, t.keep0, t.keep1) for t in plan_axis(10, 4, 2)]
        [(0, 4, 0, 3), (2, 6, 3, 5), (4, 8, 5, 7), (6, 10, 7, 10)]
    """
    if n < 1 or tile < 1:
        raise ValueError(f"need n >= 1 and tile >= 1, got n={n}, tile={tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if n <= tile:
        return [AxisTile(0, n, 0, n)]
    step = tile - overlap
    starts = list(range(0, n - tile, step)) + [n - tile]
    bounds = [0] + [(s1 + s0 + tile) // 2 for s0, s1 in zip(starts, starts[1:], strict=False)]
    bounds.append(n)
    return [AxisTile(s, s + tile, bounds[k], bounds[k + 1]) for k, s in enumerate(starts)]


def tile_geometry(model: Backbone, tile: int | None, overlap: int | None) -> tuple[int, int]:
    """Tile and overlap in tokens from pixel values (defaults: the model's tile, tile / 4).

    Raises:
        ValueError: tile not a positive multiple of the patch size, or overlap >= tile.
    """
    p = model.patch_size
    if tile is None:
        tile = getattr(model.cfg, "default_tile", None) or model.img_size
    tile = int(tile)
    if tile < p or tile % p:
        raise ValueError(
            f"tile {tile} must be a positive multiple of the patch size {p} "
            f"(e.g. {max(1, round(tile / p)) * p})"
        )
    t = tile // p
    o = t // 4 if overlap is None else math.ceil(int(overlap) / p)
    if overlap is not None and overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if o >= t:
        raise ValueError(f"overlap {o * p} px must be smaller than the tile {tile} px")
    return t, o


@dataclass
class TiledFeatures:
    """Stitched features of one image (numpy, float32).

    Args:
        patch: final patch features ``[D, h, w]``.
        levels: block index -> ``[D, h, w]`` intermediate maps (when requested).
        grid: pixel mapping (see `emdino.backbone.TokenGrid`).
    """

    patch: np.ndarray
    levels: dict[int, np.ndarray] = field(default_factory=dict)
    grid: TokenGrid | None = None


def _pad_like_prepare(band: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pad at the bottom/right as `Backbone.prepare` pads a whole image (reflect, else edge)."""
    ph, pw = rows - band.shape[0], cols - band.shape[1]
    if ph <= 0 and pw <= 0:
        return band
    mode = "reflect" if ph < band.shape[0] and pw < band.shape[1] else "edge"
    return np.pad(band, ((0, max(ph, 0)), (0, max(pw, 0))), mode=mode)


def _tiles_2d(
    model: Backbone,
    read_rows: Callable[[int, int], np.ndarray],
    image_hw: tuple[int, int],
    tile: int,
    overlap: int,
    batch_size: int,
    levels: Sequence[int],
) -> Iterator[tuple[AxisTile, AxisTile, torch.Tensor, dict[int, torch.Tensor]]]:
    """Yield ``(row_tile, col_tile, kept_patch [D,kh,kw], kept_levels)`` for one 2D image."""
    p = model.patch_size
    h, w = image_hw
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    rows, cols = plan_axis(gh, tile, overlap), plan_axis(gw, tile, overlap)
    for rt in rows:
        y0, y1 = rt.start * p, min(rt.stop * p, h)
        band = read_rows(y0, y1)  # one band of input rows serves the whole tile row
        band = _pad_like_prepare(band, rt.stop * p - y0, gw * p)
        pending: list[AxisTile] = []
        for ct in cols:
            pending.append(ct)
            if len(pending) == batch_size or ct is cols[-1]:
                crops = [band[:, c.start * p : c.stop * p] for c in pending]
                x = torch.from_numpy(np.stack(crops))[:, None]
                f = model.features(x, levels=levels)
                ky = slice(rt.keep0 - rt.start, rt.keep1 - rt.start)
                for b, c in enumerate(pending):
                    kx = slice(c.keep0 - c.start, c.keep1 - c.start)
                    kept = {i: m[b, :, ky, kx] for i, m in f.levels.items()}
                    yield rt, c, f.patch[b, :, ky, kx], kept
                pending = []


def extract_features(
    model: Backbone,
    image: np.ndarray | torch.Tensor,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    levels: Sequence[int] = (),
) -> TiledFeatures:
    """Stitched tiled features of one 2D image held in memory.

    Args:
        model: a loaded backbone.
        image: ``[H, W]`` uint8 or float in [0, 1].
        tile: tile side in pixels, a multiple of the patch size (default: the model's grid,
            518 for DINOv2-style ViT/14).
        overlap: overlap between tiles in pixels (rounded up to whole patches; default a
            quarter of the tile).
        batch_size: tiles per forward pass.
        levels: intermediate blocks to stitch as well.

    Examples:
        >>> import emdino
        >>> m = emdino.load("vit_tiny_patch14.random", img_size=56)
        >>> extract_features(m, np.zeros((100, 150), np.uint8), tile=56).patch.shape
        (192, 8, 11)
    """
    arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"image must be 2D [H, W], got shape {arr.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t, o = tile_geometry(model, tile, overlap)
    p = model.patch_size
    h, w = arr.shape
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    patch = np.zeros((model.embed_dim, gh, gw), np.float32)
    maps = {i % model.num_blocks: np.zeros_like(patch) for i in levels}
    for rt, ct, kept, kept_levels in _tiles_2d(
        model, lambda y0, y1: arr[y0:y1], (h, w), t, o, batch_size, levels
    ):
        region = np.s_[:, rt.keep0 : rt.keep1, ct.keep0 : ct.keep1]
        patch[region] = kept.cpu().numpy()
        for i, m in kept_levels.items():
            maps[i][region] = m.cpu().numpy()
    grid = TokenGrid(p, (h, w), (gh * p, gw * p))
    return TiledFeatures(patch, maps, grid)


# --------------------------------------------------------------------------- Zarr output


def grey_slices(volume: Any) -> tuple[Any, dict[str, Any]]:
    """An em5m ``Volume`` as lazy grey uint8 slices: ``(dask array [Z, Y, X], notes)``.

    A 2D image is one slice. Non-uint8 data goes through em5m's robust percentile window, RGB(A)
    is averaged to grey; ``notes`` records what was done (``intensity_window``, ``colour``).

    Raises:
        ValueError: more than 4 channels.
    """
    import em5m.intensity

    notes: dict[str, Any] = {}
    if "c" in volume.axes:
        n_c = volume.shape[volume.axes.index("c")]
        if n_c == 1:
            volume = volume.replace(data=volume.data[0], axes=volume.axes[1:])
        elif n_c in (3, 4):  # RGB(A) screenshots of EM: grey = mean of R, G, B
            data = volume.data[:3].astype(np.float32).mean(axis=0)
            volume = volume.replace(data=data, axes=volume.axes[1:])
            notes["colour"] = "mean of the first 3 channels"
        else:
            raise ValueError(f"{volume.source}: {n_c} channels; expected grey or RGB(A)")
    if volume.dtype != np.uint8:
        window = em5m.intensity.estimate_window(volume)
        volume = em5m.intensity.to_uint8(volume, window)
        notes["intensity_window"] = window.as_dict()
    data = volume.data if "z" in volume.axes else volume.data[None]
    return data, notes


def extract_to_zarr(
    model: Backbone,
    source: Any,
    out: str | os.PathLike[str],
    *,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    levels: Sequence[int] = (),
    store_dtype: str = "float32",
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Tiled features of an image or volume, streamed into an OME-Zarr image.

    Args:
        model: a loaded backbone.
        source: an em5m ``Volume``, a path/URI `em5m.open_volume` reads, or a 2D/3D array.
            Non-uint8 data is mapped to uint8 with em5m's robust percentile window (recorded
            in the output's attributes); RGB is averaged to grey. A 3D volume is processed
            slice by slice along z.
        out: target ``*.zarr`` directory.
        tile: tile side in pixels (multiple of the patch size; default the model's grid).
        overlap: overlap in pixels (default a quarter of the tile).
        batch_size: tiles per forward pass.
        levels: intermediate blocks to write too, as ``levels/<block>`` images.
        store_dtype: ``float32`` or ``float16`` on disk.
        overwrite: replace an existing ``out`` (only once the new one is complete).
        progress: ``progress(stage, done, total, info)`` after each tile row.

    Returns:
        The path written. Root attribute ``emdino`` records model, tile geometry, pixel mapping.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ValueError: bad arguments.
        em5m.EMDataError: the input cannot be read.
    """
    import zarr
    from zarr.codecs import BloscCodec

    import em5m

    if store_dtype not in ("float32", "float16"):
        raise ValueError(f"store_dtype must be float32 or float16, got {store_dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    volume = (
        source
        if isinstance(source, em5m.Volume)
        else (
            em5m.Volume.from_array(source)
            if isinstance(source, np.ndarray)
            else em5m.open_volume(source)
        )
    )
    data, notes = grey_slices(volume)
    t, o = tile_geometry(model, tile, overlap)
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    p, dim = model.patch_size, model.embed_dim
    n_z, h, w = (int(s) for s in data.shape)
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    is_3d = "z" in volume.axes
    axes = ["c", "z", "y", "x"] if is_3d else ["c", "y", "x"]
    shape = (dim, n_z, gh, gw) if is_3d else (dim, gh, gw)
    chunks = (dim, 1, min(64, gh), min(64, gw)) if is_3d else (dim, min(64, gh), min(64, gw))
    vs = volume.voxel_size_by_axis
    codec = BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")
    levels_abs = [i % model.num_blocks for i in levels]

    tmp = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:12]}")
    root = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
    try:
        images = {None: root}
        for i in levels_abs:
            images[i] = root.require_group(f"levels/{i}")
        arrays = {
            k: g.create_array(
                "s0",
                shape=shape,
                chunks=chunks,
                dtype=store_dtype,
                compressors=[codec],
                fill_value=0,
                dimension_names=axes,
            )
            for k, g in images.items()
        }
        rows_per_slice = len(plan_axis(gh, t, o))
        total = n_z * rows_per_slice
        done = 0
        for z in range(n_z):

            def read_rows(y0: int, y1: int, z: int = z) -> np.ndarray:
                return np.asarray(data[z, y0:y1, :].compute())

            last_row = None
            for rt, ct, kept, kept_levels in _tiles_2d(
                model, read_rows, (h, w), t, o, batch_size, levels_abs
            ):
                yx = (slice(rt.keep0, rt.keep1), slice(ct.keep0, ct.keep1))
                region = (slice(None), z, *yx) if is_3d else (slice(None), *yx)
                arrays[None][region] = kept.cpu().numpy().astype(store_dtype)
                for i, m in kept_levels.items():
                    arrays[i][region] = m.cpu().numpy().astype(store_dtype)
                if progress is not None and ct.stop == gw and rt is not last_row:
                    last_row = rt
                    done += 1
                    progress("tiles", done, total, {"z": z})
        meta = _attrs(model, volume, t, o, store_dtype, levels_abs, notes, (h, w))
        for k, g in images.items():
            g.attrs["ome"] = _ome(axes, vs, p, name=target.name if k is None else f"level {k}")
        root.attrs["emdino"] = meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():  # overwrite: the old output goes only once the new one is complete
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def _ome(axes: list[str], vs: dict[str, float] | None, p: int, name: str) -> dict[str, Any]:
    """NGFF 0.5 multiscales for one level: spacing = pixel x patch, origin at a token centre."""
    unit = vs is not None
    scale, translation, ngff_axes = [], [], []
    for a in axes:
        if a == "c":
            scale.append(1.0)
            translation.append(0.0)
            ngff_axes.append({"name": "c", "type": "channel"})
            continue
        px = (vs or {}).get(a, 1.0)
        f = 1 if a == "z" else p
        scale.append(px * f)
        translation.append(px * (f - 1) / 2)
        ngff_axes.append({"name": a, "type": "space", **({"unit": "nanometer"} if unit else {})})
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": ngff_axes,
                "datasets": [
                    {
                        "path": "s0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": scale},
                            {"type": "translation", "translation": translation},
                        ],
                    }
                ],
                "metadata": {"writer": "emdino.extract_to_zarr"},
            }
        ],
    }


def _attrs(
    model: Backbone,
    volume: Any,
    t: int,
    o: int,
    store_dtype: str,
    levels: list[int],
    notes: dict[str, Any],
    image_hw: tuple[int, int],
) -> dict[str, Any]:
    p = model.patch_size
    return {
        "version": __version__,
        "model": model.name,
        "model_config": model.cfg.as_dict(),
        "source": volume.source,
        "source_axes": list(volume.axes),
        "source_shape": list(volume.shape),
        "voxel_size_nm": list(volume.voxel_size) if volume.voxel_size else None,
        "patch_size": p,
        "image_hw": list(image_hw),
        "tile_px": t * p,
        "overlap_px": o * p,
        "compute_dtype": str(model.compute_dtype).replace("torch.", ""),
        "store_dtype": store_dtype,
        "levels": levels,
        "pixel_mapping": (
            "token (i, j) covers input pixels [i*p, (i+1)*p) x [j*p, (j+1)*p); the input is "
            "reflection-padded at the bottom/right to a multiple of p"
        ),
        **notes,
    }
