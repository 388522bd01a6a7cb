"""Chunked stores anywhere tensorstore reaches: local directory, HTTP(S), S3 (anonymous).

The same code reads an OME-Zarr, N5 or neuroglancer-precomputed pyramid from a local directory,
from ``https://bucket.s3.amazonaws.com/...``, from ``s3://bucket/...`` or from a test server on
127.0.0.1: only the tensorstore *kvstore* differs. Metadata (``.zattrs``, ``attributes.json``,
``info``) is fetched as small keys; its interpretation reuses em5m.io's parsers (NGFF axes and
transforms, COSEM/neuroglancer N5 attributes), so a remote store and the same store on disk give
the same axes and voxel sizes.

Pixel reads go through `GuardedReader`: each dask block charges the dataset's byte budget, waits
for the rate limiter, and maps tensorstore failures to named `SourceError` subclasses. The axes
are put in canonical order *inside* tensorstore (an index transform, free), so the dask array
needs no transpose and slicing a tile from it reads only the chunks under that tile.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import dask.array as da
import numpy as np
import tensorstore as ts

from em5m.errors import EMDataError, InvalidVolumeError
from em5m.io import n5 as n5_io
from em5m.io import zarr as zarr_io
from em5m.io._build import build_volume
from em5m.io._checks import resolve_axes
from em5m.io._lazy import BlockReader, Region, choose_chunks
from em5m.sources.base import (
    SourceAuthError,
    SourceContext,
    SourceNotFoundError,
    SourceUnavailableError,
    choose_level,
    redact,
)
from em5m.volume import Volume

#: Levels probed (``s0``, ``s1``, ...) when a group lists none in its metadata.
MAX_PROBED_LEVELS = 32
#: Target bytes of one dask block for remote data: a few storage chunks, so one tile does not
#: pull megabytes it does not need, yet a 100 TB volume still has a graph dask can handle.
REMOTE_BLOCK_BYTES = 8 * 2**20


# --------------------------------------------------------------------------------------------
# kvstore specs


def kvstore_spec(
    location: str,
    *,
    endpoint: str | None = None,
    aws_region: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A tensorstore kvstore spec for a directory-like location (always ends with ``/``).

    Args:
        location: local path, ``file://``, ``s3://bucket/prefix`` or ``http(s)://...``.
        endpoint: S3-compatible endpoint URL for ``s3://`` (tests, other clouds).
        aws_region: region of the bucket (else tensorstore asks the bucket).
        headers: HTTP headers for ``http(s)://`` (e.g. ``{"X-Auth-Token": ...}``).

    Examples:
        >>> kvstore_spec("s3://janelia-cosem-datasets/jrc_hela-2")
        {'driver': 's3', 'bucket': 'janelia-cosem-datasets', 'path': 'jrc_hela-2/'}
        >>> kvstore_spec("https://h.org/a/b")
        {'driver': 'http', 'base_url': 'https://h.org', 'path': '/a/b/'}
    """
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        spec: dict[str, Any] = {
            "driver": "s3",
            "bucket": parsed.netloc,
            "path": _dir(parsed.path.lstrip("/")),
        }
        if endpoint:
            spec["endpoint"] = endpoint
        if aws_region or endpoint:
            spec["aws_region"] = aws_region or "us-east-1"
        return spec
    if parsed.scheme in ("http", "https"):
        spec = {
            "driver": "http",
            "base_url": f"{parsed.scheme}://{parsed.netloc}",
            "path": _dir(parsed.path or "/"),
        }
        if parsed.query:  # tensorstore keeps a query at the end of every request URL
            spec["base_url"] += "?" + parsed.query
        if headers:
            spec["headers"] = [f"{k}: {v}" for k, v in headers.items()]
        return spec
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else location
        return {"driver": "file", "path": _dir(os.path.abspath(os.path.expanduser(path)))}
    raise ValueError(f"unsupported location scheme {parsed.scheme!r} in {location!r}")


def _dir(path: str) -> str:
    return path if path.endswith("/") or not path else path + "/"


def describe_spec(spec: Mapping[str, Any]) -> str:
    """A URL-like text for a kvstore spec (for messages and metadata; no secrets).

    Examples:
        >>> describe_spec({"driver": "s3", "bucket": "b", "path": "p/"})
        's3://b/p/'
    """
    driver = spec.get("driver")
    if driver == "s3":
        where = f"s3://{spec['bucket']}/{spec.get('path', '')}"
        return where + (f" (endpoint {spec['endpoint']})" if spec.get("endpoint") else "")
    if driver == "http":
        base, _, query = str(spec["base_url"]).partition("?")
        return redact(f"{base}{spec.get('path', '')}" + (f"?{query}" if query else ""))
    return str(spec.get("path", ""))


def ts_context(ctx: SourceContext, *, anonymous_s3: bool = True) -> dict[str, Any]:
    """Tensorstore context JSON for one dataset: anonymous S3, retries and concurrency bounds.

    Tensorstore retries its own HTTP/S3 requests; the attempts and delays come from the
    dataset's `Limits`, so one setting governs both our requests and tensorstore's.
    """
    retries = {
        "max_retries": ctx.limits.attempts,
        "initial_delay": f"{int(ctx.limits.backoff_s * 1000)}ms",
        "max_delay": f"{int(ctx.limits.max_backoff_s * 1000)}ms",
    }
    out: dict[str, Any] = {
        "http_request_retries": retries,
        "s3_request_retries": retries,
        "http_request_concurrency": {"limit": 8},
        "s3_request_concurrency": {"limit": 8},
    }
    if anonymous_s3:
        out["aws_credentials"] = {"type": "anonymous"}
    return out


# --------------------------------------------------------------------------------------------
# Errors


_AUTH = re.compile(r"PERMISSION_DENIED|UNAUTHENTICATED|HTTP code 40[13]")
_NOT_FOUND = re.compile(r"NOT_FOUND|HTTP code 404")
_NETWORK = re.compile(r"UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED|CURL|retry attempts|Timeout")


def map_error(ctx: SourceContext, exc: BaseException, what: str) -> EMDataError:
    """A named em5m error for a tensorstore (or other library) failure.

    Examples:
        >>> from em5m.sources.base import SourceContext
        >>> c = SourceContext.create("s3://b/x", "openorganelle", {})
        >>> type(map_error(c, ValueError("UNAVAILABLE: CURL error ..."), "read")).__name__
        'SourceUnavailableError'
    """
    if isinstance(exc, EMDataError):
        return exc
    text = redact(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):
        return SourceUnavailableError(ctx.uri, f"{what}: timed out after {ctx.limits.timeout_s} s")
    if _AUTH.search(text):
        return SourceAuthError(ctx.uri, f"{what}: access denied ({text}); a token may be needed")
    if _NOT_FOUND.search(text):
        return SourceNotFoundError(ctx.uri, f"{what}: not found ({text})")
    if _NETWORK.search(text):
        return SourceUnavailableError(
            ctx.uri,
            f"{what}: cannot reach the service after {ctx.limits.attempts} attempt(s) ({text})",
        )
    return InvalidVolumeError(ctx.uri, f"{what}: {text}")


# --------------------------------------------------------------------------------------------
# Store: a directory in a kvstore


class Store:
    """A directory of a kvstore plus the dataset's context: read keys, open arrays.

    Args:
        ctx: the dataset's context (budget, rate limit, retries, token).
        spec: kvstore spec of the directory (see `kvstore_spec`).
        context: tensorstore context JSON (see `ts_context`).

    Examples:
        >>> import tempfile, pathlib
        >>> from em5m.sources.base import SourceContext
        >>> d = tempfile.mkdtemp(); _ = (pathlib.Path(d) / "info").write_text('{"a": 1}')
        >>> s = Store(SourceContext.create(d, "local", {}), kvstore_spec(d), {})
        >>> s.read_json("info"), s.read("missing")
        ({'a': 1}, None)
    """

    def __init__(self, ctx: SourceContext, spec: Mapping[str, Any], context: Mapping[str, Any]):
        self.ctx = ctx
        self.spec = dict(spec)
        self.context_json = dict(context)
        self._context = ts.Context(self.context_json)
        self._kv: Any = None

    @property
    def url(self) -> str:
        return describe_spec(self.spec)

    def child(self, path: str) -> Store:
        """The sub-directory ``path`` (``"a/b"``) of this store."""
        path = path.strip("/")
        if not path:
            return self
        spec = {**self.spec, "path": _dir(self.spec.get("path", "") + path)}
        out = Store(self.ctx, spec, self.context_json)
        out._context = self._context  # share connection pools and caches
        return out

    def parent(self) -> Store:
        """The directory above this one."""
        path = self.spec.get("path", "").rstrip("/")
        head = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        if self.spec.get("driver") == "file" and not head:
            head = "/"
        out = Store(self.ctx, {**self.spec, "path": head}, self.context_json)
        out._context = self._context
        return out

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key`` or None when it does not exist (charged, rate-limited)."""
        what = f"read {self.url}{key}"
        if self._kv is None:
            try:
                self._kv = ts.KvStore.open(self.spec, context=self._context).result(
                    timeout=self.ctx.limits.timeout_s
                )
            except Exception as exc:
                raise map_error(self.ctx, exc, f"open {self.url}") from None
        self.ctx.limiter.acquire()
        try:
            result = self._kv.read(key).result(timeout=self.ctx.limits.timeout_s * 2)
        except Exception as exc:
            raise map_error(self.ctx, exc, what) from None
        if result.state != "value":
            return None
        value = bytes(result.value)
        self.ctx.budget.charge(len(value), what)
        return value

    def read_json(self, key: str) -> dict[str, Any] | None:
        """``key`` parsed as a JSON object; None when missing.

        Raises:
            InvalidVolumeError: the key exists but is not a JSON object.
        """
        raw = self.read(key)
        if raw is None:
            return None
        try:
            out = _json_loads(raw)
        except ValueError as exc:
            raise InvalidVolumeError(self.ctx.uri, f"{self.url}{key} is not JSON ({exc})") from None
        if not isinstance(out, dict):
            raise InvalidVolumeError(self.ctx.uri, f"{self.url}{key} is not a JSON object")
        return out

    def open_array(self, driver: str, **extra: Any) -> Any:
        """Open this directory as a tensorstore array (``zarr``, ``zarr3``, ``n5``, ...)."""
        spec = {"driver": driver, "kvstore": self.spec, **extra}
        self.ctx.limiter.acquire()
        try:
            return ts.open(spec, read=True, context=self._context).result(
                timeout=self.ctx.limits.timeout_s * 2
            )
        except Exception as exc:
            raise map_error(self.ctx, exc, f"open {driver} array at {self.url}") from None


def _json_loads(raw: bytes) -> Any:
    import json

    return json.loads(raw.decode("utf-8"))


# --------------------------------------------------------------------------------------------
# Guarded, canonical, lazily read arrays


class GuardedReader(BlockReader):
    """Reads regions of a canonical-order tensorstore under the dataset's limits.

    Each read charges its decoded size to the byte budget *before* fetching (a conservative
    bound on transfer: chunks are usually compressed), waits for the rate limiter, and turns
    failures into named errors. Float data is checked for NaN/inf as it is read.

    Args:
        ctx: the dataset's context.
        store: tensorstore with a zero origin, dimensions already in canonical order.
        spec: JSON spec that reopens ``store`` (with its context) after pickling.
        storage_chunks: chunk shape in canonical order.
    """

    def __init__(
        self, ctx: SourceContext, store: Any, spec: Mapping[str, Any], storage_chunks: Sequence[int]
    ) -> None:
        super().__init__(
            redact(ctx.uri),
            store.shape,
            store.dtype.numpy_dtype,
            storage_chunks,
            state=redact(str(spec.get("kvstore"))),
        )
        self.ctx = ctx
        self._store = store
        self._spec = dict(spec)
        self._float = np.issubdtype(self.dtype, np.floating)

    def _read(self, region: Region) -> np.ndarray:
        where = ", ".join(f"{s.start}:{s.stop}" for s in region)
        nbytes = math.prod(s.stop - s.start for s in region) * self.dtype.itemsize
        self.ctx.budget.charge(nbytes, f"region [{where}]")
        self.ctx.limiter.acquire()
        try:
            if self._store is None:
                self._store = ts.open(self._spec, read=True).result()
            out = self._store[region].read().result(timeout=self.ctx.limits.timeout_s * 4)
        except Exception as exc:
            self.ctx.budget.refund(nbytes)
            raise map_error(self.ctx, exc, f"read region [{where}]") from None
        if self._float and not np.isfinite(out).all():
            raise InvalidVolumeError(
                self.source, f"float data contains NaN/inf values in region [{where}]"
            )
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # reopened from the spec (context included) where unpickled
        return state


class _Sliceable:
    """The numpy-like face `dask.array.from_array` slices; every read goes to the reader."""

    def __init__(self, reader: BlockReader) -> None:
        self.reader, self.shape, self.dtype = reader, reader.shape, reader.dtype
        self.ndim = reader.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        region = tuple(
            slice(*k.indices(n)[:2]) if isinstance(k, slice) else slice(int(k), int(k) + 1)
            for k, n in zip(key, self.shape, strict=True)
        )
        steps = tuple(k.step or 1 if isinstance(k, slice) else 1 for k in key)
        out = self.reader.read(region)
        if any(s != 1 for s in steps):
            out = out[tuple(slice(None, None, s) for s in steps)]
        drop = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
        return out.squeeze(axis=drop) if drop else out


def lazy_array(reader: BlockReader) -> da.Array:
    """A dask array over ``reader`` whose slicing is pushed into the reads.

    ``fancy=True`` and an inlined array let dask fuse ``array[tile]`` into a single read of just
    that tile (with ``fancy=False`` dask reads whole blocks and slices afterwards).
    """
    chunks = choose_chunks(
        reader.shape, reader.storage_chunks, reader.dtype.itemsize, REMOTE_BLOCK_BYTES
    )
    return da.from_array(
        _Sliceable(reader),
        chunks=chunks,
        name=f"em5m-source-{reader.token()}",
        asarray=False,
        fancy=True,
        lock=False,
        inline_array=True,
        meta=np.empty((0,) * reader.ndim, dtype=reader.dtype),
    )


def canonical(store: Any, stored_axes: Sequence[str], source: str) -> tuple[Any, tuple[str, ...]]:
    """``store`` re-indexed to canonical axis order with a zero origin.

    A single channel (and a single time point) is dropped; the result's axes are returned.

    Examples:
        >>> s = ts.open({"driver": "array", "array": np.zeros((1, 5, 4, 3)), "dtype": "uint8"}
        ...             ).result()
        >>> out, axes = canonical(s, ["c", "x", "y", "z"], "<x>")
        >>> out.shape, axes
        ((3, 4, 5), ('z', 'y', 'x'))
    """
    names, drop, order = resolve_axes(source, store.shape, stored_axes, None, squeeze=("c",))
    if drop:
        store = store[tuple(0 if i in drop else slice(None) for i in range(store.rank))]
    kept = [i for i in range(len(names)) if i not in drop]
    perm = [kept.index(i) for i in order]
    if perm != list(range(len(perm))):
        store = store[ts.d[tuple(perm)].transpose[tuple(range(len(perm)))]]
    store = store.translate_to[0]
    return store, tuple(names[i] for i in order)


def storage_chunks(store: Any) -> tuple[int, ...]:
    """The read-chunk shape of an open store (in its current dimension order)."""
    try:
        shape = store.chunk_layout.read_chunk.shape
        if shape is not None and all(s for s in shape):
            return tuple(int(s) for s in shape)
    except Exception:  # drivers without a chunk layout
        pass
    return tuple(min(int(n), 64) for n in store.shape)


def make_volume(
    ctx: SourceContext,
    store: Any,
    context: Mapping[str, Any],
    *,
    stored_axes: Sequence[str],
    levels: list[dict[str, Any]],
    level: int,
    metadata: dict[str, Any],
) -> Volume:
    """A lazy `Volume` for ``store`` (any axis order) with ``levels`` described.

    Args:
        ctx: the dataset's context.
        store: the opened array of the chosen level.
        context: its tensorstore context JSON (to reopen it after pickling).
        stored_axes: axis names of ``store`` in its order.
        levels: per level ``path``, ``shape`` and ``voxel_size`` (dict by axis name), shapes in
            the *stored* order of ``store``.
        level: the chosen level.
        metadata: facts to keep (``format`` required).
    """
    _, _, order = resolve_axes(ctx.uri, store.shape, stored_axes, None, squeeze=("c",))
    canon, axes = canonical(store, stored_axes, ctx.uri)
    spec = {**canon.spec().to_json(), "context": dict(context)}
    reader = GuardedReader(ctx, canon, spec, storage_chunks(canon))
    canonical_levels = [{**lv, "shape": tuple(int(lv["shape"][i]) for i in order)} for lv in levels]
    return volume_from_reader(reader, axes, canonical_levels, level, metadata)


def volume_from_reader(
    reader: BlockReader,
    axes: Sequence[str],
    levels: list[dict[str, Any]],
    level: int,
    metadata: dict[str, Any],
) -> Volume:
    """A `Volume` over a reader that already yields canonical axis order.

    ``build_volume`` (em5m.io) checks axes and fills ``levels``/``level`` metadata; the data is
    then replaced by `lazy_array`, whose tile reads are exact (see there).

    Args:
        reader: returns regions in ``axes`` order (canonical, e.g. ``z, y, x``).
        axes: the reader's axes.
        levels: per level ``path``, ``shape`` (in ``axes`` order) and ``voxel_size`` (dict).
        level: the level ``reader`` reads.
        metadata: facts to keep (``format`` required).
    """
    vol = build_volume(
        reader,
        stored_axes=list(axes),
        voxel_size=levels[level]["voxel_size"],
        metadata=metadata,
        check_finite=False,  # GuardedReader-style readers check floats as they read
        levels=levels,
        level=level,
    )
    return vol.replace(data=lazy_array(reader))


# --------------------------------------------------------------------------------------------
# Format detection and multiscale readers


def detect(store: Store) -> tuple[str, dict[str, Any]] | None:
    """What ``store`` holds, from its metadata files: (kind, metadata) or None.

    Kinds: ``"zarr3"`` (``zarr.json``), ``"zarr"`` (v2: ``.zattrs``/``.zgroup``/``.zarray``),
    ``"n5"`` (``attributes.json``), ``"precomputed"`` (``info``).
    """
    if (meta := store.read_json("zarr.json")) is not None:
        return "zarr3", meta
    zattrs = store.read_json(".zattrs")
    zarray = store.read_json(".zarray")
    if zarray is not None:
        return "zarr", {"attributes": zattrs or {}, "array": zarray}
    if zattrs is not None or store.read_json(".zgroup") is not None:
        return "zarr", {"attributes": zattrs or {}}
    if (meta := store.read_json("attributes.json")) is not None:
        return "n5", meta
    if (meta := store.read_json("info")) is not None and isinstance(meta.get("scales"), list):
        return "precomputed", meta
    return None


def open_pyramid(
    store: Store,
    *,
    pixel_size_nm: float | None,
    found: tuple[str, dict[str, Any]] | None = None,
) -> Volume:
    """Open the Zarr/OME-Zarr/N5/precomputed array or pyramid at ``store`` lazily.

    Args:
        store: the directory of the array or multiscale group.
        pixel_size_nm: choose the level nearest this in-plane pixel size (else level 0, or
            ``options['level']``).
        found: the result of `detect` when already known.

    Raises:
        SourceNotFoundError: no Zarr/N5/precomputed metadata at ``store``.
    """
    found = found or detect(store)
    if found is None:
        raise SourceNotFoundError(
            store.ctx.uri,
            f"no Zarr (zarr.json, .zattrs, .zgroup, .zarray), N5 "
            f"(attributes.json) or precomputed (info) metadata at {store.url}",
        )
    kind, meta = found
    if kind in ("zarr", "zarr3"):
        return _open_zarr(store, kind, meta, pixel_size_nm)
    if kind == "n5":
        return _open_n5(store, meta, pixel_size_nm)
    return _open_precomputed(store, meta, pixel_size_nm)


def _zarr_attrs(kind: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    attrs = dict(meta.get("attributes") or {})
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, Mapping) else attrs


def _zarr_array_meta(store: Store, kind: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(array metadata, attributes) of the Zarr array at ``store``, or None if not an array."""
    if kind == "zarr3":
        meta = store.read_json("zarr.json")
        if meta is None or meta.get("node_type") != "array":
            return None
        return meta, dict(meta.get("attributes") or {})
    meta = store.read_json(".zarray")
    if meta is None:
        return None
    return meta, store.read_json(".zattrs") or {}


def _open_zarr(
    store: Store, kind: str, meta: dict[str, Any], pixel_size_nm: float | None
) -> Volume:
    ctx = store.ctx
    driver = "zarr3" if kind == "zarr3" else "zarr"
    is_array = (kind == "zarr3" and meta.get("node_type") == "array") or "array" in meta
    if is_array:
        paths, arrays, ms = [""], [_zarr_array_meta(store, kind)], None
    else:
        attrs = _zarr_attrs(kind, meta)
        multiscales = attrs.get("multiscales")
        ms = multiscales[0] if isinstance(multiscales, list) and multiscales else None
        if ms is not None:
            paths = [str(d["path"]) for d in ms.get("datasets") or []]
        else:  # COSEM-style groups without NGFF metadata: s0, s1, ... with per-array transforms
            paths = _probe_levels(store, ".zarray" if kind == "zarr" else "zarr.json")
        arrays = [_zarr_array_meta(store.child(p), kind) for p in paths]
    if not paths or any(a is None for a in arrays):
        missing = [p for p, a in zip(paths, arrays, strict=True) if a is None]
        raise InvalidVolumeError(
            ctx.uri,
            f"Zarr group at {store.url} lists no readable levels"
            + (f" (missing: {', '.join(missing)})" if missing else ""),
        )
    shapes = [tuple(int(n) for n in a[0]["shape"]) for a in arrays]  # type: ignore[index]
    if ms is not None:
        names, units = zarr_io._ngff_axes(ms, len(shapes[0]))
        global_scale, _ = zarr_io._transforms(ms.get("coordinateTransformations"))
        levels = []
        for d, shape in zip(ms["datasets"], shapes, strict=True):
            _, translation, voxel = zarr_io.ngff_level_transform(d, names, units, global_scale)
            levels.append(
                {"path": d["path"], "shape": shape, "voxel_size": voxel, "translation": translation}
            )
        source = "ngff-scale"
    else:
        names = _zarr_names(arrays[0])  # type: ignore[arg-type]
        levels = [
            {"path": p, "shape": shape, "voxel_size": zarr_io._cosem_transform(a[1])[0]}
            for p, shape, a in zip(paths, shapes, arrays, strict=True)  # type: ignore[misc]
        ]
        source = "cosem-transform" if levels[0]["voxel_size"] else "none"
    if names is None:
        raise InvalidVolumeError(
            ctx.uri,
            f"Zarr array at {store.url} has no axis names (dimension_names, "
            "_ARRAY_DIMENSIONS, NGFF axes or a COSEM transform)",
        )
    level = choose_level(ctx, levels, pixel_size_nm)
    target = store.child(levels[level]["path"])
    array = target.open_array(driver)
    metadata = {
        "format": "ome-zarr" if ms is not None else "zarr",
        "zarr_format": 3 if kind == "zarr3" else 2,
        "dataset": levels[level]["path"],
        "voxel_size_source": source,
    }
    return make_volume(
        ctx,
        array,
        store.context_json,
        stored_axes=names,
        levels=levels,
        level=level,
        metadata=metadata,
    )


def _zarr_names(array: tuple[dict[str, Any], dict[str, Any]]) -> list[str] | None:
    meta, attrs = array
    for names in (meta.get("dimension_names"), attrs.get("_ARRAY_DIMENSIONS")):
        if isinstance(names, list) and names and all(names):
            return [str(n).lower() for n in names]
    t = attrs.get("transform")
    if isinstance(t, Mapping) and isinstance(t.get("axes"), list):
        return [str(a).lower() for a in t["axes"]]
    return {2: ["y", "x"], 3: ["z", "y", "x"]}.get(len(meta.get("shape", [])))


def _probe_levels(store: Store, marker: str) -> list[str]:
    """``s0, s1, ...`` as long as ``<level>/<marker>`` exists (HTTP cannot list directories)."""
    out = []
    for i in range(MAX_PROBED_LEVELS):
        if store.child(f"s{i}").read(marker) is None:
            break
        out.append(f"s{i}")
    return out


def _open_n5(store: Store, attrs: dict[str, Any], pixel_size_nm: float | None) -> Volume:
    ctx = store.ctx
    if n5_io.is_array(attrs):
        name = store.spec.get("path", "").rstrip("/").rsplit("/", 1)[-1]
        base = store.parent()
        group_attrs = base.read_json("attributes.json") or {}
        paths, metas = [name], [attrs]
        index = n5_io._level_index(name, group_attrs)
    else:
        base, group_attrs, index = store, attrs, None
        ms = attrs.get("multiscales")
        if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) and ms[0].get("datasets"):
            paths = [str(d["path"]) for d in ms[0]["datasets"]]
        else:
            paths = _probe_levels(store, "attributes.json")
        metas = [store.child(p).read_json("attributes.json") or {} for p in paths]
    if not paths or not all(n5_io.is_array(m) for m in metas):
        raise InvalidVolumeError(
            ctx.uri,
            f"N5 node at {store.url} has no arrays, no s0..sN levels and no COSEM multiscales",
        )
    names = n5_io._names_n5(metas[0], group_attrs)
    if names is None:
        raise InvalidVolumeError(ctx.uri, f"N5 array at {store.url} has no axis names")
    levels = [
        {
            "path": p,
            "shape": tuple(int(d) for d in m["dimensions"]),  # N5 order, like the store
            "voxel_size": n5_io._voxel(
                m,
                group_attrs,
                index if index is not None else i,
                p,
                n5_io._names_n5(m, group_attrs),
            ),
        }
        for i, (p, m) in enumerate(zip(paths, metas, strict=True))
    ]
    level = choose_level(ctx, levels, pixel_size_nm)
    target = base.child(levels[level]["path"])
    array = target.open_array("n5")
    metadata = {
        "format": "n5",
        "dataset": levels[level]["path"],
        "n5_axes": names,
        "compression": (metas[level].get("compression") or {}).get("type"),
        "voxel_size_source": "n5-attributes" if levels[level]["voxel_size"] else "none",
    }
    return make_volume(
        ctx,
        array,
        store.context_json,
        stored_axes=names,
        levels=levels,
        level=level,
        metadata=metadata,
    )


def _open_precomputed(store: Store, info: dict[str, Any], pixel_size_nm: float | None) -> Volume:
    ctx = store.ctx
    channels = int(info.get("num_channels", 1))
    levels = []
    for s in info["scales"]:
        x, y, z = (float(v) for v in s["resolution"])
        levels.append(
            {
                "path": s.get("key"),
                "shape": (*(int(v) for v in s["size"]), channels),
                "voxel_size": {"x": x, "y": y, "z": z},
                "voxel_offset": tuple(int(v) for v in s.get("voxel_offset", (0, 0, 0))),
                "encoding": s.get("encoding"),
            }
        )
    level = choose_level(ctx, levels, pixel_size_nm)
    array = store.open_array("neuroglancer_precomputed", scale_index=level)
    metadata = {
        "format": "precomputed",
        "precomputed_type": info.get("type"),
        "encoding": levels[level]["encoding"],
        "sharded": bool(info["scales"][level].get("sharding")),
        "voxel_size_source": "precomputed-info (nm)",
    }
    return make_volume(
        ctx,
        array,
        store.context_json,
        stored_axes=["x", "y", "z", "c"],
        levels=levels,
        level=level,
        metadata=metadata,
    )
