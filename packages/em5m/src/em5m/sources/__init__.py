"""Open EM datasets where they live: OpenOrganelle, WebKnossos, BossDB, EMPIAR, local files.

One call, `open_source`, turns a dataset URI into a lazy `em5m.Volume` (dask array in canonical
axis order, voxel size in nm, provenance in ``metadata``), whatever the service:

==============================================  ===============================================
URI                                             connector
==============================================  ===============================================
``openorganelle://<id>[/<path>]``               `em5m.sources.openorganelle` (anonymous S3)
``s3://...``, ``https://...`` (a store)         the same, for any Zarr/N5/precomputed URL
``webknossos://<org>/<dataset>[/<layer>]``      `em5m.sources.webknossos` (Zarr streaming)
``https://webknossos.org/datasets/...``         the same, from a dataset link
``bossdb://<coll>/<exp>/<chan>[/<res>]``        `em5m.sources.bossdb`
``empiar://EMPIAR-<n>[/<path>]``                `em5m.sources.empiar` (download + cache)
``file:///path``, ``/path``                     `em5m.sources.local` (`em5m.open_volume`)
==============================================  ===============================================

Every remote request is rate-limited, retried with exponential back-off, and counted against a
per-dataset byte budget. Failures raise `SourceError` subclasses (all `em5m.EMDataError`) naming
the URI and the reason, so a pipeline can record what failed and move on. See
docs/em5m/sources.md.

Examples:
    >>> from em5m.sources import open_source, SourceError
    >>> try:
    ...     open_source("nosuch://x")
    ... except SourceError as err:
    ...     print(type(err).__name__)
    UnsupportedSourceError
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from em5m.errors import EMDataError
from em5m.sources.base import (
    ByteBudgetExceeded,
    IntegrityError,
    Limits,
    SourceAuthError,
    SourceError,
    SourceNotFoundError,
    SourceUnavailableError,
    UnsupportedSourceError,
    pick_level,
    redact,
)
from em5m.volume import Volume

__all__ = [
    "SCHEMES",
    "ByteBudgetExceeded",
    "IntegrityError",
    "Limits",
    "SourceAuthError",
    "SourceError",
    "SourceNotFoundError",
    "SourceUnavailableError",
    "UnsupportedSourceError",
    "connector_for",
    "error_record",
    "open_source",
    "pick_level",
]

Opener = Callable[..., Volume]

#: URI scheme -> "module:function" of its connector.
SCHEMES: dict[str, str] = {
    "openorganelle": "openorganelle:open_openorganelle",
    "webknossos": "webknossos:open_webknossos",
    "wk": "webknossos:open_webknossos",
    "bossdb": "bossdb:open_bossdb",
    "empiar": "empiar:open_empiar",
    "s3": "openorganelle:open_store_url",
    "precomputed": "openorganelle:open_store_url",
    "zarr": "openorganelle:open_store_url",
    "zarr2": "openorganelle:open_store_url",
    "zarr3": "openorganelle:open_store_url",
    "n5": "openorganelle:open_store_url",
    "file": "local:open_local",
}


def connector_for(uri: str | os.PathLike[str]) -> Opener:
    """The connector function that opens ``uri`` (chosen by scheme, then by content).

    ``http(s)://`` URLs go to WebKnossos when they are dataset links (``.../datasets/...``),
    else they are read as a Zarr/N5/precomputed store. A local directory holding
    ``datasource-properties.json`` is a WebKnossos dataset; other local paths go to
    `em5m.open_volume`. ``<format>://file://...`` prefixes stay local.

    Raises:
        UnsupportedSourceError: unknown scheme.
    """
    import importlib

    text = os.fspath(uri)
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme in ("http", "https"):
        from em5m.sources.webknossos import is_dataset_url

        target = "webknossos:open_webknossos" if is_dataset_url(text) else SCHEMES["s3"]
    elif scheme in ("precomputed", "zarr", "zarr2", "zarr3", "n5") and (
        rest.startswith("file://") or "://" not in rest
    ):
        target = SCHEMES["file"]  # a local store behind a format prefix: em5m.open_volume
    elif scheme in SCHEMES:
        target = SCHEMES[scheme]
    elif not sep:
        from em5m.sources.webknossos import is_local_dataset

        target = "webknossos:open_webknossos" if is_local_dataset(text) else SCHEMES["file"]
    else:
        known = ", ".join(sorted({*SCHEMES, "http", "https"}))
        raise UnsupportedSourceError(text, f"unknown URI scheme {scheme!r}; known: {known}")
    if target == SCHEMES["file"] and scheme == "file":
        from em5m.sources.webknossos import is_local_dataset

        if is_local_dataset(text):
            target = "webknossos:open_webknossos"
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(f"em5m.sources.{module}"), func)


def open_source(
    uri: str | os.PathLike[str],
    *,
    pixel_size_nm: float | None = None,
    options: Mapping[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Open a dataset from any supported source as a lazy `Volume`.

    Args:
        uri: dataset URI (see the table in this module's docstring).
        pixel_size_nm: open the multiscale level whose in-plane pixel size is nearest this
            (``options['level']`` wins; neither: level 0, full resolution).
        options: connector options (the catalog entry's ``options:``). Common to all:
            ``level``, ``retries``, ``backoff_s``, ``max_backoff_s``, ``rate_limit``
            (requests/s), ``max_bytes`` (byte budget), ``timeout_s``, ``token_env``; others per
            connector (``base_url``, ``endpoint``, ``layer``, ``server``, ``api_url``,
            ``cache_dir``, ...). Unknown names raise.
        token: access token (else ``$<token_env>`` or the service's variable, e.g. WK_TOKEN).

    Returns:
        A `Volume` whose ``metadata`` holds ``source`` (connector kind), ``uri``, ``store``,
        ``level``, ``level_voxel_size_nm``, ``levels`` (path, shape, voxel size of each) and
        ``licence`` (a hint from the service, or None), plus format facts.

    Raises:
        SourceError: subclasses `SourceNotFoundError`, `SourceAuthError`,
            `SourceUnavailableError`, `ByteBudgetExceeded`, `UnsupportedSourceError`,
            `IntegrityError`; `em5m.EMDataError` for bad data. Reading blocks of the returned
            volume can raise them too (a remote chunk fails, the byte budget runs out).
    """
    opener = connector_for(uri)
    return opener(
        os.fspath(uri), pixel_size_nm=pixel_size_nm, options=dict(options or {}), token=token
    )


def error_record(err: BaseException, uri: str | None = None) -> dict[str, str]:
    """One row for a curation report: which dataset failed, with which error, and why.

    Args:
        err: the exception `open_source` (or a block read) raised.
        uri: the dataset URI when ``err`` does not carry one.

    Examples:
        >>> error_record(SourceAuthError("webknossos://org/ds", "HTTP 401; token needed"))
        {'uri': 'webknossos://org/ds', 'error': 'SourceAuthError', 'reason': 'HTTP 401; token needed'}
    """  # noqa: E501 - a doctest output line
    if isinstance(err, EMDataError):
        return {"uri": err.path, "error": type(err).__name__, "reason": err.problem}
    return {
        "uri": redact(uri or "<unknown>"),
        "error": type(err).__name__,
        "reason": redact(str(err) or repr(err)),
    }
