"""Where reference datasets are found, and fetching the ones that are missing.

Order of places, per dataset:

1. ``$EMSSL_DATA/<folder>`` (or, if ``EMSSL_DATA`` is unset, ``<repo root>/../shared/data`` when
   running from a source checkout that has one) when every file the dataset needs is there;
2. the download cache ``$EM5M_HOME/datasets/<folder>`` (else the platform user cache,
   e.g. ``~/.cache/em5m/datasets/<folder>``) when it is complete;
3. otherwise the missing files are downloaded into the cache with pooch, one file at a time from
   ``source.base_url + relative_path``, each checked against the sha256 pinned in
   ``checksums.json``. A file whose hash does not match is deleted, never used.

When none of that works (offline, no per-file URL, a changed upstream file) a
`DatasetUnavailableError` says which files are missing and where to put them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import platformdirs

from em5m.datasets.base import DatasetInfo
from em5m.errors import DatasetUnavailableError, EMDataError

ENV_DATA = "EMSSL_DATA"
ENV_HOME = "EM5M_HOME"

_SHOWN = 5  # how many missing file names an error message lists


def _checkout_data() -> Path | None:
    """``<repo root>/../shared/data`` when running from a source checkout that has it."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "packages" / "em5m").is_dir() and (parent / "pyproject.toml").is_file():
            candidate = parent.parent / "shared" / "data"
            return candidate if candidate.is_dir() else None
    return None


def data_root() -> Path | None:
    """The shared data folder: ``$EMSSL_DATA``, else the checkout fallback, else None.

    ``EMSSL_DATA`` is returned even if it does not exist, so errors can name it.

    Examples:
        >>> data_root()  # doctest: +SKIP
        PosixPath('/work/shared/data')
    """
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    return _checkout_data()


def cache_root() -> Path:
    """Where downloaded datasets go: ``$EM5M_HOME/datasets`` or the user cache dir."""
    home = os.environ.get(ENV_HOME)
    base = Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("em5m"))
    return base / "datasets"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing_files(folder: Path, files: Iterable[str]) -> list[str]:
    """The relative paths in ``files`` that are not regular files under ``folder``."""
    return [rel for rel in files if not (folder / rel).is_file()]


def verify_files(info: DatasetInfo, folder: Path) -> None:
    """Check every file of ``info`` under ``folder`` against its pinned sha256.

    Raises:
        EMDataError: naming the first file whose content differs.
    """
    for rel, expected in info.files.items():
        got = sha256_file(folder / rel)
        if got != expected:
            raise EMDataError(
                folder / rel,
                f"sha256 {got} differs from the pinned {expected} of dataset {info.name!r}; "
                "the file was modified or is a different release",
            )


def locate(info: DatasetInfo, *, download: bool = True) -> Path:
    """The folder holding every file of ``info``, downloading missing files if possible.

    Args:
        info: the registry entry.
        download: allow downloading into the cache (False: only look on disk).

    Returns:
        ``$EMSSL_DATA/<folder>`` or the cache folder.

    Raises:
        DatasetUnavailableError: not on disk and not downloadable (no URL, offline, an HTTP
            error, or a sha256 mismatch).
    """
    root = data_root()
    shared = root / info.folder if root is not None else None
    if shared is not None and shared.is_dir() and not missing_files(shared, info.files):
        return shared

    cache = cache_root() / info.folder
    missing = missing_files(cache, info.files)
    if not missing and (info.files or cache.is_dir()):
        return cache

    local_missing = missing_files(shared, info.files) if shared is not None else list(info.files)
    if shared is None:
        why = f"{ENV_DATA} is not set and no ../shared/data is beside the checkout"
    elif not shared.is_dir():
        why = f"{shared} does not exist"
    else:
        why = f"{shared} lacks {_some(local_missing)}"
    if not download:
        raise _unavailable(info, f"{why}; downloading is disabled")
    if info.source.base_url is None:
        raise _unavailable(info, f"{why}; there is no per-file download URL for it")
    _download(info, cache, missing, why)
    return cache


def _download(info: DatasetInfo, cache: Path, missing: list[str], why: str) -> None:
    import pooch  # imported here: only needed when something is actually fetched
    import requests

    assert info.source.base_url is not None
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)  # one INFO line per file is noise for 300 files
    try:
        for n, rel in enumerate(missing):
            url = info.source.base_url + quote(rel)
            try:
                pooch.retrieve(
                    url,
                    known_hash=f"sha256:{info.files[rel]}",
                    fname=rel,
                    path=cache,
                    progressbar=False,
                )
            except ValueError as err:  # pooch's hash mismatch; it already deleted the download
                raise DatasetUnavailableError(
                    url,
                    f"sha256 of the download does not match the pinned hash for "
                    f"{info.name}/{rel} ({err}). The upstream file changed or the transfer is "
                    f"corrupt; nothing was kept. Put the expected files at {_target(info)}.",
                ) from None
            except (requests.RequestException, OSError) as err:
                raise _unavailable(
                    info,
                    f"{why}; downloading {url} failed ({type(err).__name__}: {err}); "
                    f"{_some(missing[n:])} still missing from the cache {cache}",
                ) from None
    finally:
        logger.setLevel(level)


def _some(rels: list[str]) -> str:
    shown = ", ".join(rels[:_SHOWN])
    more = f" and {len(rels) - _SHOWN} more" if len(rels) > _SHOWN else ""
    return f"{len(rels)} file(s) ({shown}{more})"


def _target(info: DatasetInfo) -> str:
    root = data_root()
    return f"{root / info.folder}" if root is not None else f"${ENV_DATA}/{info.folder}"


def _unavailable(info: DatasetInfo, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        _target(info),
        f"dataset {info.name!r} is not available: {reason}. Put its files here "
        f"(layout: {info.layout}) and point {ENV_DATA} at the parent folder; "
        f"origin: {info.source.page}",
    )


@functools.cache
def _checksums() -> dict[str, dict[str, str]]:
    text = resources.files("em5m.datasets").joinpath("checksums.json").read_text("utf-8")
    table = json.loads(text)
    return {k: v for k, v in table.items() if not k.startswith("_")}


def pinned_files(dataset: str) -> dict[str, str]:
    """Relative path -> sha256 of the files a built-in dataset reads (from ``checksums.json``).

    The hashes were computed from the copies in the shared data folder; they pin *files*, not
    upstream archives (whose hashes are unknown here).
    """
    return dict(_checksums()[dataset])
