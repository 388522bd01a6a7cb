"""TIFF reader: single and multi-page, BigTIFF, ImageJ hyperstacks, OME-TIFF, pyramids.

Pixels are read lazily through tifffile's zarr store (one storage chunk = one page, strip or
tile); opening reads only the header and IFDs. Voxel size comes from, in this order:
OME-XML ``PhysicalSize{X,Y,Z}`` (+ units), ImageJ ``unit``/``spacing`` + X/YResolution, or
X/YResolution with a metric ResolutionUnit (centimetre; inch is ignored: it is a print setting).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import tifffile
import zarr

from em5m.errors import InvalidVolumeError
from em5m.io._build import build_volume
from em5m.io._checks import check_level
from em5m.io._lazy import SliceableReader, file_state
from em5m.io._sniff import require_kind, sniff
from em5m.io._units import round_sig, to_nm
from em5m.volume import Volume

EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".btf", ".tf8", ".tf2")

#: tifffile axis codes that we understand; 'I' and 'Q' (generic page sequence) are resolved below.
_TIFF_AXES = {"X": "x", "Y": "y", "Z": "z", "C": "c", "S": "c", "T": "t"}
# TIFF ResolutionUnit codes with a physical length (tifffile adds 4 = mm and 5 = um).
_RESUNIT_NM = {3: 1e7, 4: 1e6, 5: 1e3}


def has_tiff_extension(path: str) -> bool:
    return path.lower().endswith(EXTENSIONS)


def can_open(path: str) -> bool:
    """True for a file with a TIFF extension or TIFF magic bytes."""
    return os.path.isfile(path) and (has_tiff_extension(path) or sniff(path) == "tiff")


def open(  # noqa: A001 - the reader protocol is ``open(uri) -> Volume``
    path: str,
    *,
    level: int = 0,
    dataset: str | None = None,
    axes: str | Sequence[str] | None = None,
    check_finite: bool = True,
) -> Volume:
    """Open a TIFF file lazily.

    Args:
        path: the file.
        level: pyramid level (OME-TIFF SubIFDs / pyramidal series); 0 = full resolution.
        dataset: series index as text (``"1"``) for files with several series; default 0.
        axes: override the axes tifffile reports (needed for 4D/5D files without metadata).
        check_finite: NaN/inf checks for float data.

    Examples:
        >>> import tempfile, numpy as np, tifffile
        >>> p = tempfile.mkdtemp() + "/a.tif"
        >>> tifffile.imwrite(p, np.zeros((3, 8, 8), np.uint8), imagej=True,
        ...                  resolution=(0.25, 0.25),
        ...                  metadata={"axes": "ZYX", "spacing": 40, "unit": "nm"})
        >>> open(p).voxel_size
        (40.0, 4.0, 4.0)
    """
    require_kind(path, {"tiff"}, "TIFF")
    try:
        tif = tifffile.TiffFile(path)
        series_list = tif.series
        if dataset is None and _pages_as_series(series_list):
            # Pages appended one by one with tifffile's default metadata come back as one
            # series per page; read them as the z-stack they are.
            tif.close()
            tif = tifffile.TiffFile(path, is_shaped=False)
            series_list = tif.series
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"not a readable TIFF file ({type(exc).__name__}: {exc})"
        ) from None
    try:
        index = int(dataset) if dataset is not None else 0
    except ValueError:
        raise InvalidVolumeError(path, f"dataset {dataset!r} must be a series index") from None
    if not series_list or not 0 <= index < len(series_list):
        raise InvalidVolumeError(
            path, f"series {index} does not exist; the file has {len(series_list)} series"
        )
    series = series_list[index]
    levels = series.levels
    check_level(path, level, len(levels))
    chosen = levels[level]
    _check_truncated(path, chosen)

    try:
        store = series.aszarr(level=level)
        array = zarr.open_array(store, mode="r")
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"cannot read TIFF layout ({type(exc).__name__}: {exc})"
        ) from None
    reader = SliceableReader(
        path, array, array.chunks, keepalive=(tif, store), state=file_state(path)
    )

    stored_axes = _stored_axes(chosen.axes, chosen.shape)
    base_voxel, voxel_source = _voxel_size(tif, index, series)
    voxel_levels = [_scale_voxel(base_voxel, series.axes, series.shape, lv) for lv in levels]
    flavor = "ome" if tif.is_ome else "imagej" if tif.is_imagej else series.kind or "tiff"
    metadata: dict[str, Any] = {
        "format": "tiff",
        "tiff_flavor": flavor,
        "bigtiff": bool(tif.is_bigtiff),
        "series": index,
        "tiff_axes": chosen.axes,
        "voxel_size_source": voxel_source,
        # An enum normally; a plain int for some files (e.g. the Drosophila VNC raw sections).
        "compression": _compression_name(chosen.keyframe.compression),
    }
    if tif.is_imagej and tif.imagej_metadata:
        metadata["imagej"] = {
            k: v for k, v in tif.imagej_metadata.items() if isinstance(v, int | float | str)
        }
    level_info = [
        {"path": f"series{index}/level{i}", "shape": lv.shape, "voxel_size": voxel_levels[i]}
        for i, lv in enumerate(levels)
    ]
    return build_volume(
        reader,
        stored_axes=stored_axes,
        voxel_size=voxel_levels[level],
        metadata=metadata,
        axes=axes,
        check_finite=check_finite,
        levels=level_info,
        level=level,
    )


def _pages_as_series(series_list: Sequence[Any]) -> bool:
    """Several single-page 2D series of one shape and dtype (a stack written page by page)."""
    if len(series_list) < 2:
        return False
    first = series_list[0]
    return all(
        s.kind == "shaped"
        and len(s.pages) == 1
        and s.shape == first.shape
        and s.dtype == first.dtype
        and s.axes in ("YX", "YXS")
        for s in series_list
    )


def _stored_axes(codes: str, shape: Sequence[int]) -> list[str] | None:
    """tifffile axis codes as our names; one unknown page axis of a 3D stack is z.

    EM stacks saved without metadata come back as ``QYX``/``IYX``: the pages of a stack are
    its slices. With more unknown axes there is no safe reading, so we return None and
    `resolve_axes` asks the user for ``axes=``.
    """
    names: list[str | None] = [_TIFF_AXES.get(c) for c in codes]
    unknown = [i for i, n in enumerate(names) if n is None]
    if not unknown:
        return names  # type: ignore[return-value]
    if len(unknown) == 1 and "z" not in names and len(shape) - names.count("c") == 3:
        names[unknown[0]] = "z"
        return names  # type: ignore[return-value]
    return None


def _check_truncated(path: str, series: Any) -> None:
    """Raise if the pixel data the IFDs point at runs past the end of the file."""
    size = os.path.getsize(path)
    try:
        if series.dataoffset is not None:
            end = int(series.dataoffset) + int(series.nbytes)
        else:
            end = 0
            for page in series.pages:
                if page is None:
                    continue
                for off, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                    end = max(end, int(off) + int(count))
    except Exception as exc:
        raise InvalidVolumeError(
            path, f"TIFF directory is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from None
    if end > size:
        raise InvalidVolumeError(
            path,
            f"TIFF file is truncated: image data ends at byte {end} but the file has "
            f"{size} bytes (incomplete copy or download?)",
        )


def _voxel_size(
    tif: tifffile.TiffFile, index: int, series: Any
) -> tuple[dict[str, float | None] | None, str]:
    """nm per axis (z, y, x; any may be None) and where it came from."""
    if tif.is_ome and tif.ome_metadata:
        vs = _ome_voxel_size(tif.ome_metadata, index)
        if vs:
            return vs, "ome-xml"
    page = series.keyframe
    if tif.is_imagej and tif.imagej_metadata:
        md = tif.imagej_metadata
        unit = md.get("unit")
        if unit:
            vs = {
                "x": _res_to_nm(page, "XResolution", md.get("xunit", unit)),
                "y": _res_to_nm(page, "YResolution", md.get("yunit", unit)),
                "z": to_nm(md["spacing"], md.get("zunit", unit)) if "spacing" in md else None,
            }
            return vs, "imagej"
        return None, "none"
    resunit = int(page.tags.valueof("ResolutionUnit", 1) or 1)
    if resunit in _RESUNIT_NM:
        factor = _RESUNIT_NM[resunit]
        x = _res_value(page, "XResolution")
        y = _res_value(page, "YResolution")
        if x and y:
            return {"x": round_sig(factor / x), "y": round_sig(factor / y), "z": None}, "tags"
    return None, "none"


def _res_value(page: Any, tag: str) -> float | None:
    value = page.tags.valueof(tag)
    if not value:
        return None
    num, den = value if isinstance(value, tuple) else (value, 1)
    if not num or not den:
        return None
    res = float(num) / float(den)
    # ImageJ and many writers put 1 pixel/unit when uncalibrated.
    return res if res > 0 else None


def _res_to_nm(page: Any, tag: str, unit: str) -> float | None:
    """ImageJ: X/YResolution is pixels per ``unit``; pixel size = 1 / resolution."""
    res = _res_value(page, tag)
    if res is None:
        return None
    nm = to_nm(1.0 / res, unit)
    return round_sig(nm, 7) if nm is not None else None  # rationals carry ~7 digits


def _ome_voxel_size(xml: str, index: int) -> dict[str, float | None] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = [el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"]
    if index >= len(pixels):
        return None
    px = pixels[index].attrib
    out: dict[str, float | None] = {}
    for ax in ("x", "y", "z"):
        value = px.get(f"PhysicalSize{ax.upper()}")
        unit = px.get(f"PhysicalSize{ax.upper()}Unit", "µm")  # OME default unit is micrometre
        out[ax] = to_nm(float(value), unit) if value is not None else None
    return out if any(v is not None for v in out.values()) else None


def _scale_voxel(
    voxel: dict[str, float | None] | None,
    codes: str,
    shape0: Sequence[int],
    level_series: Any,
) -> dict[str, float | None] | None:
    """Voxel size of a pyramid level: the base size times the shape ratio per axis."""
    if voxel is None:
        return None
    out = dict(voxel)
    for code, n0, n in zip(codes, shape0, level_series.shape, strict=False):
        name = _TIFF_AXES.get(code)
        if name in ("x", "y", "z") and out.get(name) is not None and n and n != n0:
            out[name] = round_sig(out[name] * n0 / n)  # type: ignore[operator]
    return out


def _compression_name(code: Any) -> str:
    """Name of a TIFF compression code (``NONE``, ``LZW``, ...), from an enum or a plain int."""
    import tifffile

    if hasattr(code, "name"):
        return str(code.name)
    try:
        return str(tifffile.COMPRESSION(int(code)).name)
    except (ValueError, TypeError):
        return str(code)
