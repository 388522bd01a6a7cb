"""What every source connector shares: errors, options, retries, rate limit, byte budget, levels.

A connector opens one dataset per call. `SourceContext` carries the state of that one dataset:
the retry policy, a rate limiter (requests per second), a byte budget (bytes per dataset) and the
access token. Every remote request of the dataset, metadata and pixel reads alike, goes through
it, so one dataset can neither hammer a service nor read more than it was allowed to.

Errors are `em5m.EMDataError` subclasses naming the URI and the reason, so a curation pipeline
can catch them per dataset, write "what failed and why" into its report and go on with the next.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from em5m.errors import EMDataError, InvalidVolumeError
from em5m.volume import Volume

T = TypeVar("T")

OptionValue = str | int | float | bool


class SourceError(EMDataError):
    """A source could not deliver a dataset (base of all connector errors).

    Args:
        uri: the dataset URI (tokens are removed before it is shown).
        problem: what went wrong, in words a user can act on.
    """

    def __init__(self, uri: str | os.PathLike[str], problem: str) -> None:
        super().__init__(redact(os.fspath(uri)), redact(problem))


class SourceUnavailableError(SourceError):
    """The service or file could not be reached, or kept failing after all retries."""


class SourceNotFoundError(SourceUnavailableError):
    """The service answered, but the dataset, layer or file does not exist there (HTTP 404)."""


class SourceAuthError(SourceUnavailableError):
    """The service refused access (HTTP 401/403): a token is missing, wrong or expired."""


class ByteBudgetExceeded(SourceError):
    """Reading more would exceed the byte budget of this dataset (``options['max_bytes']``)."""


class UnsupportedSourceError(SourceError):
    """Unknown URI scheme, bad option, or a layout/format this connector cannot read."""


class IntegrityError(SourceError):
    """A downloaded file has the wrong size or checksum."""


class TransientError(Exception):
    """Internal: a failure worth retrying (connection reset, timeout, HTTP 429/5xx).

    Args:
        reason: what happened.
        retry_after: seconds the server asked us to wait (``Retry-After``), if any.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


_SECRET = re.compile(r"(?i)((?:token|sharingtoken|x-auth-token|authorization)[=:]\s*)[^&\s\"',]+")


def redact(text: str) -> str:
    """``text`` with token values replaced by ``***`` (errors and metadata never carry secrets).

    Examples:
        >>> redact("https://wk.org/data/zarr/x?token=abc123&a=1")
        'https://wk.org/data/zarr/x?token=***&a=1'
    """
    return _SECRET.sub(r"\1***", text)


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Limits:
    """Retry, rate and size limits for one dataset.

    Args:
        attempts: tries per request (1 = no retry).
        backoff_s: delay before the first retry; doubles each retry (exponential back-off).
        max_backoff_s: upper bound of one delay.
        jitter: fraction of each delay that is random, so parallel workers do not retry in step.
        rate_limit: requests per second (None = unlimited).
        max_bytes: bytes this dataset may read (None = unlimited). Counts bytes downloaded
            (metadata, files) and bytes of pixel data delivered from chunked stores.
        timeout_s: seconds a connection may stay silent before the request counts as failed.
    """

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    jitter: float = 0.5
    rate_limit: float | None = 10.0
    max_bytes: int | None = None
    timeout_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based).

        Examples:
            >>> Limits(backoff_s=1, jitter=0).delay(3)
            4.0
        """
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        if retry_after is not None:
            base = min(self.max_backoff_s, max(base, retry_after))
        return base * (1 - self.jitter) + base * self.jitter * random.random()


#: Options every connector understands (see docs/em5m/sources.md).
COMMON_OPTIONS: dict[str, str] = {
    "level": "multiscale level to open (wins over pixel_size_nm)",
    "retries": "attempts per request (default 4)",
    "backoff_s": "first retry delay in s, doubled each retry (default 0.5)",
    "max_backoff_s": "largest retry delay in s (default 30)",
    "rate_limit": "requests per second, 0 = unlimited (default 10)",
    "max_bytes": "byte budget of the dataset (default unlimited)",
    "timeout_s": "socket timeout in s (default 60)",
    "token_env": "name of an environment variable holding the access token",
}


def check_options(
    uri: str, options: Mapping[str, Any] | None, extra: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Validate option names (a typo must not be silently ignored); returns a plain dict.

    Args:
        uri: named in the error.
        options: the options passed to `open_source` (catalog ``options:``).
        extra: connector-specific option names and what they mean.

    Raises:
        UnsupportedSourceError: an option name is not known to this connector.
    """
    opts = dict(options or {})
    known = {**COMMON_OPTIONS, **(extra or {})}
    unknown = sorted(set(opts) - set(known))
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(known.items()))
        raise UnsupportedSourceError(
            uri, f"unknown option(s) {', '.join(unknown)}; this source accepts: {listing}"
        )
    return opts


def limits_from_options(uri: str, opts: Mapping[str, Any]) -> Limits:
    """`Limits` from the common options (defaults for those not given)."""
    try:
        rate = float(opts.get("rate_limit", Limits.rate_limit))
        max_bytes = opts.get("max_bytes")
        limits = Limits(
            attempts=int(opts.get("retries", Limits.attempts)),
            backoff_s=float(opts.get("backoff_s", Limits.backoff_s)),
            max_backoff_s=float(opts.get("max_backoff_s", Limits.max_backoff_s)),
            rate_limit=rate if rate > 0 else None,
            max_bytes=int(max_bytes) if max_bytes is not None else None,
            timeout_s=float(opts.get("timeout_s", Limits.timeout_s)),
        )
    except (TypeError, ValueError) as exc:
        raise UnsupportedSourceError(uri, f"bad limit option: {exc}") from None
    if limits.attempts < 1 or limits.backoff_s < 0 or limits.timeout_s <= 0:
        raise UnsupportedSourceError(uri, "retries must be >= 1, backoff_s >= 0, timeout_s > 0")
    if limits.max_bytes is not None and limits.max_bytes < 1:
        raise UnsupportedSourceError(uri, "max_bytes must be >= 1")
    return limits


def resolve_token(
    explicit: str | None, opts: Mapping[str, Any], default_envs: Sequence[str] = ()
) -> str | None:
    """The access token: ``explicit``, else ``$<options['token_env']>``, else the first set
    variable of ``default_envs`` (e.g. ``WK_TOKEN``), else None (anonymous)."""
    if explicit:
        return explicit
    names = [str(opts["token_env"])] if opts.get("token_env") else []
    for name in [*names, *default_envs]:
        if os.environ.get(name):
            return os.environ[name]
    return None


# --------------------------------------------------------------------------------------------
# Rate limit and byte budget


class RateLimiter:
    """A token bucket: at most ``rate`` requests per second on average, bursts of ``burst``.

    Thread-safe: dask reads blocks from several threads at once.

    Args:
        rate: requests per second; None means unlimited.
        burst: requests allowed back-to-back (default: one second's worth, at least 1).

    Examples:
        >>> limiter = RateLimiter(1000)
        >>> limiter.acquire()  # returns at once while tokens are left
    """

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else (rate or 1.0))
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Locks do not pickle; a copy in another process limits that process's requests.
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until one request may be sent."""
        if self.rate is None:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.rate
            time.sleep(wait)


class ByteBudget:
    """Counts the bytes one dataset reads and refuses reads past ``limit``.

    A read is charged *before* it is made, so the budget is never overshot by a large read.

    Args:
        uri: named in the error.
        limit: bytes allowed; None means unlimited (bytes are still counted).

    Examples:
        >>> b = ByteBudget("x", 100)
        >>> b.charge(60, "chunk")
        >>> try:
        ...     b.charge(60, "chunk")
        ... except ByteBudgetExceeded as err:
        ...     print(err.problem[:53])
        reading chunk (60 bytes) would exceed the byte budget
    """

    def __init__(self, uri: str, limit: int | None) -> None:
        self.uri = uri
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process (dask's process/distributed schedulers) counts that
        # process's reads only: the budget is then enforced per process.
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` or raise `ByteBudgetExceeded` if they do not fit."""
        with self._lock:
            if self.limit is not None and self.used + nbytes > self.limit:
                raise ByteBudgetExceeded(
                    self.uri,
                    f"reading {what} ({nbytes} bytes) would exceed the byte budget of "
                    f"{self.limit} bytes ({self.used} used so far); raise options['max_bytes'] "
                    "or read less",
                )
            self.used += nbytes

    def refund(self, nbytes: int) -> None:
        """Give back bytes charged for a read that did not happen."""
        with self._lock:
            self.used = max(0, self.used - nbytes)

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


# --------------------------------------------------------------------------------------------
# The per-dataset context


@dataclass
class SourceContext:
    """State shared by all requests for one dataset.

    Args:
        uri: the dataset URI as the user wrote it.
        kind: connector name (``"openorganelle"``, ``"empiar"``, ...).
        options: validated options.
        limits: retry/rate/size limits.
        token: access token or None.
    """

    uri: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    limiter: RateLimiter = field(init=False)
    budget: ByteBudget = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.limits.rate_limit)
        self.budget = ByteBudget(self.uri, self.limits.max_bytes)

    @classmethod
    def create(
        cls,
        uri: str,
        kind: str,
        options: Mapping[str, Any] | None,
        *,
        token: str | None = None,
        extra_options: Mapping[str, str] | None = None,
        token_envs: Sequence[str] = (),
    ) -> SourceContext:
        """Validate ``options`` and build the context (token from argument or environment)."""
        opts = check_options(uri, options, extra_options)
        return cls(
            uri=uri,
            kind=kind,
            options=opts,
            limits=limits_from_options(uri, opts),
            token=resolve_token(token, opts, token_envs),
        )

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """Call ``fn`` (one request) with rate limiting and bounded retries.

        ``fn`` raises `TransientError` for failures worth retrying; anything else propagates
        at once. After the last attempt, `SourceUnavailableError` names what failed and why.
        """
        return call_with_retries(fn, self, what)

    def option(self, name: str, default: T, env: str | None = None) -> T:
        """An option value, else ``$env`` when set, else ``default``."""
        if name in self.options:
            return self.options[name]
        if env and os.environ.get(env):
            return os.environ[env]  # type: ignore[return-value]
        return default


def call_with_retries(fn: Callable[[], T], ctx: SourceContext, what: str) -> T:
    """See `SourceContext.retry`. Sleeps with exponential back-off plus jitter between tries."""
    last = ""
    for attempt in range(1, ctx.limits.attempts + 1):
        ctx.limiter.acquire()
        try:
            return fn()
        except TransientError as exc:
            last = exc.reason
            if attempt < ctx.limits.attempts:
                time.sleep(ctx.limits.delay(attempt, exc.retry_after))
    raise SourceUnavailableError(
        ctx.uri, f"{what} failed: {last} (gave up after {ctx.limits.attempts} attempt(s))"
    )


# --------------------------------------------------------------------------------------------
# Levels


def in_plane_nm(voxel_size: Sequence[float] | Mapping[str, float | None] | None) -> float | None:
    """Mean of the y and x voxel sizes, or None when either is unknown.

    Args:
        voxel_size: canonical tuple (``(z, y, x)`` or ``(y, x)``) or a dict by axis name.

    Examples:
        >>> in_plane_nm((30.0, 4.0, 4.0)), in_plane_nm({"z": 30, "y": 4, "x": 6})
        (4.0, 5.0)
    """
    if isinstance(voxel_size, Mapping):
        y, x = voxel_size.get("y"), voxel_size.get("x")
    elif voxel_size is not None and len(voxel_size) >= 2:
        y, x = voxel_size[-2], voxel_size[-1]
    else:
        return None
    if y is None or x is None:
        return None
    return (float(y) + float(x)) / 2


def pick_level(
    levels: Sequence[Mapping[str, Any]], pixel_size_nm: float, *, uri: str = "<source>"
) -> int:
    """Index of the level whose in-plane (y, x) pixel size is nearest ``pixel_size_nm``.

    Nearness is on a log scale (4 nm is as far from 8 nm as 16 nm is), and a tie goes to the
    finer level (down-sampling later loses less than up-sampling).

    Args:
        levels: ``metadata["levels"]`` entries; each has ``voxel_size`` (canonical order, nm).
        pixel_size_nm: the wanted in-plane pixel size.
        uri: named in errors.

    Raises:
        InvalidVolumeError: a level has no voxel size (then choose one with ``level=``).

    Examples:
        >>> lv = [{"voxel_size": (8, 4, 4)}, {"voxel_size": (8, 8, 8)}, {"voxel_size": (8, 16, 16)}]
        >>> pick_level(lv, 10), pick_level(lv, 100), pick_level(lv, 1)
        (1, 2, 0)
    """
    if not pixel_size_nm or pixel_size_nm <= 0:
        raise InvalidVolumeError(uri, f"pixel_size_nm must be positive, got {pixel_size_nm}")
    best, best_dist = 0, math.inf
    for i, lv in enumerate(levels):
        size = in_plane_nm(lv.get("voxel_size"))
        if size is None:
            raise InvalidVolumeError(
                uri,
                f"level {i} has no voxel size, so the level nearest {pixel_size_nm} nm "
                "cannot be chosen; pass options={'level': N} instead",
            )
        dist = abs(math.log(size / pixel_size_nm))
        if dist < best_dist - 1e-9:
            best, best_dist = i, dist
    return best


def choose_level(
    ctx: SourceContext, levels: Sequence[Mapping[str, Any]], pixel_size_nm: float | None
) -> int:
    """The level to open: ``options['level']``, else nearest ``pixel_size_nm``, else 0."""
    if "level" in ctx.options:
        level = int(ctx.options["level"])
        if not 0 <= level < len(levels):
            raise InvalidVolumeError(
                ctx.uri,
                f"level {level} does not exist; this source has {len(levels)} "
                f"level(s), 0..{len(levels) - 1}",
            )
        return level
    if pixel_size_nm is None:
        return 0
    return pick_level(levels, pixel_size_nm, uri=ctx.uri)


def finish_volume(
    volume: Volume,
    ctx: SourceContext,
    *,
    store: str | None = None,
    licence: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Volume:
    """Stamp the provenance every connector reports onto ``volume.metadata``.

    Adds ``source`` (connector kind), ``uri`` (as given), ``store`` (resolved location, tokens
    removed), ``level`` and ``level_voxel_size_nm`` (the chosen level), ``levels`` (kept from
    the reader), ``licence`` (a hint from the service, or None) and ``bytes_budget``.
    """
    meta = dict(volume.metadata)
    level = int(meta.get("level", 0))
    levels = meta.get("levels") or []
    meta.update(
        {
            "source": ctx.kind,
            "uri": redact(ctx.uri),
            "store": redact(store) if store else meta.get("path"),
            "level": level,
            "level_voxel_size_nm": volume.voxel_size,
            "levels": levels,
            "licence": licence,
            "max_bytes": ctx.limits.max_bytes,
        }
    )
    meta.update(extra or {})
    return volume.replace(source=redact(ctx.uri), metadata=meta)
