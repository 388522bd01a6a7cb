"""Progress reporting: one small callback type, and a tqdm implementation for the CLI.

The pipeline calls ``progress(stage, done, total, info)``; `TqdmProgress` turns that into bars
with counts and rates (tiles/s), and `NullProgress` ignores it (library use, tests).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol


class Progress(Protocol):
    """Progress callback: ``stage`` is "units", "dedup" or "shards"."""

    def __call__(self, stage: str, done: int, total: int, info: Mapping[str, Any]) -> None: ...


class NullProgress:
    """Ignores progress."""

    def __call__(self, stage: str, done: int, total: int, info: Mapping[str, Any]) -> None:
        return None


class TqdmProgress:
    """tqdm bars, one per stage, with tile counts and tiles/s as postfix.

    Args:
        disable: no output at all (tqdm's own switch).
    """

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self._bars: dict[str, Any] = {}
        self._start: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, info: Mapping[str, Any]) -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            unit = {"units": "unit", "shards": "tile", "dedup": "tile"}.get(stage, "it")
            bar = tqdm(total=total, desc=stage, unit=unit, disable=self.disable, leave=True)
            self._bars[stage] = bar
            self._start[stage] = time.perf_counter()
        bar.total = total
        bar.n = done
        if info:
            elapsed = max(time.perf_counter() - self._start[stage], 1e-9)
            post = dict(info)
            if "tiles" in post:
                post["tiles/s"] = f"{post['tiles'] / elapsed:.0f}"
            bar.set_postfix(post, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
