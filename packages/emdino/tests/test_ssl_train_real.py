"""CI: pretrain a few real steps from a tiny em5m-format corpus of real EM tiles, then resume.

The corpus (WebDataset tar shards ``shard-NNNNNN.tar`` with ``<key>.png`` + ``<key>.json`` and a
parquet manifest) is written here from EMSSL_DATA tiles, in the layout em5m's curation writes.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emdino.precision import resolve_precision
from emdino.ssl.config import load_config
from emdino.ssl.curves import read_jsonl
from emdino.ssl.train import main, train

pytestmark = pytest.mark.skipif(
    not os.environ.get("EMSSL_DATA"), reason="EMSSL_DATA (real EM data) not set"
)


def _real_tiles(tile: int = 96) -> list[tuple[str, np.ndarray, dict]]:
    from em5m import datasets

    out = []
    for name, split, n in (
        ("isbi2012", "test", 3),
        ("lucchi_pp", "train", 3),
        ("drosophila_vnc", "train", 2),
    ):
        ds = datasets.load(name, split=split)
        for z in range(n):
            im = ds.image[z * 5]
            for k, (y, x) in enumerate(((0, 0), (tile, tile), (2 * tile, 0))):
                meta = {"dataset": name, "split": split, "z": z * 5, "y": y, "x": x}
                out.append((f"{name}-{z * 5:03d}-{k}", im[y : y + tile, x : x + tile], meta))
    return out


def _write_corpus(
    root: Path, tiles: list[tuple[str, np.ndarray, dict]], per_shard: int = 10
) -> None:
    root.mkdir(parents=True)
    rows = []
    for s in range(0, len(tiles), per_shard):
        shard = f"shard-{s // per_shard:06d}.tar"
        with tarfile.open(root / shard, "w") as tf:
            for key, im, meta in tiles[s : s + per_shard]:
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="PNG")
                for name, data in (
                    (f"{key}.png", buf.getvalue()),
                    (f"{key}.json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "shard": shard, **meta})
    pq.write_table(pa.Table.from_pylist(rows), root / "manifest.parquet")


def test_pretrain_on_real_corpus_loss_decreases_and_resumes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    _write_corpus(corpus, _real_tiles())
    assert len(list(corpus.glob("shard-*.tar"))) == 3
    settings = [
        f"data.sources=[{{kind: corpus, uri: '{corpus}'}}]",
        "data.tile_size=96",
        "data.workers=1",  # exercise a DataLoader worker process
        "optim.total_steps=10",
        "train.checkpoint_every=5",
    ]
    out = tmp_path / "run"
    first = train(load_config("tiny_test", [*settings, "train.stop_after_steps=5"]), out)
    assert first["step"] == 5
    # The CLI resumes the run from last.pt (step 5) to the end.
    assert (
        main(
            ["tiny_test", "--out", str(out), "--resume", *sum((["--set", s] for s in settings), [])]
        )
        == 0
    )
    records = read_jsonl(out / "metrics.jsonl")
    starts = [r for r in records if r.get("event") == "start"]
    assert [r["step"] for r in starts] == [0, 5]
    assert starts[0]["sources"] == {"corpus": {"images": 24, "entries": 24}}
    losses = [r["loss"] for r in records if "loss" in r]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 11))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    # The collapse monitor is logged every step: normalised target entropies in (0, 1].
    for key in ("dino_target_entropy", "ibot_target_entropy"):
        values = [r[key] for r in records if "loss" in r]
        assert all(0.0 < v <= 1.0 + 1e-6 for v in values), (key, values)
    # tiny_test keeps DINOv2's LayerScale 1e-5: every image starts with the same class token, so
    # the DINO targets are uniform and the run records (and warns about) the collapse once.
    events = [r for r in records if r.get("event") == "collapse"]
    assert events and events[0]["head"] == "dino" and "uniform" in events[0]["message"]
    for name in ("config.yaml", "curves.png", "last.pt", "step_0000010.pt"):
        assert (out / name).is_file(), name
    # The saved config names the precision the run computed in, never "auto".
    assert load_config(out / "config.yaml").train.precision == resolve_precision("auto")
    assert not (out / "step_0000005.pt").exists()  # keep_checkpoints: 1


def test_init_backbone_starts_a_new_recipe_from_a_trained_backbone(tmp_path: Path) -> None:
    """``train.init_backbone``: both backbones start from a run's teacher (or an export)."""
    import torch
    from safetensors.torch import save_file

    from emdino.ssl.checkpoint import backbone_state_dict, load_checkpoint
    from emdino.ssl.meta_arch import SSLMetaArch
    from emdino.ssl.train import init_backbone

    corpus = tmp_path / "corpus"
    _write_corpus(corpus, _real_tiles())
    settings = [
        f"data.sources=[{{kind: corpus, uri: '{corpus}'}}]",
        "data.tile_size=96",
        "optim.total_steps=3",
    ]
    train(load_config("tiny_test", settings), tmp_path / "stage1")
    trained = backbone_state_dict(load_checkpoint(tmp_path / "stage1" / "last.pt"))
    export = tmp_path / "vit.safetensors"
    save_file({k: v.half().contiguous() for k, v in trained.items()}, str(export))

    for source, atol in ((tmp_path / "stage1" / "last.pt", 0.0), (export, 1e-2)):
        meta = SSLMetaArch(load_config("tiny_test", settings))
        before = meta.student.dino_head.state_dict()
        init_backbone(meta, source)
        for net in (meta.student, meta.teacher):
            got = net.backbone.vit.state_dict()
            for k, v in trained.items():
                torch.testing.assert_close(got[k], v, rtol=0, atol=atol)
        # Heads start fresh (not copied from the run).
        for k, v in meta.student.dino_head.state_dict().items():
            assert torch.equal(v, before[k]), k

    # A run with the option continues from the trained weights (and records it in its config).
    stage2 = train(
        load_config(
            "tiny_test",
            [*settings, f"train.init_backbone={tmp_path / 'stage1' / 'last.pt'}"],
        ),
        tmp_path / "stage2",
    )
    assert stage2["step"] == 3
    assert "init_backbone" in (tmp_path / "stage2" / "config.yaml").read_text()

    meta = SSLMetaArch(load_config("tiny_test", [*settings, "model.embed_dim=48"]))
    with pytest.raises(ValueError, match="does not fit"):
        init_backbone(meta, export)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        init_backbone(meta, tmp_path / "missing.pt")
