"""The weights cache: where files live, hash-checked resumable downloads, offline messages.

Files are cached under ``$EMDINO_HOME/weights/`` (default: the platform's user cache folder,
e.g. ``~/.cache/emdino/weights``). A download is written to ``<file>.part`` and resumed from
there with an HTTP ``Range`` request when it was interrupted; it is renamed into place only after
its size and sha256 (when the registry knows them) are checked. With ``EMDINO_OFFLINE=1``, or
when the download fails, the error names the file and the path to put it at.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from emdino.errors import ChecksumError, DownloadError, WeightsNotFoundError
from emdino.models.registry import PretrainedCfg
from emdino.weights.files import sha256_file

#: Bytes per read while downloading.
CHUNK = 1 << 20


def cache_dir() -> Path:
    """Root of emdino's cache: ``$EMDINO_HOME``, else the platform's user cache for emdino."""
    env = os.environ.get("EMDINO_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("emdino", appauthor=False))


def weights_dir() -> Path:
    """Folder of the cached weight files (``<cache_dir>/weights``)."""
    return cache_dir() / "weights"


def offline() -> bool:
    """True when downloads are disabled (``EMDINO_OFFLINE`` set to 1/true/yes)."""
    return os.environ.get("EMDINO_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def cached_path(cfg: PretrainedCfg) -> Path:
    """Where the file of ``cfg`` lives (or will live) in the cache.

    Bundled weights (``cfg.bundled``) ship inside the package, in ``emdino/models/weights/``.
    """
    if not cfg.filename:
        raise ValueError(f"{cfg.name} has no weights file (random initialisation)")
    if cfg.bundled:
        return Path(str(resources.files("emdino.models").joinpath("weights", cfg.filename)))
    return weights_dir() / cfg.filename


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(
    path: Path, sha256: str | None, size: int | None = None, *, remember: bool = True
) -> str:
    """Check a file's size and sha256; return its sha256.

    The digest is remembered in ``<file>.sha256`` together with the file's size and mtime, so a
    multi-GB file is hashed once, not at every load (``remember=False``: no stamp, e.g. for the
    small weights bundled inside the installed package, whose folder may be read-only).

    Raises:
        ChecksumError: size or digest differ from the expected ones (the message says which file,
            what was expected and what was found).
    """
    st = path.stat()
    if size is not None and st.st_size != size:
        raise ChecksumError(
            f"{path}: size {st.st_size} bytes, expected {size} (truncated or a different file); "
            "delete it and download it again"
        )
    key = f"{st.st_size} {st.st_mtime_ns}"
    digest = None
    with contextlib.suppress(OSError, ValueError):
        stored_digest, stored_key = _stamp(path).read_text().strip().split(" ", 1)
        if stored_key == key:
            digest = stored_digest
    if digest is None:
        digest = sha256_file(path)
        if remember:
            with contextlib.suppress(OSError):
                _stamp(path).write_text(f"{digest} {key}\n")
    if sha256 is not None and digest.lower() != sha256.lower():
        raise ChecksumError(
            f"{path}: sha256 {digest} does not match the expected {sha256.lower()}; "
            "the file is corrupt or not the published one: delete it and download it again"
        )
    return digest


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` and checking the result.

    Args:
        url: http(s) or file URL.
        dest: final path; the data goes to ``<dest>.part`` first.
        sha256: expected digest (checked when given).
        size: expected size in bytes (checked when given).
        progress: show a tqdm bar on stderr.
        timeout: seconds to wait for the server at connect and between reads.

    Returns:
        ``dest``.

    Raises:
        DownloadError: network/HTTP failure (the ``.part`` file is kept for a resume) or size
            mismatch.
        ChecksumError: the complete file has another sha256 (the ``.part`` file is deleted).

    Examples:
        >>> download("http://127.0.0.1:8000/w.pt", "/tmp/w.pt")  # doctest: +SKIP
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        if dest.is_file():  # another process finished it while we waited
            verify(dest, sha256, size)
            return dest
        return _download_locked(url, dest, sha256, size, progress, timeout)


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """Exclusive lock on ``<dest>.lock`` so two processes never write one ``.part`` file."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent downloads are not guarded
        yield
        return
    with open(dest.with_name(dest.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_locked(
    url: str, dest: Path, sha256: str | None, size: int | None, progress: bool, timeout: float
) -> Path:
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # not a prefix of the expected file
        part.unlink()
        have = 0
    if not (size is not None and have == size):
        have = _fetch(url, part, have, progress=progress, timeout=timeout)
    if size is not None and have != size:
        raise DownloadError(f"{url}: got {have} bytes, expected {size}; run again to resume")
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        part.unlink()
        raise ChecksumError(
            f"{url}: downloaded file has sha256 {digest.hexdigest()}, expected {sha256.lower()}; "
            "deleted it (corrupted transfer or a changed file on the server)"
        )
    os.replace(part, dest)
    st = dest.stat()
    with contextlib.suppress(OSError):
        _stamp(dest).write_text(f"{digest.hexdigest()} {st.st_size} {st.st_mtime_ns}\n")
    return dest


def _fetch(url: str, part: Path, have: int, *, progress: bool, timeout: float) -> int:
    """Stream ``url`` into ``part`` from byte ``have`` on; return the final size of ``part``."""
    from tqdm.auto import tqdm

    from emdino import __version__

    headers = {"User-Agent": f"emdino/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - URLs come from the registry
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part is complete
            return have
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    with resp:
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DownloadError(f"{url}: server resumed at the wrong offset")
            mode = "ab"
        else:  # no Range support: start over
            have, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")],
            disable=not progress,
            leave=False,
        )
        try:
            with open(part, mode) as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    have += len(block)
                    bar.update(len(block))
        except (OSError, urllib.error.URLError, http.client.HTTPException) as e:
            raise DownloadError(
                f"{url}: transfer interrupted after {have} bytes ({e}); run again to resume"
            ) from None
        finally:
            bar.close()
    if total is not None and have < total:
        raise DownloadError(
            f"{url}: transfer ended after {have} of {total} bytes; run again to resume"
        )
    return have


def fetch(cfg: PretrainedCfg, *, download_missing: bool = True, progress: bool = True) -> Path:
    """The local file of a pretrained configuration, downloading it when needed and allowed.

    Args:
        cfg: the configuration (``emdino.models.get_pretrained(name)``).
        download_missing: download when not cached (and not `offline`).
        progress: show a progress bar while downloading.

    Raises:
        ValueError: ``cfg`` has no file (a ``.random`` configuration).
        WeightsNotFoundError: not cached and not downloadable; says what to put where.
        ChecksumError: the cached or downloaded file has the wrong size or digest.
    """
    path = cached_path(cfg)
    if path.is_file():
        verify(path, cfg.sha256, cfg.size, remember=not cfg.bundled)
        return path
    if cfg.bundled:
        raise WeightsNotFoundError(
            f"{cfg.name}: the bundled weights file {path} is missing from this installation; "
            "reinstall emdino"
        )
    where = f"put {cfg.filename} at {path} (or set EMDINO_HOME to a folder whose weights/ holds it)"
    if cfg.url is None:
        raise WeightsNotFoundError(
            f"{cfg.name}: weights are not in the cache and have no download URL; "
            f"get {cfg.filename} from {cfg.source or 'its publisher'} and {where}"
        )
    if offline() or not download_missing:
        why = "EMDINO_OFFLINE is set" if offline() else "downloads are disabled"
        raise WeightsNotFoundError(
            f"{cfg.name}: weights are not in the cache and {why}; download {cfg.url} and {where}"
        )
    try:
        return download(cfg.url, path, sha256=cfg.sha256, size=cfg.size, progress=progress)
    except DownloadError as e:
        raise WeightsNotFoundError(
            f"{cfg.name}: weights are not in the cache and the download failed ({e}); "
            f"download {cfg.url} yourself and {where}"
        ) from None
