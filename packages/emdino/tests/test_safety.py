"""Checkpoint files are read without running code in them; broken files give clear errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import emdino
from emdino.errors import CorruptCheckpointError, UnsafeCheckpointError
from emdino.weights import read_checkpoint, write_safetensors
from emdino.weights.convert import timm_to_dinov2


class _WritesMarker:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for any malicious payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    model = emdino.load("vit_tiny_patch14.random", img_size=28, in_chans=3)
    return timm_to_dinov2(model.vit.state_dict())


@pytest.mark.parametrize("container", ["torch_zip", "torch_legacy", "raw_pickle_protocol2"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, state_dict, container):
    marker = tmp_path / "pwned"
    payload = {**state_dict, "evil": _WritesMarker(str(marker))}
    path = tmp_path / "evil.pt"
    if container == "torch_zip":
        torch.save(payload, path)
    elif container == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="refused") as err:
        emdino.load(path)
    assert not marker.exists()
    assert "evil.pt" in str(err.value) and "never unpickles" in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_raw_pickle_in_a_newer_protocol_is_refused_too(tmp_path, state_dict):
    """torch's safe unpickler stops at protocol-4 framing before it reaches the payload."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil4.pt"
    with open(path, "wb") as f:
        pickle.dump({**state_dict, "evil": _WritesMarker(str(marker))}, f, protocol=4)
    with pytest.raises((UnsafeCheckpointError, CorruptCheckpointError), match="evil4.pt"):
        emdino.load(path)
    assert not marker.exists()


def test_the_payload_would_have_run_under_plain_pickle(tmp_path):
    """Guards the test above: the marker object really executes when unpickled naively."""
    marker = tmp_path / "pwned"
    data = pickle.dumps(_WritesMarker(str(marker)))
    pickle.loads(data)  # noqa: S301 - deliberately unsafe, on our own bytes
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch", "safetensors"])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, state_dict, kind):
    path = tmp_path / ("w.pt" if kind == "torch" else "w.safetensors")
    if kind == "torch":
        torch.save(state_dict, path)
    else:
        write_safetensors(state_dict, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CorruptCheckpointError, match="truncated") as err:
        emdino.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 20])
def test_empty_or_foreign_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=os.fspath(path)):
        emdino.load(path)


def test_checkpoint_without_a_vit_is_named(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "cnn.pt")
    with pytest.raises(CorruptCheckpointError, match="cnn.pt: not a ViT checkpoint"):
        emdino.load(tmp_path / "cnn.pt")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(emdino.UnknownModelError, match="did you mean vit_small_patch14"):
        emdino.load("vit_smal_patch14")
