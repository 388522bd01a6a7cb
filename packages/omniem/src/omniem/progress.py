"""Progress reporting for long runs: one callback type, ``progress(done, total)``.

`omniem.engine.predict` calls ``progress(done, total)`` after each output block is written
(``done`` counts blocks already there when a run resumes). Anything with that signature works:
a function, `TqdmProgress` (a tqdm bar on stderr: blocks done/total, rate and ETA), or a GUI's
adapter (napari: update a progress widget). A callback that raises stops the run; the blocks
written so far are recorded and a rerun resumes.

Examples:
    >>> seen = []
    >>> cb: ProgressCallback = lambda done, total: seen.append((done, total))
    >>> cb(1, 4); seen
    [(1, 4)]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

__all__ = ["ProgressCallback", "TqdmProgress", "null_progress"]

#: ``progress(done, total)``: called after each unit of work (``done`` of ``total``).
ProgressCallback = Callable[[int, int], Any]


def null_progress(done: int, total: int) -> None:
    """A callback that reports nothing."""


class TqdmProgress:
    """A `ProgressCallback` that draws a tqdm bar (to stderr by default).

    The bar opens on `start` or else on the first call (a resumed run starts at the blocks
    already done; its rate counts only new ones) and closes when ``done == total`` or on `close`
    / leaving a ``with`` block.

    Args:
        desc: label in front of the bar.
        unit: what is counted.
        file: stream to draw on.
        disable: no bar (``None``: tqdm's default, drawn also when ``file`` is not a terminal).
        **tqdm_kwargs: passed to ``tqdm.tqdm``.

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> with TqdmProgress("predict", file=out) as bar:
        ...     for i in range(1, 4):
        ...         bar(i, 3)
        >>> "3/3" in out.getvalue()
        True
    """

    def __init__(
        self,
        desc: str | None = None,
        *,
        unit: str = "block",
        file: IO[str] | None = None,
        disable: bool | None = False,
        **tqdm_kwargs: Any,
    ) -> None:
        self.desc, self.unit, self.file, self.disable = desc, unit, file, disable
        self.kwargs = {"mininterval": 0, "dynamic_ncols": True, **tqdm_kwargs}
        self.bar: Any = None

    def start(self, total: int, done: int = 0) -> None:
        """Open the bar before the first unit finishes (so the first rate is right)."""
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(
            total=total,
            initial=done,
            desc=self.desc,
            unit=self.unit,
            file=self.file if self.file is not None else sys.stderr,
            disable=self.disable,
            **self.kwargs,
        )

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.start(total, max(0, done - 1))
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
