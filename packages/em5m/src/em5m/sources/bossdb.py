"""BossDB channels: ``bossdb://<collection>/<experiment>/<channel>[/<resolution>]``.

The channel's metadata (``GET <api>/v1/collection/<c>/experiment/<e>/channel/<ch>``) says where
its voxels live. Public channels with ``storage_type == "cloudvol"`` are neuroglancer precomputed
volumes in a public bucket (``bucket`` + ``cv_path``); they are read directly through tensorstore
(anonymous S3, no BossDB client needed), and each level's voxel size is the ``resolution`` of
that scale in the volume's ``info``. Other channels are served by the Boss itself and are read
through ``intern`` (optional: ``pip install 'em5m[bossdb]'``), imported only then.

Boss resolution levels down-sample x and y by 2 per level; z is down-sampled too only for
``hierarchy_method == "isotropic"`` experiments. For the usual anisotropic data the voxel size
at level ``r`` is ``(z, y * 2**r, x * 2**r)`` (`boss_levels`). (intern's own ``voxel_size``
scales z as well, which is wrong for anisotropic data.)

The API host is configurable (``options['api_url']`` or ``$EM5M_BOSSDB_API``), and so is the
bucket location (``options['bucket_url']``, a template with ``{bucket}``), so a copy served on
127.0.0.1 runs the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from em5m.io._lazy import BlockReader, Region
from em5m.io._units import to_nm
from em5m.sources.base import (
    SourceContext,
    SourceError,
    SourceUnavailableError,
    UnsupportedSourceError,
    choose_level,
    finish_volume,
)
from em5m.sources.http import HttpClient
from em5m.sources.stores import (
    Store,
    detect,
    kvstore_spec,
    open_pyramid,
    ts_context,
    volume_from_reader,
)
from em5m.volume import Volume

KIND = "bossdb"
DEFAULT_API = "https://api.bossdb.io"
API_ENV = "EM5M_BOSSDB_API"
DEFAULT_BUCKET_URL = "s3://{bucket}"
TOKEN_ENVS = ("BOSSDB_TOKEN",)
#: The anonymous token BossDB documents for public data.
PUBLIC_TOKEN = "public"

OPTIONS = {
    "api_url": f"Boss API root (default {DEFAULT_API}, or ${API_ENV})",
    "bucket_url": f"where cloudvol buckets live, with {{bucket}} (default {DEFAULT_BUCKET_URL})",
    "endpoint": "S3-compatible endpoint URL for s3:// buckets (tests, mirrors)",
    "aws_region": "region of the S3 bucket (default: asked from the bucket)",
}

_UNITS = {"nanometers": "nm", "micrometers": "um", "millimeters": "mm", "centimeters": "cm"}


def parse_uri(uri: str) -> tuple[str, str, str, int | None]:
    """(collection, experiment, channel, resolution or None) of a ``bossdb://`` URI.

    Examples:
        >>> parse_uri("bossdb://witvliet2020/Dataset_1/em/2")
        ('witvliet2020', 'Dataset_1', 'em', 2)
    """
    parts = [p for p in uri.split("://", 1)[-1].split("/") if p]
    if len(parts) not in (3, 4) or (len(parts) == 4 and not parts[3].isdigit()):
        raise UnsupportedSourceError(
            uri, "expected bossdb://<collection>/<experiment>/<channel>[/<resolution>]"
        )
    return parts[0], parts[1], parts[2], int(parts[3]) if len(parts) == 4 else None


def boss_levels(frame: Mapping[str, Any], experiment: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Shape (z, y, x) and voxel size (nm) of every Boss resolution level.

    Args:
        frame: the coordinate frame (``x_start``, ``x_stop``, ..., ``x_voxel_size``, ...,
            ``voxel_unit``).
        experiment: the experiment (``num_hierarchy_levels``, ``hierarchy_method``).

    Examples:
        >>> frame = {"x_start": 0, "x_stop": 1000, "y_start": 0, "y_stop": 600, "z_start": 0,
        ...          "z_stop": 50, "x_voxel_size": 4, "y_voxel_size": 4, "z_voxel_size": 40,
        ...          "voxel_unit": "nanometers"}
        >>> lv = boss_levels(frame, {"num_hierarchy_levels": 3, "hierarchy_method": "anisotropic"})
        >>> [(x["shape"], x["voxel_size"]) for x in lv][2]
        ((50, 150, 250), {'z': 40.0, 'y': 16.0, 'x': 16.0})
    """
    unit = _UNITS.get(str(frame.get("voxel_unit", "nanometers")).lower(), "nm")
    size = {a: to_nm(float(frame[f"{a}_voxel_size"]), unit) for a in "zyx"}
    extent = {a: int(frame[f"{a}_stop"]) - int(frame[f"{a}_start"]) for a in "zyx"}
    isotropic = str(experiment.get("hierarchy_method", "anisotropic")).lower() == "isotropic"
    out = []
    for r in range(int(experiment.get("num_hierarchy_levels", 1))):
        f = 2**r
        fz = f if isotropic else 1
        out.append(
            {
                "path": str(r),
                "shape": (
                    math.ceil(extent["z"] / fz),
                    math.ceil(extent["y"] / f),
                    math.ceil(extent["x"] / f),
                ),
                "voxel_size": {"z": size["z"] * fz, "y": size["y"] * f, "x": size["x"] * f},
            }
        )
    return out


def open_bossdb(
    uri: str,
    *,
    pixel_size_nm: float | None = None,
    options: dict[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Open a BossDB channel lazily.

    Args:
        uri: ``bossdb://<collection>/<experiment>/<channel>[/<resolution>]``; the resolution
            (or ``options['level']``) wins over ``pixel_size_nm``.
        pixel_size_nm: open the level nearest this in-plane pixel size (else level 0).
        options: ``api_url``, ``bucket_url``, ``endpoint``, ``aws_region`` and the common ones.
        token: Boss API token (else ``$BOSSDB_TOKEN``, else the public token).

    Raises:
        UnsupportedSourceError: the channel needs intern and intern is not installed.
        SourceNotFoundError / SourceAuthError / SourceUnavailableError: API or bucket errors.
    """
    opts = dict(options or {})
    collection, experiment, channel, resolution = parse_uri(uri)
    if resolution is not None:
        opts.setdefault("level", resolution)
    ctx = SourceContext.create(
        uri, KIND, opts, token=token, extra_options=OPTIONS, token_envs=TOKEN_ENVS
    )
    api = str(ctx.option("api_url", DEFAULT_API, API_ENV)).rstrip("/")
    client = HttpClient(ctx, {"Authorization": f"Token {ctx.token or PUBLIC_TOKEN}"})
    base = f"{api}/v1/collection/{quote(collection)}/experiment/{quote(experiment)}"
    meta = client.get_json(f"{base}/channel/{quote(channel)}", what="get the channel metadata")
    summary = {
        k: meta.get(k)
        for k in (
            "name",
            "description",
            "type",
            "datatype",
            "base_resolution",
            "storage_type",
            "bucket",
            "cv_path",
            "sources",
            "downsample_status",
        )
        if k in meta
    }
    if str(meta.get("storage_type", "")).lower() == "cloudvol" and meta.get("cv_path"):
        volume, where = _open_cloudvol(ctx, meta, pixel_size_nm)
    else:
        volume, where = _open_with_intern(
            ctx, client, base, (collection, experiment, channel), meta, pixel_size_nm
        )
    return finish_volume(volume, ctx, store=where, extra={"bossdb_channel": summary})


def _open_cloudvol(
    ctx: SourceContext, meta: Mapping[str, Any], pixel_size_nm: float | None
) -> tuple[Volume, str]:
    """Read a public cloudvol channel as neuroglancer precomputed through tensorstore."""
    template = str(ctx.options.get("bucket_url", DEFAULT_BUCKET_URL))
    location = template.format(bucket=meta.get("bucket") or "bossdb-open-data").rstrip("/")
    location += "/" + str(meta["cv_path"]).strip("/")
    spec = kvstore_spec(
        location, endpoint=ctx.options.get("endpoint"), aws_region=ctx.options.get("aws_region")
    )
    store = Store(ctx, spec, ts_context(ctx))
    found = detect(store)
    if found is None or found[0] != "precomputed":
        raise SourceUnavailableError(
            ctx.uri,
            f"the channel says storage_type 'cloudvol' at {store.url}, but no "
            "neuroglancer precomputed 'info' was found there",
        )
    return open_pyramid(store, pixel_size_nm=pixel_size_nm, found=found), store.url


class _InternReader(BlockReader):
    """Regions of an ``intern.array`` (z, y, x), under the dataset's budget and rate limit."""

    def __init__(self, ctx: SourceContext, array: Any, chunks: tuple[int, int, int]) -> None:
        super().__init__(ctx.uri, tuple(array.shape), array.dtype, chunks, state=ctx.uri)
        self.ctx = ctx
        self.array = array

    def _read(self, region: Region) -> np.ndarray:
        nbytes = math.prod(s.stop - s.start for s in region) * self.dtype.itemsize
        self.ctx.budget.charge(nbytes, f"cutout {region}")
        self.ctx.limiter.acquire()
        try:
            return np.asarray(self.array[region])
        except Exception as exc:
            self.ctx.budget.refund(nbytes)
            raise SourceUnavailableError(
                self.ctx.uri, f"intern cutout {region} failed: {type(exc).__name__}: {exc}"
            ) from None


def _open_with_intern(
    ctx: SourceContext,
    client: HttpClient,
    base: str,
    names: tuple[str, str, str],
    meta: Mapping[str, Any],
    pixel_size_nm: float | None,
) -> tuple[Volume, str]:
    """Read a Boss-served channel through intern (lazy import; optional dependency)."""
    try:
        from intern import array as intern_array  # optional extra em5m[bossdb]
    except ImportError:
        raise UnsupportedSourceError(
            ctx.uri,
            f"channel storage_type is {meta.get('storage_type')!r}, not public "
            "precomputed ('cloudvol'), so it must be read through the Boss API with the intern "
            "package: pip install 'em5m[bossdb]'",
        ) from None
    experiment = client.get_json(base, what="get the experiment")
    frame_name = experiment.get("coord_frame")
    api = base.split("/v1/", 1)[0]
    frame = client.get_json(
        f"{api}/v1/coord/{quote(str(frame_name))}", what="get the coordinate frame"
    )
    levels = boss_levels(frame, experiment)
    level = choose_level(ctx, levels, pixel_size_nm)
    api_parts = urlsplit(api)
    config = {
        "protocol": api_parts.scheme,
        "host": api_parts.netloc,
        "token": ctx.token or PUBLIC_TOKEN,
    }
    uri = "bossdb://" + "/".join(names)
    try:
        array = intern_array(uri, resolution=level, boss_config=config)
    except Exception as exc:  # intern raises requests/HTTP errors of its own
        if isinstance(exc, SourceError):
            raise
        raise SourceUnavailableError(ctx.uri, f"intern could not open the channel: {exc}") from None
    reader = _InternReader(ctx, array, (16, 512, 512))
    metadata = {
        "format": "bossdb-intern",
        "dataset": str(level),
        "voxel_size_source": "boss coordinate frame (x/y halved per level)",
    }
    return volume_from_reader(reader, ("z", "y", "x"), levels, level, metadata), api
