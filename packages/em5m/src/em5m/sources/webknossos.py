"""WebKnossos datasets, local or on a WEBKNOSSOS server, read without the webknossos package.

Local: a directory with ``datasource-properties.json`` (what ``webknossos`` writes). Its
``scale`` gives the voxel size (``{"factor": [x, y, z], "unit": "nanometer"}`` or the legacy
``[x, y, z]`` in nm), each layer lists its ``mags`` (``[2, 2, 1]`` = 2x down-sampled in x and y)
with a ``path`` and ``axisOrder`` (``c, x, y, z``), and a ``boundingBox`` in mag-1 voxels. Zarr,
Zarr3 (sharded) and N5 mags are read through tensorstore; the volume is cropped to the bounding
box, put in ``z, y, x`` order and a single channel is dropped. WKW layers need the webknossos
package (this module says so).

Remote: ``webknossos://<org>/<dataset>[/<layer>]`` or a dataset link
(``https://webknossos.org/datasets/<org>/<name>/view``,
``https://webknossos.org/datasets/<name>-<id>/view?token=...``). The dataset id comes from
``GET <server>/api/datasets/disambiguate/<org>/<name>/toId``, the data store from
``GET <server>/api/datasets/<id>``; the data is then streamed as Zarr from
``<datastore>/data/zarr/<id>/`` (``datasource-properties.json`` and ``<layer>/<mag>/``), the
same layout as on disk. A token (``token=``, ``$WK_TOKEN``, or ``?token=`` in the link) is sent
as the ``X-Auth-Token`` header, as webknossos-libs does for Zarr streaming.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from em5m.errors import InvalidVolumeError
from em5m.io._units import to_nm
from em5m.sources.base import (
    SourceContext,
    SourceNotFoundError,
    UnsupportedSourceError,
    choose_level,
    finish_volume,
)
from em5m.sources.http import HttpClient
from em5m.sources.stores import Store, kvstore_spec, make_volume, ts_context
from em5m.volume import Volume

KIND = "webknossos"
DEFAULT_SERVER = "https://webknossos.org"
SERVER_ENV = "WK_URL"
TOKEN_ENVS = ("WK_TOKEN",)
PROPERTIES = "datasource-properties.json"

OPTIONS = {
    "layer": "layer name (default: the first color layer)",
    "server": f"WEBKNOSSOS URL for webknossos:// URIs (default {DEFAULT_SERVER} or ${SERVER_ENV})",
    "dataset_id": "WEBKNOSSOS dataset id (skips the name lookup)",
}

_DRIVERS = {"zarr": "zarr", "zarr3": "zarr3", "n5": "n5"}
_ID = re.compile(r"[0-9a-f]{24}")


@dataclass(frozen=True)
class Mag:
    """One magnification of a layer: down-sampling factors (x, y, z) and where it is stored."""

    factors: tuple[int, int, int]
    path: str
    axis_order: dict[str, int] | None = None
    #: Other places to look when ``path`` was not given (``2`` vs ``2-2-2`` naming).
    alternatives: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        x, y, z = self.factors
        return str(x) if x == y == z else f"{x}-{y}-{z}"

    @classmethod
    def default(cls, layer: str, factors: tuple[int, int, int], axis_order: Any = None) -> Mag:
        """A mag stored at the usual ``<layer>/<mag>`` place (short or long name)."""
        short = cls(factors, "").name
        long = "-".join(str(f) for f in factors)
        alternatives = (f"{layer}/{long}",) if long != short else ()
        return cls(factors, f"{layer}/{short}", axis_order, alternatives)


@dataclass(frozen=True)
class Layer:
    """A layer of ``datasource-properties.json``."""

    name: str
    category: str
    data_format: str
    top_left: tuple[int, int, int]
    size: tuple[int, int, int]
    mags: tuple[Mag, ...]
    num_channels: int = 1
    element_class: str | None = None


def is_dataset_url(url: str) -> bool:
    """True for a WEBKNOSSOS dataset link (``https://<host>/datasets/...``).

    Examples:
        >>> is_dataset_url("https://webknossos.org/datasets/scalable_minds/l4_sample/view")
        True
        >>> is_dataset_url("https://janelia-cosem-datasets.s3.amazonaws.com/jrc_hela-2")
        False
    """
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and "/datasets/" in parts.path


def is_local_dataset(path: str) -> bool:
    """True for a local directory (or ``file://`` URL) holding ``datasource-properties.json``."""
    if path.startswith("file://"):
        path = urlsplit(path).path
    return os.path.isfile(os.path.join(os.path.expanduser(path), PROPERTIES))


def parse_voxel_size(props: dict[str, Any], uri: str) -> tuple[float, float, float]:
    """Voxel size (x, y, z) in nm from ``scale`` (``{factor, unit}`` or a legacy nm list).

    Examples:
        >>> parse_voxel_size({"scale": {"factor": [11.2, 11.2, 25], "unit": "nanometer"}}, "u")
        (11.2, 11.2, 25.0)
        >>> parse_voxel_size({"scale": [0.5, 0.5, 1]}, "u")
        (0.5, 0.5, 1.0)
    """
    scale = props.get("scale")
    factor, unit = (
        (scale.get("factor"), scale.get("unit", "nanometer"))
        if isinstance(scale, dict)
        else (scale, "nanometer")
    )
    if not isinstance(factor, list) or len(factor) != 3:
        raise InvalidVolumeError(uri, f"{PROPERTIES} has no voxel size ('scale': {scale!r})")
    out = tuple(to_nm(float(v), unit) for v in factor)
    if any(v is None for v in out):
        raise InvalidVolumeError(uri, f"{PROPERTIES}: unknown voxel size unit {unit!r}")
    return out  # type: ignore[return-value]


def _mag_factors(value: Any) -> tuple[int, int, int]:
    if isinstance(value, int | float):
        return (int(value),) * 3  # type: ignore[return-value]
    if isinstance(value, str):
        parts = [int(p) for p in value.split("-")]
        return (parts * 3)[:3] if len(parts) == 1 else tuple(parts)  # type: ignore[return-value]
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def parse_layers(props: dict[str, Any], uri: str) -> list[Layer]:
    """The layers of a ``datasource-properties.json`` (current and legacy WKW layouts)."""
    out = []
    for raw in props.get("dataLayers") or []:
        name = str(raw.get("name"))
        bbox = raw.get("boundingBox") or {}
        top_left = tuple(int(v) for v in bbox.get("topLeft", (0, 0, 0)))
        size = tuple(int(bbox.get(k, 0)) for k in ("width", "height", "depth"))
        mags = []
        for m in raw.get("mags") or []:
            factors = _mag_factors(m.get("mag"))
            if m.get("path"):
                mags.append(Mag(factors, str(m["path"]), m.get("axisOrder")))
            else:
                mags.append(Mag.default(name, factors, m.get("axisOrder")))
        for r in raw.get("wkwResolutions") or []:  # legacy WKW layout
            factors = _mag_factors(r.get("resolution"))
            mags.append(Mag.default(name, factors))
        if not mags:
            raise InvalidVolumeError(uri, f"layer {name!r} lists no mags")
        out.append(
            Layer(
                name,
                str(raw.get("category", "color")),
                str(raw.get("dataFormat", "wkw" if raw.get("wkwResolutions") else "")),
                top_left,
                size,
                tuple(mags),  # type: ignore[arg-type]
                int(raw.get("numChannels", 1)),
                raw.get("elementClass"),
            )
        )
    if not out:
        raise InvalidVolumeError(uri, f"{PROPERTIES} has no dataLayers")
    return out


def choose_layer(layers: list[Layer], name: str | None, uri: str) -> Layer:
    """The named layer, else the first color layer, else the only layer."""
    if name:
        for layer in layers:
            if layer.name == name:
                return layer
        raise SourceNotFoundError(
            uri, f"no layer {name!r}; layers: {', '.join(la.name for la in layers)}"
        )
    colors = [la for la in layers if la.category == "color"]
    if colors:
        return colors[0]
    if len(layers) == 1:
        return layers[0]
    raise UnsupportedSourceError(
        uri,
        f"no color layer; choose one with options['layer']: {', '.join(la.name for la in layers)}",
    )


# --------------------------------------------------------------------------------------------
# Opening a layer


def open_layer(
    ctx: SourceContext,
    root: Store,
    props: dict[str, Any],
    layer_name: str | None,
    pixel_size_nm: float | None,
    *,
    streamed: bool = False,
) -> Volume:
    """Open one layer of the dataset at ``root`` at the mag chosen by level or pixel size.

    Args:
        ctx: the dataset's context.
        root: the dataset directory (local or the Zarr streaming root).
        props: its ``datasource-properties.json``.
        layer_name: the layer, or None for the first color layer.
        pixel_size_nm: choose the mag nearest this in-plane pixel size.
        streamed: data comes from a Zarr streaming server (every layer is served as Zarr,
            whatever the declared ``dataFormat``).
    """
    voxel_xyz = parse_voxel_size(props, ctx.uri)
    layer = choose_layer(parse_layers(props, ctx.uri), layer_name, ctx.uri)
    if not streamed and layer.data_format not in _DRIVERS:
        fmt = layer.data_format or "unknown"
        raise UnsupportedSourceError(
            ctx.uri,
            f"layer {layer.name!r} is stored as {fmt!r}; without the webknossos "
            "package only zarr, zarr3 and n5 layers are supported (convert the layer to "
            "zarr3 with webknossos, or stream it from a WEBKNOSSOS server, which serves every "
            "layer as Zarr)",
        )
    levels = []
    for mag in layer.mags:
        start = [tl // f for tl, f in zip(layer.top_left, mag.factors, strict=True)]
        stop = [
            math.ceil((tl + n) / f)
            for tl, n, f in zip(layer.top_left, layer.size, mag.factors, strict=True)
        ]
        levels.append(
            {
                "path": mag.path,
                "mag": mag.name,
                "voxel_size": {
                    a: v * f for a, v, f in zip("xyz", voxel_xyz, mag.factors, strict=True)
                },
                "box_xyz": (start, stop),
            }
        )
    level = choose_level(ctx, levels, pixel_size_nm)
    mag = layer.mags[level]
    for k, path in enumerate((mag.path, *mag.alternatives)):
        store = _mag_store(root, path)
        try:
            driver, meta = _detect_mag(store, layer, streamed)
            break
        except SourceNotFoundError:
            if k == len(mag.alternatives):
                raise
    array = store.open_array(driver)
    stored = _stored_axes(mag, meta, array.rank)
    box_start, box_stop = levels[level]["box_xyz"]
    index = []
    for i, axis in enumerate(stored):
        if axis in ("x", "y", "z"):
            k = "xyz".index(axis)
            hi = min(int(array.shape[i]), box_stop[k])
            index.append(slice(min(box_start[k], hi), hi))
        else:
            index.append(slice(None))
    array = array[tuple(index)]
    for lv in levels:  # shapes in the stored order of the opened mag
        (a0, a1) = lv.pop("box_xyz")
        lv["shape"] = tuple(
            a1["xyz".index(ax)] - a0["xyz".index(ax)]
            if ax in ("x", "y", "z")
            else int(array.shape[i])
            for i, ax in enumerate(stored)
        )
    metadata = {
        "format": f"webknossos-{driver}",
        "layer": layer.name,
        "category": layer.category,
        "data_format": layer.data_format,
        "mag": mag.name,
        "bounding_box_mag1_xyz": {"top_left": list(layer.top_left), "size": list(layer.size)},
        "dataset": mag.path,
        "voxel_size_source": PROPERTIES,
    }
    return make_volume(
        ctx,
        array,
        root.context_json,
        stored_axes=stored,
        levels=levels,
        level=level,
        metadata=metadata,
    )


def _mag_store(root: Store, path: str) -> Store:
    """The store of a mag: relative paths inside ``root``, absolute ones (s3, https) as is."""
    if "://" in path or path.startswith("/"):
        return Store(root.ctx, kvstore_spec(path), root.context_json)
    return root.child(path.removeprefix("./"))


def _detect_mag(store: Store, layer: Layer, streamed: bool) -> tuple[str, dict[str, Any]]:
    """(tensorstore driver, array metadata) of a mag directory, probed from its files."""
    probes = [("zarr3", "zarr.json"), ("zarr", ".zarray"), ("n5", "attributes.json")]
    if layer.data_format in _DRIVERS and not streamed:  # the declared format first
        probes.sort(key=lambda p: p[0] != _DRIVERS[layer.data_format])
    for driver, key in probes:
        meta = store.read_json(key)
        if meta is not None:
            return driver, meta
    if store.read("header.wkw") is not None:
        raise UnsupportedSourceError(
            store.ctx.uri,
            f"mag at {store.url} is WKW; only zarr, zarr3 and n5 mags are "
            "supported without the webknossos package",
        )
    raise SourceNotFoundError(store.ctx.uri, f"no Zarr/N5 array metadata at {store.url}")


def _stored_axes(mag: Mag, meta: dict[str, Any], rank: int) -> list[str]:
    if mag.axis_order:
        order = sorted(mag.axis_order.items(), key=lambda kv: kv[1])
        if len(order) == rank:
            return [str(k) for k, _ in order]
    names = meta.get("dimension_names")
    if isinstance(names, list) and len(names) == rank and all(names):
        return [str(n).lower() for n in names]
    # WebKnossos' own default: channel first, then x, y, z (F-order style, x fastest).
    return ["c", "x", "y", "z"][-rank:] if rank <= 4 else ["c", "x", "y", "z"]


# --------------------------------------------------------------------------------------------
# Entry points


@dataclass(frozen=True)
class RemoteRef:
    """What a remote URI names."""

    server: str
    organization: str | None
    name: str | None
    dataset_id: str | None
    layer: str | None
    url_token: str | None


def parse_remote(uri: str, server: str) -> RemoteRef:
    """Split a ``webknossos://`` URI or a dataset link into its parts.

    Examples:
        >>> parse_remote("webknossos://scalable_minds/l4_sample/color", "https://wk.org")
        RemoteRef(server='https://wk.org', organization='scalable_minds', name='l4_sample', dataset_id=None, layer='color', url_token=None)
        >>> r = parse_remote("https://wk.org/datasets/l4-65f0c0ffee0123456789abcd/view?token=t",
        ...                  "x")
        >>> r.server, r.dataset_id, r.url_token
        ('https://wk.org', '65f0c0ffee0123456789abcd', 't')
    """  # noqa: E501 - a doctest output line
    if uri.startswith(("webknossos://", "wk://")):
        parts = [p for p in uri.split("://", 1)[1].split("/") if p]
        if len(parts) not in (2, 3):
            raise UnsupportedSourceError(uri, "expected webknossos://<org>/<dataset>[/<layer>]")
        return RemoteRef(
            server.rstrip("/"),
            parts[0],
            parts[1],
            None,
            parts[2] if len(parts) == 3 else None,
            None,
        )
    split = urlsplit(uri)
    head, _, tail = split.path.partition("/datasets/")
    token = (parse_qs(split.query).get("token") or [None])[0]
    base = f"{split.scheme}://{split.netloc}{head}".rstrip("/")
    parts = [p for p in tail.split("/") if p]
    if parts and parts[-1] == "view":
        parts = parts[:-1]
    if len(parts) == 2:  # legacy link: /datasets/<org>/<name>
        return RemoteRef(base, parts[0], parts[1], None, None, token)
    if len(parts) == 1:  # current link: /datasets/<name>-<id>
        last = parts[0].rsplit("-", 1)[-1]
        return RemoteRef(base, None, None, last if _ID.fullmatch(last) else parts[0], None, token)
    raise UnsupportedSourceError(uri, "not a WEBKNOSSOS dataset link (.../datasets/...)")


def open_webknossos(
    uri: str,
    *,
    pixel_size_nm: float | None = None,
    options: dict[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Open a WebKnossos dataset layer lazily (local directory, ``webknossos://`` or a link).

    Args:
        uri: local path / ``file://`` URL of a dataset directory, ``webknossos://<org>/
            <dataset>[/<layer>]`` or a dataset link.
        pixel_size_nm: open the mag nearest this in-plane pixel size (else mag 1).
        options: ``layer``, ``server``, ``dataset_id`` and the common options.
        token: WEBKNOSSOS token (else ``$WK_TOKEN``; a ``?token=`` in the link also works).

    Raises:
        SourceAuthError: the server wants a (valid) token.
        SourceNotFoundError: unknown dataset or layer.
        UnsupportedSourceError: a WKW layer (needs the webknossos package).
    """
    ctx = SourceContext.create(
        uri, KIND, options, token=token, extra_options=OPTIONS, token_envs=TOKEN_ENVS
    )
    if "://" not in uri or uri.startswith("file://"):
        path = urlsplit(uri).path if uri.startswith("file://") else uri
        root = Store(ctx, kvstore_spec(os.path.abspath(os.path.expanduser(path))), ts_context(ctx))
        props = root.read_json(PROPERTIES)
        if props is None:
            raise SourceNotFoundError(uri, f"no {PROPERTIES} in this directory")
        volume = open_layer(ctx, root, props, ctx.options.get("layer"), pixel_size_nm)
        return finish_volume(volume, ctx, store=root.url, extra={"wk_dataset": _name(props)})
    server = str(ctx.option("server", DEFAULT_SERVER, SERVER_ENV))
    ref = parse_remote(uri, server)
    token = ctx.token or ref.url_token
    client = HttpClient(ctx, {"X-Auth-Token": token} if token else None)
    info, root_url = _resolve(client, ref, str(ctx.options.get("dataset_id") or "") or None)
    headers = {"X-Auth-Token": token} if token else None
    root = Store(ctx, kvstore_spec(root_url, headers=headers), ts_context(ctx))
    try:
        props = client.get_json(root_url + PROPERTIES)
    except SourceNotFoundError:
        props = info.get("dataSource") or {}
        if not props.get("dataLayers"):
            raise
    layer = ctx.options.get("layer") or ref.layer
    volume = open_layer(ctx, root, props, layer, pixel_size_nm, streamed=True)
    extra = {
        "wk_dataset": info.get("name") or ref.name,
        "wk_dataset_id": info.get("id"),
        "description": info.get("description"),
        "is_public": info.get("isPublic"),
    }
    return finish_volume(volume, ctx, store=root.url, extra=extra)


def _resolve(
    client: HttpClient, ref: RemoteRef, dataset_id: str | None
) -> tuple[dict[str, Any], str]:
    """(dataset info from the API, Zarr streaming root URL ending in ``/``)."""
    query = f"?sharingToken={quote(ref.url_token)}" if ref.url_token else ""
    dataset_id = dataset_id or ref.dataset_id
    if dataset_id is None:
        assert ref.organization and ref.name
        found = client.get_json(
            f"{ref.server}/api/datasets/disambiguate/{quote(ref.organization)}/"
            f"{quote(ref.name)}/toId{query}",
            what=f"look up the id of dataset {ref.organization}/{ref.name}",
        )
        dataset_id = str(found.get("id") or "")
        if not dataset_id:
            raise SourceNotFoundError(client.ctx.uri, "the server returned no dataset id")
    info = client.get_json(
        f"{ref.server}/api/datasets/{quote(dataset_id)}{query}", what=f"get dataset {dataset_id}"
    )
    datastore = str((info.get("dataStore") or {}).get("url") or "").rstrip("/")
    if not datastore:
        raise SourceNotFoundError(client.ctx.uri, "the dataset info names no data store")
    return info, f"{datastore}/data/zarr/{quote(dataset_id)}/"


def _name(props: dict[str, Any]) -> str | None:
    ident = props.get("id")
    return ident.get("name") if isinstance(ident, dict) else None
