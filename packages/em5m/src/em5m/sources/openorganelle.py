"""OpenOrganelle (Janelia COSEM/CellMap) and any other chunked store given by URL.

``openorganelle://<dataset-id>[/<path-in-container>]`` resolves inside the public bucket
``s3://janelia-cosem-datasets`` (anonymous S3). Without a path the EM pyramid is searched in
this order, the first that exists wins:

1. ``<id>/<id>.zarr/recon-1/em/fibsem-uint8`` (newer datasets, OME-NGFF 0.4 on Zarr v2);
2. ``<id>/<id>.n5/em/fibsem-uint8`` then ``.../em/fibsem-uint16`` (N5, COSEM + neuroglancer
   multiscale attributes);
3. ``<id>/neuroglancer/em/fibsem-uint8.precomputed`` (legacy neuroglancer precomputed).

With a path (``openorganelle://jrc_dauer-larva/em/tem-uint8``) the path is tried inside
``<id>.zarr``, then ``<id>.n5``, then relative to ``<id>/``.

Raw store URLs open the same way: ``s3://bucket/path``, ``https://bucket.s3.amazonaws.com/...``
(or any HTTP server), ``precomputed://https://...``, ``zarr://s3://...``.

The bucket root is configurable (``options['base_url']`` or ``$EM5M_OPENORGANELLE_URL``: an
``s3://``, ``http(s)://`` or local directory URL under which ``<id>/`` lives) and so is the S3
endpoint (``options['endpoint']``), so a copy of the layout on disk or on a 127.0.0.1 server runs
exactly this code.
"""

from __future__ import annotations

from typing import Any

from em5m.sources.base import (
    SourceAuthError,
    SourceContext,
    SourceNotFoundError,
    UnsupportedSourceError,
    finish_volume,
)
from em5m.sources.stores import (
    Store,
    describe_spec,
    detect,
    kvstore_spec,
    open_pyramid,
    ts_context,
)
from em5m.volume import Volume

KIND = "openorganelle"
BUCKET = "janelia-cosem-datasets"
DEFAULT_BASE_URL = f"s3://{BUCKET}"
BASE_URL_ENV = "EM5M_OPENORGANELLE_URL"
LICENCE = (
    "CC-BY-4.0 (OpenOrganelle data terms: cite the dataset DOIs and Heinrich et al., Nature "
    "2021, doi:10.1038/s41586-021-03977-3; link back to openorganelle.janelia.org)"
)

OPTIONS = {
    "base_url": f"bucket root holding <id>/ (default {DEFAULT_BASE_URL}, or ${BASE_URL_ENV})",
    "endpoint": "S3-compatible endpoint URL for s3:// locations (tests, mirrors)",
    "aws_region": "region of the S3 bucket (default: asked from the bucket)",
    "dataset": "path of the array or pyramid inside the container (like the URI path)",
}

#: Where the EM pyramid of ``<id>`` may live, tried in order (relative to ``<base>/<id>/``).
DEFAULT_CANDIDATES = (
    "{id}.zarr/recon-1/em/fibsem-uint8",
    "{id}.n5/em/fibsem-uint8",
    "{id}.n5/em/fibsem-uint16",
    "neuroglancer/em/fibsem-uint8.precomputed",
)

#: ``<format>://`` prefixes (neuroglancer style) accepted in front of a store URL.
FORMAT_PREFIXES = ("precomputed://", "zarr://", "zarr2://", "zarr3://", "n5://")


def candidates(dataset_id: str, path: str | None) -> list[str]:
    """Locations (relative to the bucket root) tried for ``openorganelle://<id>[/<path>]``.

    Examples:
        >>> candidates("jrc_hela-2", "em/fibsem-uint16")
        ['jrc_hela-2/jrc_hela-2.zarr/em/fibsem-uint16', 'jrc_hela-2/jrc_hela-2.n5/em/fibsem-uint16', 'jrc_hela-2/em/fibsem-uint16']
    """  # noqa: E501 - a doctest output line
    if path:
        path = path.strip("/")
        return [
            f"{dataset_id}/{dataset_id}.zarr/{path}",
            f"{dataset_id}/{dataset_id}.n5/{path}",
            f"{dataset_id}/{path}",
        ]
    return [f"{dataset_id}/" + c.format(id=dataset_id) for c in DEFAULT_CANDIDATES]


def open_openorganelle(
    uri: str,
    *,
    pixel_size_nm: float | None = None,
    options: dict[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Open ``openorganelle://<id>[/<path>]`` lazily (see the module docstring).

    Args:
        uri: the dataset URI.
        pixel_size_nm: open the level nearest this in-plane pixel size (else level 0).
        options: see `OPTIONS` and the common options in `em5m.sources.base`.
        token: unused (the bucket is public); accepted for a uniform signature.

    Raises:
        SourceNotFoundError: no pyramid at any candidate location.
        SourceUnavailableError: the bucket cannot be reached.

    Examples:
        >>> open_openorganelle("openorganelle://jrc_hela-2",
        ...                    options={"base_url": "/nonexistent"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        em5m.sources.base.SourceNotFoundError: openorganelle://jrc_hela-2: no EM pyramid found; ...
    """
    ctx = SourceContext.create(uri, KIND, options, token=token, extra_options=OPTIONS)
    rest = uri.split("://", 1)[1].strip("/")
    if not rest:
        raise UnsupportedSourceError(uri, "expected openorganelle://<dataset-id>[/<path>]")
    dataset_id, _, path = rest.partition("/")
    path = str(ctx.options.get("dataset") or path or "") or None
    base = str(ctx.option("base_url", DEFAULT_BASE_URL, BASE_URL_ENV)).rstrip("/")
    locations = [f"{base}/{c}" for c in candidates(dataset_id, path)]
    return _open_first(ctx, locations, pixel_size_nm, licence=LICENCE)


def open_store_url(
    uri: str,
    *,
    pixel_size_nm: float | None = None,
    options: dict[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Open a Zarr/OME-Zarr/N5/precomputed store at an ``s3://``/``http(s)://`` URL lazily.

    Args:
        uri: store URL, optionally behind a ``precomputed://``-style prefix.
        pixel_size_nm, options, token: as for `open_openorganelle` (``dataset`` appends a path;
            ``token`` is sent as an ``Authorization: Bearer`` header to HTTP servers).
    """
    location = uri
    for prefix in FORMAT_PREFIXES:
        if location.startswith(prefix):
            location = location[len(prefix) :]
    # Name the service when the bucket says which it is (provenance for the corpus report).
    kind = KIND if BUCKET in location else "bossdb" if "bossdb-open-data" in location else "store"
    ctx = SourceContext.create(uri, kind, options, token=token, extra_options=OPTIONS)
    if ctx.options.get("dataset"):
        location = location.rstrip("/") + "/" + str(ctx.options["dataset"]).strip("/")
    return _open_first(ctx, [location], pixel_size_nm, licence=LICENCE if kind == KIND else None)


def _open_first(
    ctx: SourceContext, locations: list[str], pixel_size_nm: float | None, licence: str | None
) -> Volume:
    """Open the first location that holds a pyramid; say what was tried when none does."""
    denied = []
    headers = {"Authorization": f"Bearer {ctx.token}"} if ctx.token else None
    for location in locations:
        try:
            spec = kvstore_spec(
                location,
                endpoint=ctx.options.get("endpoint"),
                aws_region=ctx.options.get("aws_region"),
                headers=headers,
            )
        except ValueError as exc:
            raise UnsupportedSourceError(ctx.uri, str(exc)) from None
        store = Store(ctx, spec, ts_context(ctx))
        try:
            found = detect(store)
        except SourceAuthError:
            # Anonymous S3 answers 403 for keys that do not exist in buckets that cannot be
            # listed; treat it as absent here, but say so if nothing else is found.
            denied.append(store.url)
            continue
        if found is None:
            continue
        volume = open_pyramid(store, pixel_size_nm=pixel_size_nm, found=found)
        return finish_volume(
            volume, ctx, store=store.url, licence=licence, extra={"container_format": found[0]}
        )
    tried = ", ".join(
        describe_spec(kvstore_spec(loc, endpoint=ctx.options.get("endpoint"))) for loc in locations
    )
    note = f"; access was denied at {', '.join(denied)}" if denied else ""
    raise SourceNotFoundError(
        ctx.uri,
        f"no EM pyramid found; looked for Zarr/N5/precomputed metadata at: {tried}"
        f"{note}. Name the array path explicitly (openorganelle://<id>/<path>)",
    )
