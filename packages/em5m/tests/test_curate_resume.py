"""Acceptance 4 and 5: the manifest does not depend on interruptions or on the scheduler.

- A run SIGKILLed about half way and then rerun produces exactly the manifest, removed-tiles
  table and shard bytes of an uninterrupted run, redoing only the unfinished units.
- A dask.distributed LocalCluster (2 worker processes, 1 thread each) produces the same manifest
  as the local threaded run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from em5m.curate import CurateConfig, SampleOptions, curate

UNIT_TILES = 8


def _catalog(tmp_path, emssl_data, slice_step=3):
    path = tmp_path / "catalog.yaml"
    d = emssl_data
    path.write_text(
        "defaults: {tile_size: 224, pixel_sizes_nm: [8]}\ndatasets:\n"
        f"  - {{id: lucchi, uri: '{d}/lucchi_pp/train/images', modality: FIB-SEM, species: mouse,"
        f" voxel_size_nm: [5, 5, 5], licence: EPFL, citation: Lucchi 2012,"
        f" sampling: {{slice_step: {slice_step}}}}}\n"
        f"  - {{id: vnc, uri: '{d}/drosophila_vnc_sstem/stack1/raw', modality: ssTEM,"
        " species: fly, voxel_size_nm: [50, 4.6, 4.6], licence: CC BY-NC-SA 3.0,"
        " citation: Gerhard 2013}\n"
        f"  - {{id: isbi, uri: '{d}/isbi2012/train/image', modality: ssTEM, species: fly,"
        " voxel_size_nm: [50, 4, 4], licence: research, citation: Cardona 2010}\n"
    )
    return path


def _same_corpus(a, b):
    for name in ("manifest.parquet", "removed.parquet"):
        ta, tb = pq.read_table(a / name), pq.read_table(b / name)
        assert ta.equals(tb), name
    shards_a = sorted(p.name for p in (a / "shards").glob("*.tar"))
    assert shards_a == sorted(p.name for p in (b / "shards").glob("*.tar"))
    for name in shards_a:
        assert (a / "shards" / name).read_bytes() == (b / "shards" / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(emssl_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    catalog = _catalog(tmp, emssl_data)
    cfg = CurateConfig(sample=SampleOptions(unit_tiles=UNIT_TILES))
    report = curate(catalog, tmp / "reference", config=cfg, workers=2)
    assert report["complete"] and report["totals"]["units"] >= 40
    return tmp, catalog, report


def test_killed_run_resumes_to_the_same_manifest(reference):
    tmp, catalog, ref_report = reference
    out = tmp / "killed"
    cmd = [
        sys.executable,
        "-m",
        "em5m.cli",
        "curate",
        str(catalog),
        "--out",
        str(out),
        "--workers",
        "2",
        "--quiet",
        "--unit-tiles",
        str(UNIT_TILES),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    total = ref_report["totals"]["units"]
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        markers = (out / "units").glob("*.done") if (out / "units").exists() else []
        done = sum(1 for p in markers if not p.name.startswith(".tmp-"))
        if done >= total // 2:
            os.killpg(proc.pid, signal.SIGKILL)  # no cleanup, no atexit: a hard kill
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < done < total
    assert not (out / "manifest.parquet").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads((out / "report.json").read_text())
    cached = report["totals"]["units_cached"]
    assert done <= cached < total  # finished units were skipped, the rest were redone
    assert report["totals"]["kept"] == ref_report["totals"]["kept"]
    _same_corpus(tmp / "reference", out)
    assert not list((out / "units").glob(".tmp-*"))  # stale partial files cleaned up


def test_rerun_of_a_finished_run_reuses_every_unit(reference):
    tmp, catalog, ref_report = reference
    cfg = CurateConfig(sample=SampleOptions(unit_tiles=UNIT_TILES))
    again = curate(catalog, tmp / "reference", config=cfg, workers=2)
    assert again["totals"]["units_cached"] == ref_report["totals"]["units"]
    assert again["totals"] == {
        **ref_report["totals"],
        "units_cached": ref_report["totals"]["units"],
    }


def test_distributed_cluster_gives_the_same_manifest(reference):
    distributed = pytest.importorskip("distributed")
    tmp, catalog, _ = reference
    cfg = CurateConfig(sample=SampleOptions(unit_tiles=UNIT_TILES))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        report = curate(catalog, tmp / "cluster", config=cfg, scheduler=cluster.scheduler_address)
    assert report["complete"]
    _same_corpus(tmp / "reference", tmp / "cluster")
