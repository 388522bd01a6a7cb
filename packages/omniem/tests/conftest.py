"""Shared fixtures: the real EM data folder (EMSSL_DATA), one torch thread for engine tests, a
tiny random OmniEM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def emssl_data() -> Path:
    """The real data folder; CI sets EMSSL_DATA, and a missing folder is a failure, not a skip."""
    root = os.environ.get("EMSSL_DATA")
    if not root or not Path(root, "lucchi_pp").is_dir():
        pytest.fail("EMSSL_DATA must point at the shared EM data folder (see README)")
    return Path(root)


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (small, fast and polite on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def net():
    """A tiny 2-class OmniEM on a random ViT-T/8 (feature size 8), seeded, in eval mode."""
    from omniem.nets import NetConfig, build

    torch.manual_seed(0)
    cfg = NetConfig(backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8)
    return build(cfg, img_size=64).eval()
