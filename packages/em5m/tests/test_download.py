"""Dataset download against a real HTTP server on 127.0.0.1 (never the internet).

A mirror of the OmniEM example files (real EM, 1.2 MB) is served from a temp folder; a registry
entry that differs from the built-in one only in its name and ``base_url`` is downloaded with
pooch into a temp ``EM5M_HOME`` while ``EMSSL_DATA`` points at an empty folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from em5m import DatasetUnavailableError
from em5m import datasets as ds

pytestmark = pytest.mark.network

MIRROR = "omniem_examples_mirror"


class _Server:
    """A static file server on 127.0.0.1 that records the paths it was asked for."""

    def __init__(self, directory: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                requests.append(self.path)

        handler = functools.partial(Handler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch) -> Path:
    """EMSSL_DATA -> an empty folder, EM5M_HOME -> a fresh cache; returns the cache root."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("EMSSL_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("EM5M_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "datasets"


@pytest.fixture(scope="module")
def real_examples() -> Path:
    """The real OmniEM example folder (module scope: resolved before `isolated` swaps the env)."""
    real = ds.data_root()
    if real is None or not (real / "omniem_examples").is_dir():
        pytest.fail("EMSSL_DATA with omniem_examples/ is needed (see docs/em5m/datasets.md)")
    return real / "omniem_examples"


@pytest.fixture
def served(tmp_path: Path, real_examples: Path) -> Iterator[tuple[_Server, Path]]:
    """The real OmniEM example files, served over HTTP from a temp copy."""
    site = tmp_path / "site"
    site.mkdir()
    for rel in ds.info("omniem_examples").files:
        shutil.copyfile(real_examples / rel, site / rel)
    with _Server(site) as server:
        yield server, site


@contextlib.contextmanager
def _mirror(base_url: str | None) -> Iterator[ds.DatasetInfo]:
    builtin = ds.info("omniem_examples")
    entry = dataclasses.replace(
        builtin, name=MIRROR, source=dataclasses.replace(builtin.source, base_url=base_url)
    )
    ds.register(entry)
    try:
        yield entry
    finally:
        ds.unregister(MIRROR)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connecting is refused


def test_download_fills_the_cache_then_loads_without_the_network(real_examples, isolated, served):
    server, site = served
    with _mirror(server.url):
        d = ds.load(MIRROR, split="axonem_h")
        cache = isolated / "omniem_examples"
        assert all((cache / rel).is_file() for rel in ds.info(MIRROR).files)
        expected = ["/2d_MitoEM_H_0_0_0.tif", "/3d_AxonEM-H-0-0-0_0_0_0.tif", "/gly-z%3D0.tif"]
        assert sorted(server.requests) == expected  # one GET per file, names URL-quoted
        assert all(Path(p).parent == cache for p in d.source_files)
        assert d.image.shape == (16, 256, 256) and d.voxel_size == (30.0, 8.0, 8.0)
        original = tifffile.imread(real_examples / "3d_AxonEM-H-0-0-0_0_0_0.tif")
        np.testing.assert_array_equal(d.image, original)

        n = len(server.requests)
        assert ds.load(MIRROR, split="gly").image.shape == (1, 168, 336)
        assert len(server.requests) == n, "a complete cache must not touch the network"
        assert ds.fetch(MIRROR, verify=True) == cache


def test_a_checksum_mismatch_keeps_nothing_and_says_so(isolated, served):
    server, site = served
    tampered = site / "3d_AxonEM-H-0-0-0_0_0_0.tif"
    data = bytearray(tampered.read_bytes())
    data[5000] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with _mirror(server.url):
        with pytest.raises(DatasetUnavailableError, match="sha256 of the download does not match"):
            ds.load(MIRROR, split="axonem_h")
        assert not (isolated / "omniem_examples" / tampered.name).exists()
        assert server.requests  # it did download, then refused the bytes


def test_offline_names_the_missing_files_and_where_to_put_them(isolated, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/"
    with _mirror(url), pytest.raises(DatasetUnavailableError) as err:
        ds.load(MIRROR, split="gly")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'empty' / 'omniem_examples'}: dataset {MIRROR!r}")
    assert "does not exist" in msg and "3 file(s)" in msg and "ConnectionError" in msg
    assert "2d_MitoEM_H_0_0_0.tif, 3d_AxonEM-H-0-0-0_0_0_0.tif, gly-z=0.tif" in msg
    assert "point EMSSL_DATA at the parent folder" in msg


def test_a_missing_upstream_file_is_reported(isolated, served):
    server, site = served
    (site / "gly-z=0.tif").unlink()
    missing = r"HTTPError: 404.*1 file\(s\) \(gly-z"
    with _mirror(server.url), pytest.raises(DatasetUnavailableError, match=missing):
        ds.load(MIRROR, split="gly")


def test_a_dataset_without_a_download_url_explains_where_to_put_it(isolated, tmp_path):
    # Lucchi++ ships as an archive whose URL/hash are not pinned: the message is the only path.
    with pytest.raises(DatasetUnavailableError) as err:
        ds.load("lucchi_pp", split="val")
    msg = str(err.value)
    assert str(tmp_path / "empty" / "lucchi_pp") in msg
    assert "no per-file download URL" in msg and "casser.io" in msg
    assert "train/images/NNNN.png" in msg
    with pytest.raises(DatasetUnavailableError, match="downloading is disabled"):
        ds.fetch("isbi2012", download_missing=False)


def test_cache_location_follows_em5m_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EM5M_HOME", str(tmp_path / "h"))
    assert ds.cache_root() == tmp_path / "h" / "datasets"
    monkeypatch.delenv("EM5M_HOME")
    assert ds.cache_root().name == "datasets" and "em5m" in str(ds.cache_root())
