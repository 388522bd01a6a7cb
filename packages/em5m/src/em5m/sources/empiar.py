"""EMPIAR entries: ``empiar://EMPIAR-<n>[/<path inside data/>]``.

EMPIAR serves whole files, so this connector downloads what it needs into a cache and opens it
locally:

1. entry metadata: ``GET <api>/EMPIAR-<n>/`` returns ``{"EMPIAR-<n>": {title, imagesets, ...}}``
   (kept in ``metadata["empiar"]``; the imagesets' pixel sizes are recorded as given, not used
   as the voxel size, since their unit is not part of the response);
2. files: the HTTPS listing ``<files>/<n>/data/<path>/`` (an Apache ``Index of`` page) is read,
   because the API's ``directory`` fields do not always match the file tree;
3. download: resumable (``Range``, ``.part`` file), size-checked against the server's length and
   checksum-checked when a SHA-256/MD5 is known (``options['sha256']``/``['md5']`` or a
   ``<file>.sha256``/``<file>.md5`` beside it), into ``<cache>/EMPIAR-<n>/data/<path>``;
4. open: MRC/TIFF/HDF5 through `em5m.open_volume`, DM3/DM4 with `em5m.sources.dm4`. A directory
   of 2D TIFF/PNG slices is downloaded whole and opened as a stack.

Cache: ``options['cache_dir']``, else ``$EM5M_HOME/cache/empiar``, else the platform cache
(``~/.cache/em5m/empiar``). API and file URLs are configurable (``options['api_url']``,
``options['files_url']``, ``$EM5M_EMPIAR_API``, ``$EM5M_EMPIAR_FILES``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from em5m.sources.base import (
    SourceContext,
    SourceNotFoundError,
    UnsupportedSourceError,
    finish_volume,
)
from em5m.sources.http import HttpClient, ListingEntry, list_directory
from em5m.volume import Volume

KIND = "empiar"
DEFAULT_API = "https://www.ebi.ac.uk/empiar/api/entry"
API_ENV = "EM5M_EMPIAR_API"
DEFAULT_FILES = "https://ftp.ebi.ac.uk/empiar/world_availability"
FILES_ENV = "EM5M_EMPIAR_FILES"
LICENCE = "CC0-1.0 (EMPIAR: all data is available under CC0; cite EMPIAR-<n> and its DOI)"

OPTIONS = {
    "api_url": f"entry API root (default {DEFAULT_API}, or ${API_ENV})",
    "files_url": f"file tree root (default {DEFAULT_FILES}, or ${FILES_ENV})",
    "cache_dir": "download cache (default $EM5M_HOME/cache/empiar or the platform cache)",
    "sha256": "expected SHA-256 of the file",
    "md5": "expected MD5 of the file",
    "dataset": "array path inside an HDF5 file",
    "max_files": "most slice files a directory may have (default 2000)",
}

#: File kinds this connector opens, by extension.
VOLUME_EXTENSIONS = (
    ".mrc",
    ".rec",
    ".st",
    ".ali",
    ".map",
    ".tif",
    ".tiff",
    ".h5",
    ".hdf5",
    ".hdf",
    ".dm4",
    ".dm3",
    ".png",
)
SLICE_EXTENSIONS = (".tif", ".tiff", ".png")
_ACCESSION = re.compile(r"(?i)^(?:EMPIAR-)?(\d{5,})$")


def parse_uri(uri: str) -> tuple[str, str, str]:
    """(accession ``EMPIAR-<n>``, number, path inside ``data/``) of an ``empiar://`` URI.

    Examples:
        >>> parse_uri("empiar://EMPIAR-10982/mito_benchmarks/c_elegans/c_elegans_em.tif")
        ('EMPIAR-10982', '10982', 'mito_benchmarks/c_elegans/c_elegans_em.tif')
        >>> parse_uri("empiar://10094")
        ('EMPIAR-10094', '10094', '')
    """
    rest = uri.split("://", 1)[-1].strip("/")
    head, _, path = rest.partition("/")
    m = _ACCESSION.match(head)
    if not m:
        raise UnsupportedSourceError(uri, "expected empiar://EMPIAR-<number>[/<path in data/>]")
    return f"EMPIAR-{m.group(1)}", m.group(1), path.strip("/")


def cache_root(ctx: SourceContext) -> Path:
    """Where downloads go: option, ``$EM5M_HOME/cache/empiar``, or the platform cache."""
    if ctx.options.get("cache_dir"):
        return Path(str(ctx.options["cache_dir"])).expanduser()
    if os.environ.get("EM5M_HOME"):
        return Path(os.environ["EM5M_HOME"]).expanduser() / "cache" / "empiar"
    import platformdirs

    return Path(platformdirs.user_cache_dir("em5m")) / "empiar"


def entry_metadata(client: HttpClient, api_url: str, accession: str) -> dict[str, Any]:
    """The entry's metadata from the EMPIAR API (the value under the accession key)."""
    data = client.get_json(f"{api_url.rstrip('/')}/{accession}/", what=f"get {accession} metadata")
    if isinstance(data, dict) and isinstance(data.get(accession), dict):
        return data[accession]
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), dict):
        return next(iter(data.values()))
    raise SourceNotFoundError(client.ctx.uri, f"the EMPIAR API has no entry {accession}")


def list_files(
    client: HttpClient, files_url: str, number: str, path: str = ""
) -> list[ListingEntry]:
    """The entries of ``data/<path>/`` of an EMPIAR entry (from the HTTPS listing)."""
    url = f"{files_url.rstrip('/')}/{number}/data/" + (f"{path.strip('/')}/" if path else "")
    return list_directory(client, url)


def _summary(meta: dict[str, Any], accession: str) -> dict[str, Any]:
    keep = (
        "title",
        "deposition_date",
        "release_date",
        "dataset_size",
        "citation",
        "cross_references",
    )
    out: dict[str, Any] = {"accession": accession, "doi": f"10.6019/{accession}"}
    out.update({k: meta[k] for k in keep if k in meta})
    out["imagesets"] = [
        {
            k: s.get(k)
            for k in (
                "name",
                "directory",
                "category",
                "data_format",
                "header_format",
                "voxel_type",
                "pixel_width",
                "pixel_height",
                "image_width",
                "image_height",
                "num_images_or_tilt_series",
            )
        }
        for s in meta.get("imagesets") or []
        if isinstance(s, dict)
    ]
    return out


def open_empiar(
    uri: str,
    *,
    pixel_size_nm: float | None = None,
    options: dict[str, Any] | None = None,
    token: str | None = None,
) -> Volume:
    """Download (resumably, into the cache) and open one EMPIAR file or slice directory.

    Args:
        uri: ``empiar://EMPIAR-<n>/<path in data/>``; a directory path works when it holds one
            volume file, or only 2D slices.
        pixel_size_nm: accepted for a uniform signature; EMPIAR files have one level.
        options: see `OPTIONS` and the common options (``max_bytes`` bounds the download).
        token: unused (EMPIAR is public).

    Raises:
        SourceNotFoundError: unknown entry or path (the message lists what is there).
        IntegrityError: the download has the wrong size or checksum.
        ByteBudgetExceeded: the file is larger than ``max_bytes``.
    """
    ctx = SourceContext.create(uri, KIND, options, token=token, extra_options=OPTIONS)
    accession, number, path = parse_uri(uri)
    client = HttpClient(ctx)
    api = str(ctx.option("api_url", DEFAULT_API, API_ENV))
    files = str(ctx.option("files_url", DEFAULT_FILES, FILES_ENV)).rstrip("/")
    if int(ctx.options.get("level", 0)) != 0:
        raise UnsupportedSourceError(uri, "EMPIAR files have a single level (level 0)")
    meta = entry_metadata(client, api, accession)
    parent, _, name = path.rpartition("/")
    listing: list[ListingEntry] = []
    if name:
        listing = list_files(client, files, number, parent)
        entry = next((e for e in listing if e.name == name), None)
        if entry is None:
            raise SourceNotFoundError(
                uri, f"no {name!r} in data/{parent}; there: {_names(listing)}"
            )
    else:
        entry = ListingEntry("", f"{files}/{number}/data/", True)
    target_dir = cache_root(ctx) / accession / "data"
    if entry.is_dir:
        local = _fetch_directory(ctx, client, files, number, path, target_dir / path)
    else:
        local = _fetch_file(ctx, client, entry, listing, target_dir / path)
    volume = _open_local(ctx, local)
    return finish_volume(
        volume,
        ctx,
        store=entry.url,
        licence=LICENCE,
        extra={"empiar": _summary(meta, accession), "local_path": str(local)},
    )


def _names(entries: list[ListingEntry]) -> str:
    shown = [e.name + ("/" if e.is_dir else "") for e in entries[:30]]
    return ", ".join(shown) + (" ..." if len(entries) > 30 else "") if shown else "(empty)"


def _checksums(
    ctx: SourceContext, client: HttpClient, entry: ListingEntry, listing: list[ListingEntry]
) -> dict[str, str | None]:
    """Expected digests: options, else ``<name>.sha256`` / ``<name>.md5`` beside the file."""
    out: dict[str, str | None] = {
        "sha256": ctx.options.get("sha256"),
        "md5": ctx.options.get("md5"),
    }
    if out["sha256"] or out["md5"]:
        return out
    for algo in ("sha256", "md5"):
        side = next((e for e in listing if e.name == f"{entry.name}.{algo}"), None)
        if side is not None:
            text = client.get(side.url, what=f"get {side.name}").body.decode("ascii", "replace")
            m = re.search(r"\b([0-9a-fA-F]{32,64})\b", text)
            if m:
                out[algo] = m.group(1)
                break
    return out


def _fetch_file(
    ctx: SourceContext,
    client: HttpClient,
    entry: ListingEntry,
    listing: list[ListingEntry],
    dest: Path,
) -> Path:
    if not entry.name.lower().endswith(VOLUME_EXTENSIONS):
        raise UnsupportedSourceError(
            ctx.uri,
            f"{entry.name!r} is not a file this connector opens ({', '.join(VOLUME_EXTENSIONS)})",
        )
    sums = _checksums(ctx, client, entry, listing)
    return client.download(entry.url, dest, sha256=sums["sha256"], md5=sums["md5"])


def _fetch_directory(
    ctx: SourceContext, client: HttpClient, files: str, number: str, path: str, dest: Path
) -> Path:
    """One volume file of the directory, or all its 2D slices (downloaded into ``dest``)."""
    listing = list_files(client, files, number, path)
    usable = [e for e in listing if not e.is_dir and e.name.lower().endswith(VOLUME_EXTENSIONS)]
    where = f"data/{path}" if path else "data/"
    if len(usable) == 1:
        return _fetch_file(ctx, client, usable[0], listing, dest / usable[0].name)
    slices = [e for e in usable if e.name.lower().endswith(SLICE_EXTENSIONS)]
    if usable and len(slices) == len(usable):
        limit = int(ctx.options.get("max_files", 2000))
        if len(slices) > limit:
            raise UnsupportedSourceError(
                ctx.uri, f"{where} has {len(slices)} slices, more than max_files={limit}"
            )
        for e in sorted(slices, key=lambda e: e.name):
            _fetch_file(ctx, client, e, listing, dest / e.name)
        return dest
    raise UnsupportedSourceError(
        ctx.uri,
        f"{where} is a directory; name one file in the URI "
        f"(empiar://<accession>/{path + '/' if path else ''}<file>). There: {_names(listing)}",
    )


def _open_local(ctx: SourceContext, local: Path) -> Volume:
    if local.suffix.lower() in (".dm4", ".dm3"):
        from em5m.sources.dm4 import open_dm

        return open_dm(local)
    from em5m.io import open_volume

    return open_volume(local, dataset=ctx.options.get("dataset"))
