"""The weights store against a loopback HTTP server: download, resume, hash checks, offline."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

import emdino
from emdino.errors import ChecksumError, DownloadError, WeightsNotFoundError
from emdino.models import (
    EMDINO_MEAN,
    EMDINO_STD,
    PretrainedCfg,
    register_pretrained,
    unregister_pretrained,
)
from emdino.weights import store
from emdino.weights.convert import timm_to_dinov2

pytestmark = pytest.mark.network


@dataclass
class Server:
    """What the loopback server serves and what it saw."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> serve only this many bytes of the body, then drop the connection (once).
    cut_after: dict[str, int] = field(default_factory=dict)
    ranges: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if rng and state.ranges:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.cut_after.pop(self.path, None)
            self.wfile.write(body if cut is None else body[:cut])
            if cut is not None:
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919) % 251 for i in range(n))


def test_download_checks_sha256_and_leaves_no_part(server, tmp_path):
    data = _payload()
    server.files["/w.bin"] = data
    out = store.download(
        f"{server.url}/w.bin",
        tmp_path / "w.bin",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        progress=False,
    )
    assert out.read_bytes() == data
    assert not (tmp_path / "w.bin.part").exists()
    assert server.requests == [("/w.bin", None)]


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    data = _payload()
    server.files["/w.bin"] = data
    server.cut_after["/w.bin"] = 100_000
    url, dest = f"{server.url}/w.bin", tmp_path / "w.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        store.download(url, dest, progress=False)
    part = tmp_path / "w.bin.part"
    assert part.stat().st_size == 100_000 and not dest.exists()
    store.download(url, dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-1] == ("/w.bin", "bytes=100000-")


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    data = _payload()
    server.files["/w.bin"] = data
    server.ranges = False
    (tmp_path / "w.bin.part").write_bytes(b"\0" * 5000)  # stale, wrong bytes
    store.download(f"{server.url}/w.bin", tmp_path / "w.bin", progress=False)
    assert (tmp_path / "w.bin").read_bytes() == data


def test_sha256_mismatch_deletes_the_download(server, tmp_path):
    server.files["/w.bin"] = _payload()
    with pytest.raises(ChecksumError, match="expected 0000") as err:
        store.download(f"{server.url}/w.bin", tmp_path / "w.bin", sha256="0" * 64, progress=False)
    assert hashlib.sha256(_payload()).hexdigest() in str(err.value)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        store.download(f"{server.url}/missing", tmp_path / "x", progress=False)


def _register(name: str, url: str | None, filename: str, **kw) -> PretrainedCfg:
    cfg = PretrainedCfg(
        arch="vit_tiny_patch14",
        tag=name,
        img_size=56,
        in_chans=3,
        mean=(EMDINO_MEAN,) * 3,
        std=(EMDINO_STD,) * 3,
        url=url,
        filename=filename,
        **kw,
    )
    register_pretrained(cfg)
    return cfg


@pytest.fixture
def checkpoint() -> tuple[bytes, torch.nn.Module]:
    """A ViT-T/14 checkpoint in the official DINOv2 layout, as bytes, and its source model."""
    import io

    src = emdino.load("vit_tiny_patch14.random", img_size=56, in_chans=3)
    buf = io.BytesIO()
    torch.save(timm_to_dinov2(src.vit.state_dict()), buf)
    return buf.getvalue(), src


def test_load_by_name_downloads_into_emdino_home_and_reproduces_the_model(
    server, emdino_home, checkpoint
):
    data, src = checkpoint
    server.files["/vitt.pth"] = data
    cfg = _register(
        "loopback",
        f"{server.url}/vitt.pth",
        "vitt.pth",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )
    try:
        model = emdino.load(cfg.name, in_chans=3, progress=False)
        assert (emdino_home / "weights" / "vitt.pth").read_bytes() == data
        emdino.load(cfg.name, progress=False)  # second load: from the cache
    finally:
        unregister_pretrained(cfg.name)
    assert [p for p, _ in server.requests] == ["/vitt.pth"]
    x = torch.rand(1, 1, 56, 56)
    assert torch.equal(model.features(x).patch, src.features(x).patch)


def test_cached_file_with_wrong_hash_is_refused(emdino_home, checkpoint):
    data, _ = checkpoint
    (emdino_home / "weights").mkdir(parents=True)
    (emdino_home / "weights" / "bad.pth").write_bytes(data)
    cfg = _register("badhash", None, "bad.pth", sha256="ab" * 32)
    try:
        with pytest.raises(ChecksumError, match="bad.pth: sha256 .* does not match"):
            emdino.load(cfg.name)
    finally:
        unregister_pretrained(cfg.name)


def test_cached_truncated_file_with_known_size_is_refused(emdino_home, checkpoint):
    data, _ = checkpoint
    (emdino_home / "weights").mkdir(parents=True)
    (emdino_home / "weights" / "short.pth").write_bytes(data[: len(data) // 2])
    cfg = _register("short", None, "short.pth", size=len(data))
    try:
        with pytest.raises(ChecksumError, match="truncated"):
            emdino.load(cfg.name)
    finally:
        unregister_pretrained(cfg.name)


def test_offline_message_names_the_file_url_and_target_path(emdino_home, monkeypatch):
    monkeypatch.setenv("EMDINO_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        emdino.load("dinov2_vits14")
    msg = str(err.value)
    target = emdino_home / "weights" / "dinov2_vits14_pretrain.pth"
    assert "EMDINO_OFFLINE is set" in msg
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth" in msg
    assert str(target) in msg


def test_unreachable_server_gives_the_manual_route(emdino_home):
    cfg = _register("unreachable", "http://127.0.0.1:9/none.pth", "none.pth")  # discard port
    try:
        with pytest.raises(WeightsNotFoundError, match="download failed .* yourself and put"):
            emdino.load(cfg.name, progress=False)
    finally:
        unregister_pretrained(cfg.name)


def test_weights_without_url_say_where_to_get_them(emdino_home):
    with pytest.raises(WeightsNotFoundError) as err:
        emdino.load("emdinov1")
    msg = str(err.value)
    assert "backbone_emdino_v1.pt" in msg and "drive.google.com" in msg
    assert str(emdino_home / "weights" / "backbone_emdino_v1.pt") in msg


def test_the_default_model_is_bundled_and_works_offline(emdino_home, monkeypatch):
    monkeypatch.setenv("EMDINO_OFFLINE", "1")
    model = emdino.load()
    assert model.name == emdino.default_model() == "vit_tiny_patch8.emdino"
    assert model.cfg.bundled and not model.cfg.random_init
    assert not emdino_home.exists()  # nothing was fetched or written
    weights = store.cached_path(model.cfg)
    assert not weights.with_name(weights.name + ".sha256").exists()  # no stamp in the package
    # The bundled weights are the trained ones, not a random init of the same architecture.
    rand = emdino.load("vit_tiny_patch8.random")
    a, b = model.vit.blocks[0].attn.qkv.weight, rand.vit.blocks[0].attn.qkv.weight
    assert not torch.allclose(a, b)


def test_verify_remembers_the_digest(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    digest = store.verify(f, None)
    assert digest == hashlib.sha256(b"abc").hexdigest()
    stamp = tmp_path / "a.bin.sha256"
    assert stamp.read_text().split()[0] == digest
    f.write_bytes(b"abd")  # changed file: new size/mtime key, so it is hashed again
    assert store.verify(f, None) == hashlib.sha256(b"abd").hexdigest()
