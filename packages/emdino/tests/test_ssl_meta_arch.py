"""Student/teacher orchestration: masking, EMA, config, exact resume and export (real ISBI data)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from emdino.ssl.backbone import build_backbone
from emdino.ssl.checkpoint import export_backbone, load_checkpoint, load_exported
from emdino.ssl.config import ModelConfig, load_config
from emdino.ssl.meta_arch import SSLMetaArch
from emdino.ssl.monitor import (
    CollapseWarning,
    check_collapse,
    head_statistics,
    normalized_entropy,
    warn_collapse,
)
from emdino.ssl.train import config_changes, main, train

needs_data = pytest.mark.skipif(
    not os.environ.get("EMSSL_DATA"), reason="EMSSL_DATA (real EM data) not set"
)


def test_config_layers_and_errors() -> None:
    cfg = load_config("tiny_test", ["optim.base_lr=2e-3", "crops.n_local=3"])
    assert cfg.optim.base_lr == 0.002 and cfg.crops.n_local == 3
    assert cfg.model.embed_dim == 32  # from tiny_test.yaml
    assert cfg.loss.centering == "sinkhorn_knopp"  # from default.yaml
    with pytest.raises(ValueError, match="nosuch"):
        load_config("tiny_test", ["model.nosuch=1"])
    with pytest.raises(ValueError):
        load_config("tiny_test", ["crops.global_size=30"])  # not a multiple of the patch
    with pytest.raises(ValueError):
        load_config("tiny_test", ["optim.base_lr"])
    with pytest.raises(FileNotFoundError):
        load_config("no_such_config")


def test_masked_vit_substitutes_mask_token() -> None:
    torch.manual_seed(0)
    m = build_backbone(ModelConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2), 32)
    with torch.no_grad():
        m.mask_token.normal_()
    x = torch.randn(2, 1, 32, 32)
    none = torch.zeros(2, 16, dtype=torch.bool)
    some = none.clone()
    some[0, 3] = True
    base = m.tokens(x)
    masked = m.tokens(x, some)
    # Only patch 3 of image 0 changes (token index 1 + 3 after the class token).
    diff = (base - masked).abs().sum(-1)
    assert diff[0, 4] > 0 and diff.sum() == diff[0, 4]
    torch.testing.assert_close(m.tokens(x, none), base)
    m(x, some)["patch"].sum().backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        m.tokens(x, torch.zeros(2, 15, dtype=torch.bool))


def test_ema_update_is_exact() -> None:
    cfg = load_config("tiny_test")
    meta = SSLMetaArch(cfg)
    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(torch.randn_like(p))
    s, t = meta.param_pairs()
    before = [x.clone() for x in t]
    m = 0.9
    meta.update_teacher(m)
    for sp, t0, t1 in zip(s, before, t, strict=True):
        expected = torch.add(t0 * m, sp, alpha=1 - m)
        assert torch.equal(t1, expected)
        torch.testing.assert_close(t1, m * t0 + (1 - m) * sp, rtol=1e-6, atol=1e-7)
    meta.update_teacher(1.0)  # momentum 1 leaves the teacher unchanged
    assert all(torch.equal(a, b) for a, b in zip(t, [x.clone() for x in t], strict=True))
    with pytest.raises(ValueError):
        meta.update_teacher(1.5)


def test_resume_changes_guard() -> None:
    old = load_config("tiny_test").to_dict()
    new = load_config("tiny_test", ["train.log_every=5", "data.workers=2"]).to_dict()
    assert config_changes(old, new) == []
    bad = load_config("tiny_test", ["optim.base_lr=0.5"]).to_dict()
    assert config_changes(old, bad) == ["optim.base_lr"]


@needs_data
def test_resume_reproduces_uninterrupted_run(tmp_path: torch.Tensor) -> None:
    cfg = load_config("tiny_test")
    full = train(cfg, tmp_path / "full")["history"]
    assert len(full) == 6

    part = load_config("tiny_test", ["train.stop_after_steps=3"])
    first = train(part, tmp_path / "split")["history"]
    with pytest.raises(FileExistsError):
        train(cfg, tmp_path / "split")
    second = train(cfg, tmp_path / "split", resume=True)["history"]
    assert [r["step"] for r in first + second] == list(range(1, 7))
    for a, b in zip(full, first + second, strict=True):
        for k in ("loss", "dino", "koleo", "ibot"):
            assert abs(a[k] - b[k]) < 1e-6, (a["step"], k, a[k], b[k])

    # The checkpoint is plain tensors/values; the exported backbone reproduces the teacher.
    state = load_checkpoint(tmp_path / "split" / "last.pt")
    assert state["step"] == 6
    meta = SSLMetaArch(cfg)
    meta.teacher.load_state_dict(state["teacher"])
    out = tmp_path / "vit.safetensors"
    info = export_backbone(tmp_path / "split" / "last.pt", out, dtype=torch.float32)
    vit, meta_read = load_exported(out)
    assert json.loads(meta_read["normalization"])["std"] == pytest.approx(0.211906)
    assert info["step"] == "6"
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        expected = meta.teacher.backbone(x)["patch"]
        got = vit.forward_features(x)[:, 1:]
    torch.testing.assert_close(got, expected)

    # A resumed run refuses a changed recipe.
    changed = load_config("tiny_test", ["optim.total_steps=8", "teacher.momentum=0.5"])
    with pytest.raises(ValueError, match="teacher.momentum"):
        train(changed, tmp_path / "split", resume=True)


def test_cli_reports_user_errors(tmp_path: torch.Tensor, capsys: pytest.CaptureFixture) -> None:
    assert main(["no_such_config", "--out", str(tmp_path)]) == 2
    assert "no config file" in capsys.readouterr().err
    assert main(["tiny_test", "--set", "optim.batch_size=0", "--out", str(tmp_path)]) == 2


def _random_batch(cfg, b: int = 4, seed: int = 0) -> dict:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    gs, ls, p = cfg.crops.global_size, cfg.crops.local_size, cfg.model.patch_size
    masks = torch.rand(2 * b, (gs // p) ** 2, generator=g) < 0.3
    masks[:, 0] = True  # at least one masked patch per view
    return {
        "global_crops": torch.randn(2 * b, 1, gs, gs, generator=g),
        "local_crops": torch.randn(cfg.crops.n_local * b, 1, ls, ls, generator=g),
        "masks": masks,
        "n_global": 2,
        "n_local": cfg.crops.n_local,
    }


def test_target_entropy_flags_a_uniform_collapse() -> None:
    """A head that scores every image alike gives uniform targets: entropy 1 and a warning."""
    # Without LayerScale (whose 1e-5 start gives every image the same class token, the first
    # failure of docs/emdino/pretraining.md) a fresh head scores different images differently.
    cfg = load_config("tiny_test", ["train.precision=fp32", "model.layerscale=null"])
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg)
    healthy = meta.forward_backward(_random_batch(cfg), teacher_temp=0.04)
    assert 0.0 < float(healthy["dino_target_entropy"]) < 0.99
    assert 0.0 < float(healthy["ibot_target_entropy"]) < 0.99
    assert check_collapse("dino", float(healthy["dino_target_entropy"]), 500, 100) is None

    # Collapsed teacher: the bottleneck ignores its input, so every image gets the same scores
    # and Sinkhorn-Knopp (this config's centering) spreads each target evenly.
    last = meta.teacher.dino_head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.normal_()
    collapsed = meta.forward_backward(_random_batch(cfg), teacher_temp=0.04)
    stats = head_statistics(meta.teacher, _random_batch(cfg)["global_crops"])
    assert stats["bottleneck_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert stats["score_std_over_prototypes"] > 0  # scores differ by prototype, not by image
    student_stats = head_statistics(meta.student, _random_batch(cfg)["global_crops"])
    assert student_stats["bottleneck_cosine"] < 0.99
    ent = float(collapsed["dino_target_entropy"])
    assert ent == pytest.approx(1.0, abs=1e-5)
    msg = check_collapse("dino", ent, step=500, after_step=100)
    assert msg is not None and "uniform" in msg
    with pytest.warns(CollapseWarning, match="dino targets are uniform"):
        warn_collapse(msg)
    # One-hot targets are the other failure.
    assert "one-hot" in str(check_collapse("ibot", 0.001, step=500, after_step=100))
    with pytest.raises(ValueError):
        normalized_entropy(torch.ones(3))
