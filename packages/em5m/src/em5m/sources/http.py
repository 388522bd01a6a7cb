"""HTTP(S) for the connectors: JSON/metadata requests, directory listings, resumable downloads.

Standard library only (``urllib``), so the core environment needs nothing extra. Every request
goes through the dataset's `SourceContext`: rate limit, bounded retries with back-off on
connection errors and HTTP 408/429/5xx, byte budget. HTTP errors become named errors:
404 `SourceNotFoundError`, 401/403 `SourceAuthError`, the rest `SourceUnavailableError`.

Downloads resume: bytes land in ``<dest>.part``; a dropped connection is retried with
``Range: bytes=<have>-`` and the server's ``206 Partial Content`` is appended. The finished file
is checked (size from ``Content-Length``/``Content-Range``, optional SHA-256/MD5) before it is
renamed to ``dest``, so ``dest`` only ever exists complete and verified.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from em5m.sources.base import (
    ByteBudgetExceeded,
    IntegrityError,
    SourceAuthError,
    SourceContext,
    SourceNotFoundError,
    SourceUnavailableError,
    TransientError,
    redact,
)

#: Responses read into memory (JSON, index pages) larger than this are refused.
MAX_BODY_BYTES = 64 * 2**20
#: Bytes per read while streaming a download.
CHUNK_BYTES = 1 * 2**20
USER_AGENT = "em5m-sources (EM-SSL; +https://github.com/pku-maleilab/EM-SSL-project)"

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_NETWORK_ERRORS = (
    ConnectionError,
    TimeoutError,
    socket.timeout,
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
)


@dataclass(frozen=True)
class Response:
    """A finished HTTP response: status, lower-case headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class HttpClient:
    """Requests for one dataset, under its context's limits.

    Args:
        ctx: the dataset's context (limits, rate limiter, byte budget).
        headers: sent with every request (e.g. an auth header).

    Examples:
        >>> from em5m.sources.base import SourceContext
        >>> client = HttpClient(SourceContext.create("empiar://EMPIAR-10982", "empiar", {}))
        >>> client.ctx.limits.attempts
        4
    """

    def __init__(self, ctx: SourceContext, headers: Mapping[str, str] | None = None) -> None:
        self.ctx = ctx
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}

    # -- plain requests ------------------------------------------------------------------

    def get(
        self, url: str, *, headers: Mapping[str, str] | None = None, what: str | None = None
    ) -> Response:
        """GET ``url`` into memory (at most `MAX_BODY_BYTES`), with retries.

        Raises:
            SourceNotFoundError, SourceAuthError, SourceUnavailableError, ByteBudgetExceeded.
        """
        what = what or f"GET {url}"

        def once() -> Response:
            with self._open(url, headers, what) as resp:
                head = {k.lower(): v for k, v in resp.headers.items()}
                length = _int(head.get("content-length"))
                if length is not None and length > MAX_BODY_BYTES:
                    raise SourceUnavailableError(
                        self.ctx.uri, f"{what}: response of {length} bytes is too large"
                    )
                if length is not None:
                    self.ctx.budget.charge(length, what)
                try:
                    body = resp.read(MAX_BODY_BYTES + 1)
                except _NETWORK_ERRORS as exc:
                    if length is not None:
                        self.ctx.budget.refund(length)
                    raise TransientError(f"connection lost while reading: {exc!r}") from None
                if length is None:
                    self.ctx.budget.charge(len(body), what)
                elif len(body) < length:
                    self.ctx.budget.refund(length)
                    raise TransientError(f"connection closed after {len(body)} of {length} bytes")
                return Response(resp.status, head, body)

        return self.ctx.retry(once, what)

    def get_json(
        self, url: str, *, headers: Mapping[str, str] | None = None, what: str | None = None
    ) -> Any:
        """GET and parse JSON; a body that is not JSON raises `SourceUnavailableError`."""
        what = what or f"GET {url}"
        resp = self.get(url, headers=headers, what=what)
        try:
            return json.loads(resp.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SourceUnavailableError(
                self.ctx.uri, f"{what}: response is not JSON ({exc}); is the API URL right?"
            ) from None

    def exists(self, url: str, *, headers: Mapping[str, str] | None = None) -> bool:
        """True if a GET of ``url`` succeeds, False on 404 (other errors raise)."""
        try:
            self.get(url, headers=headers)
        except SourceNotFoundError:
            return False
        return True

    # -- downloads -------------------------------------------------------------------------

    def download(
        self,
        url: str,
        dest: str | os.PathLike[str],
        *,
        size: int | None = None,
        sha256: str | None = None,
        md5: str | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Path:
        """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with Range requests.

        Args:
            url: the file.
            dest: final path; its parent is created. An existing ``dest`` that passes the
                checks is returned without a request (the cache).
            size: expected size in bytes (else taken from the response headers).
            sha256, md5: expected hex digests; checked when given.
            progress: called as ``progress(bytes_so_far, total_or_None)``.

        Returns:
            ``dest`` as a `Path`, complete and verified.

        Raises:
            IntegrityError: wrong size or checksum (the bad ``.part`` is deleted).
            ByteBudgetExceeded: the file does not fit in the dataset's byte budget.
            SourceUnavailableError: still failing after all retries.
        """
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        if dest.exists():
            try:
                verify_file(self.ctx.uri, dest, size=size, sha256=sha256, md5=md5)
                return dest
            except IntegrityError:
                dest.unlink()  # a corrupt cache entry is fetched again
        dest.parent.mkdir(parents=True, exist_ok=True)
        total: list[int | None] = [size]
        what = f"download {url}"

        def once() -> None:
            have = part.stat().st_size if part.exists() else 0
            if total[0] is not None and have > total[0]:
                part.unlink()  # longer than the file: not ours, start over
                have = 0
            if total[0] is not None and have == total[0]:
                return
            headers = {"Range": f"bytes={have}-"} if have else {}
            resp_cm = self._open(url, headers, what, range_end_ok=bool(have))
            if resp_cm is None:  # HTTP 416 for bytes past the end: the .part is complete
                total[0] = total[0] or have
                return
            with resp_cm as resp:
                head = {k.lower(): v for k, v in resp.headers.items()}
                length = _int(head.get("content-length"))
                if have and resp.status == 206:
                    start, full = _content_range(head.get("content-range"))
                    if start != have:
                        raise IntegrityError(
                            self.ctx.uri,
                            f"{what}: asked for bytes from {have}, server sent from {start}",
                        )
                    mode = "ab"
                else:  # 200: the server ignored Range (or nothing to resume): from the start
                    have, full, mode = 0, length, "wb"
                if full is None and length is not None:
                    full = have + length
                if total[0] is None:
                    total[0] = full
                elif full is not None and full != total[0]:
                    raise IntegrityError(
                        self.ctx.uri, f"{what}: server says {full} bytes, expected {total[0]}"
                    )
                remaining = self.ctx.budget.remaining
                if remaining is not None and full is not None and full - have > remaining:
                    # Refuse before the first byte rather than fail half-way through.
                    raise ByteBudgetExceeded(
                        self.ctx.uri,
                        f"{what}: {full - have} bytes to fetch exceed the "
                        f"remaining byte budget of {remaining} bytes (limit "
                        f"{self.ctx.budget.limit}); raise options['max_bytes']",
                    )
                got = have
                with open(part, mode) as fh:
                    while True:
                        try:
                            buf = resp.read(CHUNK_BYTES)
                        except _NETWORK_ERRORS as exc:
                            raise TransientError(
                                f"connection lost after {got} bytes ({exc!r}); will resume"
                            ) from None
                        if not buf:
                            break
                        self.ctx.budget.charge(len(buf), what)
                        fh.write(buf)
                        got += len(buf)
                        if progress is not None:
                            progress(got, total[0])
                if total[0] is not None and got < total[0]:
                    raise TransientError(
                        f"connection closed after {got} of {total[0]} bytes; will resume"
                    )

        self.ctx.retry(once, what)
        verify_file(self.ctx.uri, part, size=total[0], sha256=sha256, md5=md5, delete=True)
        os.replace(part, dest)
        return dest

    # -- internals -------------------------------------------------------------------------

    def _open(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        what: str,
        *,
        range_end_ok: bool = False,
    ) -> Any:
        """Open ``url``; map failures to `TransientError` (retry) or named source errors.

        With ``range_end_ok``, HTTP 416 (range starts past the end) returns None.
        """
        req = urllib.request.Request(url, headers={**self.headers, **(headers or {})})
        try:
            return urllib.request.urlopen(req, timeout=self.ctx.limits.timeout_s)
        except urllib.error.HTTPError as exc:
            status, reason = exc.code, exc.reason
            retry_after = _int(exc.headers.get("Retry-After")) if exc.headers else None
            exc.close()
            if status == 416 and range_end_ok:
                return None
            if status in _TRANSIENT_STATUS:
                raise TransientError(f"HTTP {status} {reason}", retry_after) from None
            if status == 404:
                raise SourceNotFoundError(self.ctx.uri, f"{what}: not found (HTTP 404)") from None
            if status in (401, 403):
                raise SourceAuthError(
                    self.ctx.uri,
                    f"{what}: access denied (HTTP {status} {reason}); this "
                    "dataset may need a token (token=..., options['token_env'] or the "
                    "service's token environment variable)",
                ) from None
            raise SourceUnavailableError(self.ctx.uri, f"{what}: HTTP {status} {reason}") from None
        except urllib.error.URLError as exc:
            raise TransientError(f"cannot connect: {exc.reason}") from None
        except _NETWORK_ERRORS as exc:
            raise TransientError(f"network error: {exc!r}") from None


def verify_file(
    uri: str,
    path: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    delete: bool = False,
) -> None:
    """Raise `IntegrityError` if ``path`` has the wrong size or digest.

    Args:
        uri: named in the error.
        path: the file.
        size, sha256, md5: expectations; None skips that check.
        delete: remove the file when it fails (a bad partial download must not be resumed).
    """
    problem = None
    actual = path.stat().st_size
    if size is not None and actual != size:
        problem = f"{path.name} has {actual} bytes, expected {size}"
    else:
        for name, expected in (("sha256", sha256), ("md5", md5)):
            if expected:
                digest = file_digest(path, name)
                if digest.lower() != expected.strip().lower():
                    problem = f"{path.name} {name} is {digest}, expected {expected}"
                    break
    if problem:
        if delete:
            path.unlink(missing_ok=True)
        raise IntegrityError(uri, f"downloaded file is corrupt: {problem}")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a"
        >>> _ = p.write_bytes(b"abc")
        >>> file_digest(p, "md5")
        '900150983cd24fb0d6963f7d28e17f72'
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for buf in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(buf)
    return h.hexdigest()


# -- directory listings -----------------------------------------------------------------------


@dataclass(frozen=True)
class ListingEntry:
    """One row of an HTTP directory listing.

    Args:
        name: file or directory name (no trailing slash).
        url: absolute URL.
        is_dir: a sub-directory.
        size: size text as shown by the server (``"1.2G"``, ``"-"``), a hint only.
    """

    name: str
    url: str
    is_dir: bool
    size: str | None = None


class _IndexParser(HTMLParser):
    """Collects the links of an Apache/nginx ``Index of`` page and the text after each."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[list[str]] = []  # [href, text after the link]
        self._in_a = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href is not None:
                self.links.append([href, ""])
                self._in_a = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_a = False

    def handle_data(self, data: str) -> None:
        if self.links and not self._in_a:
            self.links[-1][1] += " " + data  # cells of a table row are separate fields


_SIZE = re.compile(r"(\d+(?:\.\d+)?[KMGTP]?|-)\s*$")


def parse_index(html: str, base_url: str) -> list[ListingEntry]:
    """Entries of an Apache-style ``Index of /...`` page (links inside ``base_url`` only).

    Sort links (``?C=N;O=D``), the parent directory and links leaving the directory are
    skipped.

    Examples:
        >>> page = ('<a href="?C=N;O=D">Name</a><a href="/empiar/">Parent Directory</a>'
        ...         '<a href="a.tif">a.tif</a> 2021-01-01 10:00  1.2G'
        ...         '<a href="sub/">sub/</a> 2021-01-01 10:00  -')
        >>> [(e.name, e.is_dir, e.size) for e in parse_index(page, "https://h/x/data/")]
        [('a.tif', False, '1.2G'), ('sub', True, '-')]
    """
    parser = _IndexParser()
    parser.feed(html)
    base = base_url if base_url.endswith("/") else base_url + "/"
    out, seen = [], set()
    for href, after in parser.links:
        if not href or href.startswith(("?", "#", "mailto:")):
            continue
        url = urljoin(base, href)
        if not url.startswith(base) or url == base:
            continue  # parent directory, absolute links elsewhere
        rel = unquote(urlparse(url).path[len(urlparse(base).path) :])
        is_dir = rel.endswith("/")
        name = rel.rstrip("/")
        if not name or "/" in name or name in seen:
            continue
        seen.add(name)
        text = re.sub(r"\s+", " ", after).strip()
        m = _SIZE.search(text)
        out.append(ListingEntry(name, url, is_dir, m.group(1) if m else None))
    return out


def list_directory(client: HttpClient, url: str) -> list[ListingEntry]:
    """GET an HTTP directory listing and parse it (see `parse_index`)."""
    url = url if url.endswith("/") else url + "/"
    resp = client.get(url, what=f"list {redact(url)}")
    return parse_index(resp.body.decode("utf-8", "replace"), url)


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip()) if text is not None else None
    except ValueError:
        return None


def _content_range(text: str | None) -> tuple[int | None, int | None]:
    """(first byte, full size) of ``bytes 100-199/1000``; None where absent or ``*``."""
    m = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", text or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(2)) if m.group(2) != "*" else None)
