"""The curation run: catalog -> plan -> work units on dask -> assembled corpus -> report.

Design:

- **Plan** (driver): every valid catalog entry is opened (metadata only) and split into small
  work units (`em5m.curate.sample.plan_dataset`). Entries that fail validation or opening are
  recorded as named failures; the rest go on.
- **Units** (dask): each unit is one task (`em5m.curate.unit.run_unit`) that writes its outputs
  atomically and a ``.done`` marker last. Local threads by default; ``scheduler=`` a
  dask.distributed address (or `Client`) runs them on a cluster (workers need the output
  directory on a shared filesystem). A rerun skips units whose marker matches.
- **Assemble** (driver): global dedup and shard/manifest writing in corpus order
  (`em5m.curate.assemble`), so scheduling never changes the result.
- **Report**: ``report.json`` and a printed summary with per-dataset counts and failures.

Layout of ``out``: ``plan.json``, ``units/`` (per-unit parts, blobs, markers), ``shards/``
(``shard-000000.tar``...), ``manifest.parquet``, ``removed.parquet``, ``report.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from em5m.catalog import Catalog, load_catalog
from em5m.curate.assemble import DedupConfig, assemble, dump_json
from em5m.curate.dedup import EmbedFn
from em5m.curate.filters import FilterThresholds, ScoreFn, load_thresholds
from em5m.curate.plan import plan_dataset
from em5m.curate.progress import NullProgress, Progress, TqdmProgress
from em5m.curate.report import failure, summarize
from em5m.curate.sample import SampleOptions, UnitSpec
from em5m.curate.unit import UnitConfig, run_unit


@dataclass(frozen=True)
class CurateConfig:
    """Settings of a curation run.

    Args:
        sample: sampling rules (levels, up-sampling limit, unit size).
        thresholds: filter thresholds (default: the calibrated ``thresholds.json``).
        score: optional learned filter ``score(tiles uint8 [N, H, W]) -> [N]``.
        min_score: tiles with a lower score are removed.
        embed: optional ``embed(tiles) -> [N, D]`` for embedding dedup (picklable for
            clusters).
        dedup: near-duplicate settings.
        png_level: None for fast Huffman-only PNG, else a zlib level.
        shard_maxcount: tiles per shard.
        shard_maxsize: approximate bytes per shard.

    Examples:
        >>> CurateConfig().dedup.threshold
        8
    """

    sample: SampleOptions = field(default_factory=SampleOptions)
    thresholds: FilterThresholds | None = None
    score: ScoreFn | None = None
    min_score: float = 0.5
    embed: EmbedFn | None = None
    dedup: DedupConfig = field(default_factory=DedupConfig)
    png_level: int | None = None
    shard_maxcount: int = 10_000
    shard_maxsize: int = 2**30

    def unit_config(self) -> UnitConfig:
        return UnitConfig(
            thresholds=self.thresholds or load_thresholds(),
            rescale_uint8=self.sample.rescale_uint8,
            percentiles=self.sample.percentiles,
            png_level=self.png_level,
            score=self.score,
            min_score=self.min_score,
            embed=self.embed,
        )


def plan(
    catalog: Catalog, sample: SampleOptions
) -> tuple[list[UnitSpec], dict[str, Any], list[dict[str, Any]]]:
    """Units of every catalog entry, per-dataset notes, and failures (rejected/unopenable)."""
    units: list[UnitSpec] = []
    info: dict[str, Any] = {}
    failures = [
        {
            "stage": "catalog",
            "dataset": r.id or f"datasets[{r.index}]",
            "unit": None,
            "error": r.error,
            "kind": "missing_licence" if r.error == "MissingLicenceError" else "invalid_entry",
            "message": r.message,
        }
        for r in catalog.rejected
    ]
    for i, entry in enumerate(catalog.datasets):
        try:
            p = plan_dataset(entry, catalog.sampling_for(entry), dataset_index=i, options=sample)
        except Exception as err:  # a named failure for this dataset; the others go on
            failures.append(failure("open", err, dataset=entry.id))
            info[entry.id] = {"units": 0, "available_tiles": 0, "notes": []}
            continue
        units.extend(p.units)
        info[entry.id] = {
            "units": len(p.units),
            "available_tiles": p.available_tiles,
            "notes": p.notes,
        }
    return units, info, failures


def _run_local(
    todo: Sequence[UnitSpec], cfg: UnitConfig, out: Path, workers: int, on_result: Any
) -> list[dict[str, Any]]:
    import dask
    from dask.callbacks import Callback

    class _Cb(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            if isinstance(result, dict) and "key" in result:
                on_result(result)

    tasks = [dask.delayed(run_unit, pure=False)(spec, cfg, str(out)) for spec in todo]
    with _Cb():
        return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))


def _run_distributed(
    todo: Sequence[UnitSpec], cfg: UnitConfig, out: Path, scheduler: Any, on_result: Any
) -> list[dict[str, Any]]:
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.map(run_unit, list(todo), cfg=cfg, out=str(out), pure=False)
        results = []
        for fut in as_completed(futures):
            res = fut.result()
            on_result(res)
            results.append(res)
        return results
    finally:
        if not isinstance(scheduler, Client):
            client.close()


def curate(
    catalog: str | os.PathLike[str] | Catalog,
    out: str | os.PathLike[str],
    *,
    config: CurateConfig | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: Progress | bool = False,
) -> dict[str, Any]:
    """Curate a catalog into sharded, deduplicated 2D tiles with a parquet manifest.

    Args:
        catalog: catalog YAML path or a loaded `Catalog`.
        out: output directory (created; an existing run there is resumed).
        config: run settings.
        scheduler: None for local threads, or a dask.distributed scheduler address / Client.
        workers: local threads (default: CPU count).
        progress: True for tqdm bars, or a `Progress` callback.

    Returns:
        The report (also written to ``out/report.json``).

    Examples:
        >>> import tempfile, pathlib, numpy as np, tifffile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> rng = np.random.default_rng(0)
        >>> vol = (rng.normal(128, 40, (2, 64, 64))).clip(0, 255).astype(np.uint8)
        >>> tifffile.imwrite(d / "v.tif", vol)
        >>> _ = (d / "c.yaml").write_text(
        ...     f"defaults: {{tile_size: 32, pixel_sizes_nm: [8]}}\\n"
        ...     f"datasets:\\n  - {{id: v, uri: {d / 'v.tif'}, modality: TEM, species: mouse,"
        ...     f" voxel_size_nm: [50, 8, 8], licence: MIT, citation: test}}\\n")
        >>> rep = curate(d / "c.yaml", d / "out", config=CurateConfig(
        ...     thresholds=FilterThresholds(min_coarse_std=0, min_texture=0)))
        >>> rep["totals"]["sampled"], rep["complete"]
        (8, True)
    """
    t0 = time.perf_counter()
    cfg = config or CurateConfig()
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    # Partial files of a killed run (written under .tmp- names, never renamed into place).
    for stale in [
        *(out / "units").glob(".tmp-*"),
        *(out / "shards").glob(".tmp-*"),
        *out.glob(".tmp-*"),
    ]:
        stale.unlink(missing_ok=True)
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
    prog: Progress
    if progress is True:
        prog = TqdmProgress()
    elif progress is False:
        prog = NullProgress()
    else:
        prog = progress
    units, info, failures = plan(cat, cfg.sample)
    dump_json(out / "plan.json", {"units": [u.as_dict() for u in units], "datasets": info})
    ucfg = cfg.unit_config()
    total_units = len(units)
    state = {"done": 0, "tiles": 0, "kept": 0}

    def on_result(res: Mapping[str, Any]) -> None:
        state["done"] += 1
        state["tiles"] += int(res.get("sampled", 0))
        state["kept"] += int(res.get("kept", 0))
        prog("units", state["done"], total_units, {"tiles": state["tiles"], "kept": state["kept"]})

    prog("units", 0, total_units, {"tiles": 0, "kept": 0})
    if scheduler is None:
        results = _run_local(units, ucfg, out, workers or os.cpu_count() or 1, on_result)
    else:
        results = _run_distributed(units, ucfg, out, scheduler, on_result)
    by_key = {r["key"]: r for r in results}
    failures += [r["failure"] for r in results if r["status"] == "failed"]
    finished = [u.key for u in units if by_key.get(u.key, {}).get("status") != "failed"]
    built = assemble(
        out,
        finished,
        dedup=cfg.dedup,
        embed=cfg.embed,
        maxcount=cfg.shard_maxcount,
        maxsize=cfg.shard_maxsize,
        progress=prog,
    )
    report = _report(cat, out, units, info, built, failures, results, time.perf_counter() - t0)
    dump_json(out / "report.json", report)
    if progress is True:
        print(summarize(report))
    return report


def _report(
    cat: Catalog,
    out: Path,
    units: Sequence[UnitSpec],
    info: Mapping[str, Any],
    built: Mapping[str, Any],
    failures: list[dict[str, Any]],
    results: Sequence[Mapping[str, Any]],
    elapsed: float,
) -> dict[str, Any]:
    datasets: dict[str, Any] = {}
    for entry in cat.datasets:
        counts = built["per_dataset"].get(
            entry.id, {"sampled": 0, "kept": 0, "filtered": {}, "deduplicated": 0}
        )
        fails = [f for f in failures if f["dataset"] == entry.id]
        n_units = info.get(entry.id, {}).get("units", 0)
        if fails and not counts["sampled"]:
            status = "failed"
        elif fails:
            status = "partial"
        elif n_units == 0:
            status = "no tiles (see notes)"
        else:
            status = "ok"
        datasets[entry.id] = {
            **counts,
            "status": status,
            **info.get(entry.id, {}),
            "failures": fails,
        }
    for r in cat.rejected:
        name = r.id or f"datasets[{r.index}]"
        datasets.setdefault(
            name,
            {
                "sampled": 0,
                "kept": 0,
                "filtered": {},
                "deduplicated": 0,
                "status": "rejected",
                "failures": [f for f in failures if f["dataset"] == name],
            },
        )
    totals = {
        "units": len(units),
        "units_failed": sum(1 for r in results if r["status"] == "failed"),
        "units_cached": sum(1 for r in results if r["status"] == "cached"),
        "sampled": sum(d["sampled"] for d in datasets.values()),
        "kept": sum(d["kept"] for d in datasets.values()),
        "filtered": sum(sum(d["filtered"].values()) for d in datasets.values()),
        "deduplicated": sum(d["deduplicated"] for d in datasets.values()),
    }
    return {
        "out": str(out),
        "complete": not failures,
        "elapsed_s": round(elapsed, 3),
        "totals": totals,
        "datasets": datasets,
        "failures": failures,
        "shards": built["shards"],
        "manifest": "manifest.parquet",
    }
