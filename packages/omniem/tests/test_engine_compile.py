"""``predict(compile=True)``: the model through torch.compile with inductor freezing gives the
eager model's output (real EM: Lucchi++ val crops, a tiny random OmniEM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniem.engine import predict
from omniem.nets import NetConfig, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compiled_engine_equals_eager_and_pads_short_batches(emssl_data) -> None:
    import em5m.datasets

    img = np.ascontiguousarray(em5m.datasets.load("lucchi_pp", split="val").image[:2, :150, :170])
    torch.manual_seed(0)
    net = build(
        NetConfig(backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8), img_size=64
    ).eval()
    # 3 x 4 tiles per slice in batches of 5: the last batch of each block is short (padded).
    kw = {"tile": 64, "overlap": 0.25, "batch_size": 5, "dtype": "fp32", "output": "probabilities"}
    eager = predict(net, img, **kw)
    compiled = predict(net, img, compile=True, **kw)
    assert eager.shape == compiled.shape == (2, 2, 150, 170)
    np.testing.assert_allclose(compiled, eager, atol=1e-4, rtol=0)
    assert eager[1].std() > 0.01  # a real map, not a constant
