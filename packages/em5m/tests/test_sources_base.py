"""Shared connector machinery (options, retries, rate limit, byte budget, levels, dispatch) and
the local source, including real EM data from EMSSL_DATA."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import em5m_tests_fixtures_sources as fx  # registered by conftest.py
import numpy as np
import pytest
import tifffile

from em5m.errors import EMDataError, InvalidVolumeError
from em5m.sources import (
    ByteBudgetExceeded,
    SourceNotFoundError,
    SourceUnavailableError,
    UnsupportedSourceError,
    connector_for,
    open_source,
    pick_level,
)
from em5m.sources.base import ByteBudget, Limits, RateLimiter, SourceContext, TransientError
from em5m.sources.http import HttpClient, parse_index

# -- options, limits ------------------------------------------------------------------------


def test_unknown_option_is_refused_with_the_list() -> None:
    with pytest.raises(UnsupportedSourceError) as err:
        open_source("openorganelle://jrc_hela-2", options={"max_byte": 10})
    assert "max_byte" in str(err.value) and "max_bytes" in str(err.value)


def test_unknown_scheme() -> None:
    with pytest.raises(UnsupportedSourceError, match="unknown URI scheme 'gs'"):
        open_source("gs://bucket/x")


def test_backoff_grows_and_is_bounded() -> None:
    limits = Limits(backoff_s=0.5, max_backoff_s=3, jitter=0)
    assert [limits.delay(i) for i in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittery = Limits(backoff_s=1, max_backoff_s=30, jitter=0.5)
    delays = {round(jittery.delay(3), 6) for _ in range(20)}
    assert all(2.0 <= d <= 4.0 for d in delays) and len(delays) > 1
    assert Limits(backoff_s=1, jitter=0).delay(1, retry_after=7) == 7


def test_retry_stops_after_bounded_attempts() -> None:
    ctx = SourceContext.create("x://y", "test", {"retries": 3, "backoff_s": 0.001})
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("HTTP 503")
        return "ok"

    assert ctx.retry(flaky, "fetch") == "ok" and len(calls) == 3

    def down() -> str:
        calls.append(1)
        raise TransientError("HTTP 502 Bad Gateway")

    calls.clear()
    with pytest.raises(SourceUnavailableError, match="HTTP 502.*gave up after 3 attempt"):
        ctx.retry(down, "fetch")
    assert len(calls) == 3


def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(20, burst=1)
    start = time.monotonic()
    for _ in range(6):
        limiter.acquire()
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 2.0  # 5 waits of 1/20 s after the first


def test_byte_budget_is_thread_safe_and_exact() -> None:
    budget = ByteBudget("u", 1000)
    errors = []

    def take() -> None:
        for _ in range(50):
            try:
                budget.charge(7, "x")
            except ByteBudgetExceeded:
                errors.append(1)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == 7 * (1000 // 7)
    assert len(errors) == 200 - 1000 // 7


def test_pick_level_nearest_in_log_space() -> None:
    levels = [
        {"voxel_size": (40, 4, 4)},
        {"voxel_size": (40, 8, 8)},
        {"voxel_size": {"z": 40, "y": 16, "x": 16}},
    ]
    assert [pick_level(levels, p) for p in (1, 5.6, 5.7, 12, 11.3, 1000)] == [0, 0, 1, 2, 1, 2]
    with pytest.raises(InvalidVolumeError, match="level 1 has no voxel size"):
        pick_level([{"voxel_size": (4, 4)}, {"voxel_size": None}], 8)


def test_errors_never_show_tokens() -> None:
    err = SourceUnavailableError("https://h/x?token=s3cr3t", "GET https://h/x?token=s3cr3t failed")
    assert "s3cr3t" not in str(err)
    assert isinstance(err, EMDataError)


# -- HTTP client ----------------------------------------------------------------------------


@pytest.mark.network
def test_http_client_retries_503_then_succeeds(http_server) -> None:
    http_server.json("/meta.json", {"ok": True})
    rule = http_server.rule("/meta.json", status=503, times=2)
    ctx = SourceContext.create("x://y", "test", {"retries": 3, "backoff_s": 0.01})
    assert HttpClient(ctx).get_json(f"{http_server.url}/meta.json") == {"ok": True}
    assert rule.hits == 3
    assert ctx.budget.used == len(b'{"ok": true}')


@pytest.mark.network
def test_http_client_closed_port(closed_port: int) -> None:
    ctx = SourceContext.create("x://y", "test", fx.FAST)
    start = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="cannot connect"):
        HttpClient(ctx).get(f"http://127.0.0.1:{closed_port}/a")
    assert time.monotonic() - start < 5


def test_parse_index_apache_table() -> None:
    page = (
        '<table><tr><th><a href="?C=N;O=D">Name</a></th></tr>'
        '<tr><td><a href="/empiar/world_availability/10982/">Parent Directory</a></td></tr>'
        '<tr><td><a href="mito_benchmarks/">mito_benchmarks/</a></td><td>2022-01-05 '
        '</td><td align="right"> - </td></tr>'
        '<tr><td><a href="c%20elegans_em.tif">c elegans_em.tif</a></td>'
        '<td>2022-01-05 10:00</td><td align="right">16M</td></tr></table>'
    )
    entries = parse_index(page, "https://ftp.ebi.ac.uk/empiar/world_availability/10982/data")
    assert [(e.name, e.is_dir, e.size) for e in entries] == [
        ("mito_benchmarks", True, "-"),
        ("c elegans_em.tif", False, "16M"),
    ]
    assert entries[1].url.endswith("/10982/data/c%20elegans_em.tif")


# -- dispatch and local ---------------------------------------------------------------------


def test_dispatch_by_scheme(tmp_path: Path) -> None:
    names = {
        "openorganelle://jrc_hela-2": "open_openorganelle",
        "s3://janelia-cosem-datasets/jrc_hela-2/jrc_hela-2.n5": "open_store_url",
        "https://bossdb-open-data.s3.amazonaws.com/x/em": "open_store_url",
        "precomputed://https://h/x": "open_store_url",
        "precomputed://file:///tmp/x": "open_local",
        "https://webknossos.org/datasets/scalable_minds/l4_sample/view": "open_webknossos",
        "webknossos://scalable_minds/l4_sample": "open_webknossos",
        "bossdb://a/b/c": "open_bossdb",
        "empiar://EMPIAR-10982/x.tif": "open_empiar",
        str(tmp_path): "open_local",
        f"file://{tmp_path}": "open_local",
    }
    assert {u: connector_for(u).__name__ for u in names} == names
    (tmp_path / "datasource-properties.json").write_text("{}")
    assert connector_for(str(tmp_path)).__name__ == "open_webknossos"


def test_local_tiff_and_missing_path(tmp_path: Path) -> None:
    data = fx.volume_data((4, 16, 16))
    path = tmp_path / "v.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(0.25, 0.25),
        metadata={"axes": "ZYX", "spacing": 30, "unit": "nm"},
    )
    vol = open_source(path, pixel_size_nm=8)  # one level: nothing to choose
    assert vol.metadata["source"] == "local" and vol.metadata["level"] == 0
    assert vol.voxel_size == (30.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.compute(), data)
    with pytest.raises(SourceNotFoundError):
        open_source(tmp_path / "nope.tif")


def test_local_multiscale_picks_level(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    group = fx.write_openorganelle_zarr(root, "jrc_x", fx.volume_data((8, 32, 32)))
    vol = open_source(f"file://{group}", pixel_size_nm=8)
    assert vol.metadata["level"] == 1 and vol.voxel_size == (16.0, 8.0, 8.0)
    assert vol.shape == (4, 16, 16)


def test_volume_pickles_for_process_schedulers(tmp_path: Path) -> None:
    group = fx.write_openorganelle_zarr(tmp_path / "b", "jrc_x", fx.volume_data((8, 32, 32)))
    vol = open_source("openorganelle://jrc_x", options={"base_url": str(tmp_path / "b")})
    clone = pickle.loads(pickle.dumps(vol.data))
    np.testing.assert_array_equal(clone[2:4, 5:9].compute(), vol.data[2:4, 5:9].compute())
    assert group.exists()


def test_real_data_as_local_source(emssl_data: Path) -> None:
    lucchi = emssl_data / "lucchi_pp" / "train" / "images"
    if not lucchi.is_dir():
        pytest.skip(f"{lucchi} not present")
    vol = open_source(lucchi)
    assert vol.axes == ("z", "y", "x") and vol.shape == (165, 768, 1024)
    tile = vol.data[80, 100:324, 200:424].compute()
    assert tile.shape == (224, 224) and tile.dtype == np.uint8 and tile.std() > 5
    assert vol.metadata["source"] == "local" and vol.metadata["uri"] == str(lucchi)
    h5 = emssl_data / "gala_fibsem" / "train-image.h5"
    if h5.is_file():
        stack = open_source(h5, options={"dataset": "stack"})
        assert stack.shape == (50, 100, 200)
