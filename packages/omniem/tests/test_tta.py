"""Test-time augmentation (8 flips/rotations) in `omniem.infer.predict_image` and the engine, on
real EM (a Lucchi++ val crop) with a tiny random OmniEM in fp32.

Reference: TTA of a tile is the mean of ``undo(net(do(tile)))`` over the 8 symmetries, so the
engine with ``tta=True`` must equal MONAI's sliding window whose predictor is that mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference

from omniem.engine import plan, predict
from omniem.infer import dihedral_transforms, predict_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KW = {"tile": 64, "overlap": 0.25, "dtype": "fp32", "batch_size": 4}


@pytest.fixture(scope="module")
def em(emssl_data: Path) -> np.ndarray:
    import em5m.datasets

    img = np.ascontiguousarray(em5m.datasets.load("lucchi_pp", split="val").image[:2, :96, :150])
    assert img.std() > 10
    return img


def _tta_net(net):  # noqa: ANN001, ANN202
    def fn(batch: torch.Tensor) -> torch.Tensor:
        return sum(undo(net(do(batch))) for do, undo in dihedral_transforms()) / 8.0

    return fn


def test_transforms_are_the_eight_distinct_symmetries() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    images = {(*do(x).flatten().tolist(), *do(x).shape) for do, _ in dihedral_transforms()}
    assert len(images) == 8
    for do, undo in dihedral_transforms():
        assert torch.equal(undo(do(x)), x)


def test_engine_tta_matches_monai_with_tta_predictor(net, em, tmp_path) -> None:
    ref = []
    for sl in em:
        x = torch.from_numpy(sl.astype(np.float32) / np.float32(255.0))[None, None]
        with torch.inference_mode():
            y = sliding_window_inference(
                x, (64, 64), 4, _tta_net(net), overlap=0.25, mode="gaussian", padding_mode="reflect"
            )
        ref.append(torch.softmax(y, 1)[0].numpy())
    ref = np.stack(ref, axis=1)
    got = predict(net, em, output="probabilities", tta=True, block=(1, 64), **KW)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # TTA changes the result of this (not rotation-invariant) network: the option is not a no-op.
    plain = predict(net, em, output="probabilities", block=(1, 64), **KW)
    assert np.abs(plain - got).max() > 1e-3
    # Out of core and resumable like any run; the ledger records the option.
    out = predict(
        net, em, tmp_path / "t.ome.zarr", output="probabilities", tta=True, block=(1, 64), **KW
    )
    np.testing.assert_array_equal(np.asarray(zarr.open_group(out, mode="r")["s0"][:]), got)
    assert zarr.open_group(out, mode="r").attrs["omniem"]["complete"] is True
    assert plan(net, em, tta=True, **KW)["tta"] is True
    assert plan(net, em, **KW)["tta"] is False


def test_predict_image_tta_is_the_mean_over_symmetries(net, em) -> None:
    img = em[0, :64, :64]
    x = torch.from_numpy(img.astype(np.float32) / np.float32(255.0))[None, None]
    with torch.inference_mode():
        ref = torch.softmax(_tta_net(net)(x), 1)[0]
    got = predict_image(net, img, tile=64, dtype="fp32", tta=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    plain = predict_image(net, img, tile=64, dtype="fp32")
    assert (plain - got).abs().max() > 1e-3
