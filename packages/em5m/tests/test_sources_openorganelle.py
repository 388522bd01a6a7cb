"""OpenOrganelle connector: OME-Zarr (Zarr v2) and N5 stores, on disk and over 127.0.0.1 HTTP/S3."""

from __future__ import annotations

from pathlib import Path

import em5m_tests_fixtures_sources as fx  # registered by conftest.py
import numpy as np
import pytest

from em5m.sources import (
    ByteBudgetExceeded,
    SourceNotFoundError,
    SourceUnavailableError,
    error_record,
    open_source,
)

DATA = fx.volume_data((8, 64, 48))
ID = "jrc_test-1"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local copy of the bucket layout: one Zarr dataset, one N5-only dataset."""
    root = tmp_path_factory.mktemp("bucket") / "janelia-cosem-datasets"
    fx.write_openorganelle_zarr(root, ID, DATA)
    fx.write_openorganelle_n5(root, "jrc_old-1", DATA.astype(np.uint16) * 200)
    return root


def _check_zarr_volume(vol, level: int) -> None:
    expected = DATA if level == 0 else fx.downsample2(DATA)
    assert vol.axes == ("z", "y", "x")
    assert vol.shape == expected.shape
    assert vol.voxel_size == ((8.0, 4.0, 4.0) if level == 0 else (16.0, 8.0, 8.0))
    meta = vol.metadata
    assert meta["source"] == "openorganelle"
    assert meta["level"] == level
    assert meta["level_voxel_size_nm"] == vol.voxel_size
    assert [lv["voxel_size"] for lv in meta["levels"]] == [(8.0, 4.0, 4.0), (16.0, 8.0, 8.0)]
    assert [lv["shape"] for lv in meta["levels"]] == [(8, 64, 48), (4, 32, 24)]
    assert meta["licence"].startswith("CC-BY-4.0")
    assert meta["format"] == "ome-zarr"
    np.testing.assert_array_equal(vol.compute(), expected)
    np.testing.assert_array_equal(vol.data[1, 5:21, 7:30].compute(), expected[1, 5:21, 7:30])


@pytest.mark.parametrize(("pixel", "level"), [(None, 0), (4.5, 0), (7.0, 1), (100.0, 1)])
def test_zarr_from_local_bucket_picks_level(bucket: Path, pixel: float | None, level: int) -> None:
    vol = open_source(
        f"openorganelle://{ID}", pixel_size_nm=pixel, options={"base_url": str(bucket)}
    )
    _check_zarr_volume(vol, level)
    assert vol.metadata["store"].endswith("recon-1/em/fibsem-uint8/")


@pytest.mark.network
def test_zarr_over_http_reads_only_needed_chunks(bucket: Path, http_server) -> None:
    http_server.mount("/janelia-cosem-datasets", bucket)
    base = f"{http_server.url}/janelia-cosem-datasets"
    vol = open_source(f"openorganelle://{ID}", options={"base_url": base})

    def chunk_gets() -> list[str]:
        metadata = (".zarray", ".zattrs", ".zgroup")
        return [p for p in http_server.paths() if "/s0/" in p and not p.endswith(metadata)]

    assert chunk_gets() == [], "opening must read metadata only"
    tile = vol.data[2, 0:16, 16:32].compute()  # exactly one 4x16x16 chunk of s0
    np.testing.assert_array_equal(tile, DATA[2, 0:16, 16:32])
    assert chunk_gets() == [
        f"/janelia-cosem-datasets/{ID}/{ID}.zarr/recon-1/em/fibsem-uint8/s0/0/0/1"
    ]
    _check_zarr_volume(vol, 0)


@pytest.mark.network
def test_s3_scheme_with_local_endpoint(bucket: Path, http_server) -> None:
    # The default code path (anonymous S3 through tensorstore) against a 127.0.0.1 endpoint.
    http_server.mount("/janelia-cosem-datasets", bucket)
    vol = open_source(
        f"openorganelle://{ID}", pixel_size_nm=8, options={"endpoint": http_server.url}
    )
    _check_zarr_volume(vol, 1)
    assert vol.metadata["store"].startswith("s3://janelia-cosem-datasets/")
    assert all("Authorization" not in h for _, _, h in http_server.log)  # anonymous
    raw = open_source(
        f"s3://janelia-cosem-datasets/{ID}/{ID}.zarr/recon-1/em/fibsem-uint8",
        options={"endpoint": http_server.url, "level": 1},
    )
    _check_zarr_volume(raw, 1)


@pytest.mark.network
def test_n5_fallback_on_disk_and_http(bucket: Path, http_server) -> None:
    expected = DATA.astype(np.uint16) * 200
    http_server.mount("/janelia-cosem-datasets", bucket)
    for base in (str(bucket), f"{http_server.url}/janelia-cosem-datasets"):
        vol = open_source("openorganelle://jrc_old-1", pixel_size_nm=8, options={"base_url": base})
        assert vol.metadata["format"] == "n5"
        assert vol.metadata["container_format"] == "n5"
        assert vol.axes == ("z", "y", "x")
        assert vol.voxel_size == (12.0, 8.0, 8.0)
        assert vol.metadata["level"] == 1
        assert [lv["voxel_size"] for lv in vol.metadata["levels"]] == [
            (6.0, 4.0, 4.0),
            (12.0, 8.0, 8.0),
        ]
        assert vol.dtype == np.uint16
        np.testing.assert_array_equal(vol.compute(), fx.downsample2(expected))
    explicit = open_source(
        "openorganelle://jrc_old-1/em/fibsem-uint16", options={"base_url": str(bucket)}
    )
    np.testing.assert_array_equal(explicit.compute(), expected)


@pytest.mark.network
def test_https_store_url(bucket: Path, http_server) -> None:
    http_server.mount("/janelia-cosem-datasets", bucket)
    url = f"{http_server.url}/janelia-cosem-datasets/jrc_old-1/jrc_old-1.n5/em/fibsem-uint16/s0"
    vol = open_source(url)
    assert vol.metadata["source"] == "openorganelle"
    assert vol.voxel_size == (6.0, 4.0, 4.0)
    assert vol.shape == DATA.shape


def test_missing_dataset_names_what_was_tried(bucket: Path) -> None:
    with pytest.raises(SourceNotFoundError) as err:
        open_source("openorganelle://jrc_nothing", options={"base_url": str(bucket)})
    text = str(err.value)
    assert "jrc_nothing.zarr/recon-1/em/fibsem-uint8" in text
    assert "fibsem-uint8.precomputed" in text


def test_byte_budget(bucket: Path) -> None:
    vol = open_source(
        f"openorganelle://{ID}", options={"base_url": str(bucket), "max_bytes": 20_000}
    )
    vol.data[0, :16, :16].compute()  # small reads fit
    with pytest.raises(ByteBudgetExceeded) as err:
        vol.compute()  # 24 kB of pixels do not
    assert "max_bytes" in str(err.value)
    assert err.value.path == f"openorganelle://{ID}"


@pytest.mark.network
def test_unreachable_endpoint_is_named_error(closed_port: int) -> None:
    with pytest.raises(SourceUnavailableError) as err:
        open_source(
            f"openorganelle://{ID}",
            options={**fx.FAST, "base_url": f"http://127.0.0.1:{closed_port}/b"},
        )
    assert f"127.0.0.1:{closed_port}" in str(err.value)
    record = error_record(err.value)
    assert record["uri"] == f"openorganelle://{ID}"
    assert record["error"] == "SourceUnavailableError" and "cannot reach" in record["reason"]


@pytest.mark.network
def test_chunk_503_twice_is_retried(bucket: Path, http_server) -> None:
    http_server.mount("/janelia-cosem-datasets", bucket)
    chunk = f"/janelia-cosem-datasets/{ID}/{ID}.zarr/recon-1/em/fibsem-uint8/s0/0/0/0"
    vol = open_source(
        f"openorganelle://{ID}",
        options={**fx.FAST, "retries": 3, "base_url": f"{http_server.url}/janelia-cosem-datasets"},
    )
    rule = http_server.rule(chunk, status=503, times=2)
    np.testing.assert_array_equal(vol.data[0, :16, :16].compute(), DATA[0, :16, :16])
    assert rule.hits == 3  # tensorstore retried the chunk with our back-off settings
