"""Fixtures for the em5m.sources tests: a real HTTP server on 127.0.0.1 and real datasets.

Test modules load this file by path (pytest runs with ``--import-mode=importlib``, so the tests
folder is not importable) and re-export the fixtures they use, e.g.::

    fx = load_fixtures()
    http_server = fx.http_server

Everything stays on 127.0.0.1 and is bounded in time. Datasets are written with the real
libraries (zarr-python, tensorstore, tifffile, mrcfile; the ``webknossos`` package in its own
venv), never mocked.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import json
import os
import re
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]

# --------------------------------------------------------------------------------------------
# HTTP server


@dataclass
class Rule:
    """Misbehaviour for requests whose path starts with ``prefix``."""

    prefix: str
    status: int | None = None  # answer this status instead ...
    times: int = 0  # ... for this many requests (then behave)
    drop_after: int | None = None  # send only this many body bytes, then close (``times``)
    require: tuple[str, str] | None = None  # (header, value) needed, else 401
    hits: int = 0


@dataclass
class FixtureServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 with routes, static mounts and failure rules.

    Static files support ``Range`` (``a-b``, ``a-``, ``-n``; 206/416), ``ETag`` and
    ``Last-Modified`` (tensorstore's S3 driver needs an ETag), ``HEAD``, and directory pages in
    the Apache ``Index of`` style (for EMPIAR listings).
    """

    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    mounts: dict[str, Path] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def json(self, path: str, obj: Any, status: int = 200) -> None:
        self.routes[path] = (status, "application/json", json.dumps(obj).encode())

    def mount(self, prefix: str, directory: Path) -> None:
        self.mounts[prefix.rstrip("/") + "/"] = Path(directory)

    def rule(self, prefix: str, **kw: Any) -> Rule:
        r = Rule(prefix, **kw)
        self.rules.append(r)
        return r

    def paths(self, method: str = "GET") -> list[str]:
        return [p for m, p, _ in self.log if m == method]

    def reset(self) -> None:
        self.routes.clear()
        self.mounts.clear()
        self.rules.clear()
        self.log.clear()


def _make_handler(server: FixtureServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - http.server API
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            full = self.path
            path = unquote(urlsplit(full).path)
            with server._lock:
                server.log.append((self.command, full, dict(self.headers.items())))
                rule = next((r for r in server.rules if path.startswith(r.prefix)), None)
                if rule is not None:
                    rule.hits += 1
            if rule is not None and rule.require is not None:
                name, value = rule.require
                if self.headers.get(name) != value:
                    return self._send(401, "text/plain", b"token required", head)
            if rule is not None and rule.status is not None and rule.hits <= rule.times:
                return self._send(rule.status, "text/plain", b"try again", head)
            drop = None
            if rule is not None and rule.drop_after is not None and rule.hits <= rule.times:
                drop = rule.drop_after
            if path in server.routes:
                status, ctype, body = server.routes[path]
                return self._send(status, ctype, body, head)
            for prefix, root in server.mounts.items():
                if path.startswith(prefix) or path + "/" == prefix:
                    rel = path[len(prefix) :] if path.startswith(prefix) else ""
                    target = (root / rel).resolve()
                    if root.resolve() not in (target, *target.parents):
                        break
                    if target.is_dir():
                        if not path.endswith("/"):
                            break
                        return self._send(200, "text/html", _index_page(path, target), head)
                    if target.is_file():
                        return self._file(target, head, drop)
                    break
            self._send(404, "text/plain", b"not found", head)

        def _file(self, target: Path, head: bool, drop: int | None) -> None:
            data = target.read_bytes()
            size = len(data)
            st = target.stat()
            extra = {
                "ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "Accept-Ranges": "bytes",
            }
            status, start, stop = 200, 0, size
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if not m or (m.group(1) == "" and m.group(2) == ""):
                    return self._send(416, "text/plain", b"bad range", head, extra)
                if m.group(1) == "":
                    start, stop = max(0, size - int(m.group(2))), size
                else:
                    start = int(m.group(1))
                    stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
                if start >= size:
                    extra["Content-Range"] = f"bytes */{size}"
                    return self._send(416, "text/plain", b"", head, extra)
                status = 206
                extra["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
            body = data[start:stop]
            self._send(status, "application/octet-stream", body, head, extra, drop)

        def _send(
            self,
            status: int,
            ctype: str,
            body: bytes,
            head: bool,
            extra: dict[str, str] | None = None,
            drop: int | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            if drop is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if head:
                return
            if drop is not None:
                # Promise the full length, send part of it, hang up: a dropped download.
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


def _index_page(url_path: str, directory: Path) -> bytes:
    """An Apache-style ``Index of`` page (the layout ftp.ebi.ac.uk serves)."""
    rows = [
        '<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=S;O=A">Size</a></th></tr>',
        f'<tr><td><a href="{html.escape(str(Path(url_path).parent))}/">Parent Directory</a>'
        "</td><td>-</td></tr>",
    ]
    for child in sorted(directory.iterdir()):
        name = child.name + ("/" if child.is_dir() else "")
        size = "-" if child.is_dir() else f"{child.stat().st_size / 1024:.1f}K"
        rows.append(
            f'<tr><td><a href="{html.escape(name)}">{html.escape(name)}</a></td>'
            f'<td align="right">2023-05-01 10:00  </td><td align="right">{size}</td></tr>'
        )
    return (
        f"<html><head><title>Index of {html.escape(url_path)}</title></head><body>"
        f"<h1>Index of {html.escape(url_path)}</h1><table>{''.join(rows)}</table>"
        "</body></html>"
    ).encode()


@pytest.fixture(scope="session")
def _server_session() -> Iterator[FixtureServer]:
    state = FixtureServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def http_server(_server_session: FixtureServer, monkeypatch: pytest.MonkeyPatch) -> FixtureServer:
    """The 127.0.0.1 server, emptied for this test (routes, mounts, rules, log)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _server_session.reset()
    return _server_session


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAST = {"retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 10}
"""Options that keep failing requests fast in tests."""


# --------------------------------------------------------------------------------------------
# OpenOrganelle-style stores


def volume_data(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.uint8) -> np.ndarray:
    """Deterministic random test data."""
    return np.random.default_rng(seed).integers(0, 250, size=shape).astype(dtype)


def downsample2(a: np.ndarray) -> np.ndarray:
    """2x2x2 mean down-sampling of a (z, y, x) array (even sizes)."""
    z, y, x = a.shape
    return a.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5)).astype(a.dtype)


def write_openorganelle_zarr(root: Path, dataset_id: str, data: np.ndarray) -> Path:
    """``<root>/<id>/<id>.zarr/recon-1/em/fibsem-uint8`` with s0/s1: OME-NGFF 0.4, Zarr v2.

    Written with zarr-python like the real bucket: zstd, ``/`` chunk key separator, 8 nm z,
    4 nm y/x at s0 (anisotropic, so voxel-size order mistakes show), half-voxel translation.
    """
    import numcodecs
    import zarr

    group_path = root / dataset_id / f"{dataset_id}.zarr" / "recon-1" / "em" / "fibsem-uint8"
    store = zarr.storage.LocalStore(group_path.parents[2])
    top = zarr.open_group(store, mode="w", zarr_format=2)
    group = top.require_group("recon-1").require_group("em").require_group("fibsem-uint8")
    levels = [data, downsample2(data)]
    scales = [[8.0, 4.0, 4.0], [16.0, 8.0, 8.0]]
    for i, arr in enumerate(levels):
        z = group.create_array(
            f"s{i}",
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=(4, 16, 16),
            compressors=numcodecs.Zstd(level=3),
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        z[...] = arr
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": "fibsem-uint8",
            "axes": [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"],
            "datasets": [
                {
                    "path": f"s{i}",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": s},
                        {
                            "type": "translation",
                            "translation": [(v - scales[0][k]) / 2 for k, v in enumerate(s)],
                        },
                    ],
                }
                for i, s in enumerate(scales)
            ],
        }
    ]
    return group_path


def write_openorganelle_n5(root: Path, dataset_id: str, data: np.ndarray) -> Path:
    """``<root>/<id>/<id>.n5/em/fibsem-uint16`` with s0/s1: COSEM + neuroglancer attributes.

    Arrays written with tensorstore's n5 driver (dimensions x, y, z as N5 stores them); group
    attributes as the COSEM bucket has them: ``multiscales`` with per-level ``transform`` (axes
    z, y, x), ``scales``, ``axes`` (x, y, z), ``units`` and ``pixelResolution``.
    """
    import tensorstore as ts

    n5_root = root / dataset_id / f"{dataset_id}.n5"
    group = n5_root / "em" / "fibsem-uint16"
    levels = [data, downsample2(data)]
    res_zyx = [[6.0, 4.0, 4.0], [12.0, 8.0, 8.0]]
    for i, arr in enumerate(levels):
        xyz = np.ascontiguousarray(arr.transpose(2, 1, 0))
        store = ts.open(
            {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": str(group / f"s{i}")},
                "metadata": {
                    "dimensions": list(xyz.shape),
                    "blockSize": [16, 16, 4],
                    "dataType": "uint16",
                    "compression": {"type": "gzip"},
                },
                "create": True,
                "delete_existing": True,
            }
        ).result()
        store.write(xyz).result()
        attrs_path = group / f"s{i}" / "attributes.json"
        attrs = json.loads(attrs_path.read_text())
        attrs["pixelResolution"] = {"dimensions": res_zyx[i][::-1], "unit": "nm"}
        attrs["transform"] = {
            "axes": ["z", "y", "x"],
            "units": ["nm"] * 3,
            "scale": res_zyx[i],
            "translate": [0.0, 0.0, 0.0],
        }
        attrs_path.write_text(json.dumps(attrs))
    (n5_root / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    (n5_root / "em" / "attributes.json").write_text("{}")
    (group / "attributes.json").write_text(
        json.dumps(
            {
                "axes": ["x", "y", "z"],
                "units": ["nm", "nm", "nm"],
                "scales": [[1, 1, 1], [2, 2, 2]],
                "pixelResolution": {"dimensions": res_zyx[0][::-1], "unit": "nm"},
                "multiscales": [
                    {
                        "name": "fibsem-uint16",
                        "datasets": [
                            {
                                "path": f"s{i}",
                                "transform": {
                                    "axes": ["z", "y", "x"],
                                    "units": ["nm"] * 3,
                                    "scale": r,
                                    "translate": [0.0, 0.0, 0.0],
                                },
                            }
                            for i, r in enumerate(res_zyx)
                        ],
                    }
                ],
            }
        )
    )
    return group


def write_precomputed(path: Path, data: np.ndarray, resolutions: list[list[float]]) -> Path:
    """A neuroglancer precomputed image with one scale per resolution (x, y, z nm), written
    with tensorstore. Scale ``k`` holds ``data`` down-sampled 2x in x/y only (anisotropic)."""
    import tensorstore as ts

    for k, res in enumerate(resolutions):
        arr = data[:, :: 2**k, :: 2**k] if k else data
        xyz = np.ascontiguousarray(arr.transpose(2, 1, 0))[..., None]
        store = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": str(path)},
                "multiscale_metadata": {
                    "type": "image",
                    "data_type": str(data.dtype),
                    "num_channels": 1,
                },
                "scale_metadata": {
                    "size": list(xyz.shape[:3]),
                    "resolution": res,
                    "encoding": "raw",
                    "chunk_size": [16, 16, 4],
                },
                "create": True,
            }
        ).result()
        store[ts.d[:].translate_to[0]].write(xyz).result()
    return path


# --------------------------------------------------------------------------------------------
# WebKnossos dataset made with the real webknossos package (own venv)

WK_SCRIPT = r"""
import json, sys
import numpy as np
import webknossos as wk

def main():
    out = sys.argv[1]
    ds = wk.Dataset(out, voxel_size=(4.0, 4.0, 35.0))
    bbox = wk.BoundingBox((8, 16, 2), (64, 48, 10))
    layer = ds.add_layer("color", wk.COLOR_CATEGORY, dtype="uint8", num_channels=1,
                         data_format="zarr3", bounding_box=bbox)
    data = np.random.default_rng(7).integers(0, 250, size=(64, 48, 10), dtype=np.uint8)
    # Small shards (default 1024^3) keep writing fast; the layout is otherwise the default.
    shape = {"chunk_shape": 32, "shard_shape": 64}
    layer.add_mag("1", **shape).write(data, absolute_offset=(8, 16, 2), allow_unaligned=True)
    mag2 = data.reshape(32, 2, 24, 2, 10).max(axis=(1, 3))
    layer.add_mag("2-2-1", **shape).write(mag2, absolute_offset=(8, 16, 2),
                                          allow_unaligned=True)
    np.save(out + "/../expected_mag1_xyz.npy", data)
    np.save(out + "/../expected_mag2_xyz.npy", mag2)

if __name__ == "__main__":
    main()
"""


def webknossos_python() -> Path | None:
    """The webknossos venv's python, created by tools/setup-webknossos-venv.sh if needed."""
    venv = Path(os.environ.get("EMSSL_WK_VENV", REPO / ".venv-webknossos"))
    py = venv / "bin" / "python"
    if not py.exists():
        script = REPO / "tools" / "setup-webknossos-venv.sh"
        try:
            subprocess.run(["bash", str(script)], check=True, timeout=600, capture_output=True)
        except (subprocess.SubprocessError, OSError):
            return None
    return py if py.exists() else None


@pytest.fixture(scope="session")
def wk_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WebKnossos zarr3 dataset (2 mags, voxel 4x4x35 nm, offset bbox) made by webknossos."""
    py = webknossos_python()
    if py is None:
        pytest.skip(
            "the webknossos venv could not be created (bash tools/setup-webknossos-venv.sh)"
        )
    base = tmp_path_factory.mktemp("wk")
    out = base / "l4_test"
    script = base / "make_wk.py"
    script.write_text(WK_SCRIPT)
    proc = subprocess.run(
        [str(py), str(script), str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# --------------------------------------------------------------------------------------------
# DM4/DM3 writer (Gatan Digital Micrograph), from the format description


_DM_TYPES = {
    np.dtype(np.int16): (2, 1),
    np.dtype(np.float32): (6, 2),
    np.dtype(np.uint8): (10, 6),
    np.dtype(np.int32): (3, 7),
    np.dtype(np.uint16): (4, 10),
    np.dtype(np.float64): (7, 12),
}
"""numpy dtype -> (tag element type, image DataType code)."""


class _DMWriter:
    """Writes the tag tree of a DM3 (``version=3``) or DM4 file."""

    def __init__(self, version: int) -> None:
        self.v = version
        self.n = ">Q" if version == 4 else ">I"  # size fields: 8 bytes in DM4, 4 in DM3

    def group(self, entries: list[tuple[str, bytes]]) -> bytes:
        out = b"\x00\x00" + struct.pack(self.n, len(entries))
        for label, tag in entries:
            out += tag[:1] + struct.pack(">H", len(label)) + label.encode("latin-1")
            if self.v == 4:
                out += struct.pack(">Q", len(tag) - 1)
            out += tag[1:]
        return out

    def dir(self, entries: list[tuple[str, bytes]]) -> bytes:
        return b"\x14" + self.group(entries)

    def data(self, info: list[int], payload: bytes) -> bytes:
        return (
            b"\x15%%%%"
            + struct.pack(self.n, len(info))
            + b"".join(struct.pack(self.n, i) for i in info)
            + payload
        )

    def scalar(self, code: int, fmt: str, value: Any) -> bytes:
        return self.data([code], struct.pack("<" + fmt, value))

    def array(self, code: int, values: np.ndarray) -> bytes:
        return self.data([20, code, values.size], np.ascontiguousarray(values).tobytes())

    def string16(self, text: str) -> bytes:
        return self.array(4, np.frombuffer(text.encode("utf-16-le"), "<u2"))


def write_dm(path: Path, data: np.ndarray, scale_nm: list[float], version: int = 4) -> Path:
    """A DM3/DM4 file: a thumbnail image first, then ``data`` (2D/3D, C order ``(z,) y, x``)
    with calibrations ``scale_nm`` (per axis x, y[, z], in nm), plus unrelated tags."""
    w = _DMWriter(version)
    elem, dtype_code = _DM_TYPES[data.dtype]

    def image(arr: np.ndarray, scales: list[float], units: str) -> bytes:
        dims = list(reversed(arr.shape))  # x first
        cal = [
            w.dir(
                [
                    ("Origin", w.scalar(6, "f", 0.0)),
                    ("Scale", w.scalar(6, "f", s)),
                    ("Units", w.string16(units)),
                ]
            )
            for s in scales
        ]
        return w.dir(
            [
                (
                    "ImageData",
                    w.dir(
                        [
                            (
                                "Calibrations",
                                w.dir(
                                    [
                                        ("Brightness", w.dir([("Scale", w.scalar(6, "f", 1))])),
                                        ("Dimension", w.dir([("", c) for c in cal])),
                                    ]
                                ),
                            ),
                            (
                                "Data",
                                w.array(elem, arr.astype(arr.dtype.newbyteorder("<")).ravel()),
                            ),
                            ("DataType", w.scalar(3, "i", dtype_code)),
                            ("Dimensions", w.dir([("", w.scalar(5, "I", d)) for d in dims])),
                            ("PixelDepth", w.scalar(5, "I", arr.dtype.itemsize)),
                        ]
                    ),
                ),
                ("Name", w.string16("test image")),
            ]
        )

    thumb = np.zeros((8, 8), data.dtype)
    root = w.group(
        [
            ("ApplicationBounds", w.array(3, np.array([0, 0, 600, 800], "<i4"))),
            (
                "ImageList",
                w.dir([("", image(thumb, [1.0, 1.0], "")), ("", image(data, scale_nm, "nm"))]),
            ),
            ("InImageMode", w.scalar(8, "?", True)),
            ("Pairs", w.data([20, 15, 0, 2, 0, 3, 0, 6, 2], struct.pack("<ifif", 1, 2.0, 3, 4.0))),
        ]
    )
    if version == 4:
        header = struct.pack(">IQI", 4, len(root), 1)
    else:
        header = struct.pack(">III", 3, len(root), 1)
    path.write_bytes(header + root + b"\x00" * 8)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
