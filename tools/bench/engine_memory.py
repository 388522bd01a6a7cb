"""Peak memory of the inference engine on a volume far larger than RAM, against `omniem plan`.

Usage::

    python tools/bench/engine_memory.py make VOLUME.zarr [--gb 16] [--seed 0]
    python tools/bench/engine_memory.py run VOLUME.zarr [--model local-contrast|mito-2d]
                                        [--slices N] [--out DIR]

``make`` writes a uint8 Zarr (v3, zstd) of at least ``--gb`` GB *on disk*: a bank of
`em5m.synth` phantom blocks (cells, membranes, mitochondria, SEM contrast) with
Poisson-Gaussian-like noise (16 noise draws), placed chunk by chunk with a random flip, rot90 and
offset, so the texture is realistic and does not compress away. It is written chunk by chunk
(RAM stays small).

``run`` asks the planner (``omniem.engine.plan``, in its own process, as ``omniem plan`` does) for
the peak RAM of ``predict`` on the volume, then runs ``predict`` to an OME-Zarr target in a child
process under GNU ``/usr/bin/time -v`` and reads its "Maximum resident set size". Prints one JSON
object with both, their ratio and whether the plan was within 30 %.

Models: ``mito-2d`` (the bundled model) runs at ~0.2 M voxels/s here, i.e. a day for 16 G
voxels on 2 cores, so the whole-volume run
uses ``local-contrast``: a two-class 5x5 local-contrast convolution (a real torch module with a
``task``, tiled, blended and written exactly like an OmniEM model) that makes the run I/O- and
engine-bound, which is what this benchmark measures. ``--slices N`` runs on the first N slices
only (to check the plan of the real model on a part of the same volume).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHUNK = (8, 1024, 1024)


class LocalContrast:
    """``[B, 1, h, w]`` in [0, 1] -> 2 logits (darker / brighter than the 5x5 neighbourhood)."""

    task = "semantic"

    def __call__(self, x):  # noqa: ANN001, ANN204 - a torch callable
        import torch
        import torch.nn.functional as F

        x = x.float()
        d = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False) - x
        return 10.0 * torch.cat([d, -d], dim=1)


# --------------------------------------------------------------------------- make
def _bank(seed: int, n: int = 2) -> list[np.ndarray]:
    from em5m.synth import phantom

    out = []
    for i in range(n):
        p = phantom(CHUNK, voxel_size=(10, 5, 5), modality="sem", seed=seed + i, noise=None)
        out.append(np.asarray(p.image))
    return out


def make(path: Path, gb: float, seed: int) -> dict:
    if path.exists():
        raise SystemExit(f"{path} exists; remove it first")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    bank = [_noisy(b, rng) for b in _bank(seed) for _ in range(8)]
    # Probe the compressed size of one chunk to pick the number of chunks.
    probe_store = path.with_suffix(".probe.zarr")
    probe = _create(probe_store, CHUNK)
    probe[:] = _chunk(bank, rng)
    per_chunk = _du(probe_store)
    _rm(probe_store)
    n_chunks = int(np.ceil(gb * 1e9 / per_chunk))
    # As square as possible in y/x, 8 chunks deep in z.
    nz = 8
    nyx = int(np.ceil(np.sqrt(n_chunks / nz)))
    shape = (nz * CHUNK[0], nyx * CHUNK[1], nyx * CHUNK[2])
    arr = _create(
        path,
        shape,
        attributes={"voxel_size_nm": [10.0, 5.0, 5.0], "generator": "tools/bench/engine_memory.py"},
    )
    for cz in range(nz):
        for cy in range(nyx):
            for cx in range(nyx):
                arr[
                    cz * CHUNK[0] : (cz + 1) * CHUNK[0],
                    cy * CHUNK[1] : (cy + 1) * CHUNK[1],
                    cx * CHUNK[2] : (cx + 1) * CHUNK[2],
                ] = _chunk(bank, rng)
        print(f"make: {cz + 1}/{nz} chunk rows", file=sys.stderr, flush=True)
    return {
        "path": str(path),
        "shape": shape,
        "voxels": int(np.prod(shape)),
        "bytes_on_disk": _du(path),
        "chunks": CHUNK,
        "make_s": round(time.perf_counter() - t0, 1),
    }


def _create(path: Path, shape: tuple[int, ...], **kwargs: object):  # noqa: ANN202
    """A uint8 Zarr v3 array of ``CHUNK`` chunks, zstd level 1 (fast, as a facility writes)."""
    import zarr
    from zarr.codecs import ZstdCodec

    return zarr.create_array(
        str(path),
        shape=shape,
        chunks=CHUNK,
        dtype="uint8",
        compressors=ZstdCodec(level=1),
        **kwargs,
    )


def _chunk(bank: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    b = bank[int(rng.integers(len(bank)))]
    b = np.rot90(b, int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        b = b[:, :, ::-1]
    return np.roll(b, tuple(int(v) for v in rng.integers(0, 1024, 2)), axis=(1, 2))


def _noisy(b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shot-like noise: sigma grows with the signal (Poisson-Gaussian), in grey levels."""
    x = b.astype(np.float32)
    x += rng.standard_normal(x.shape, dtype=np.float32) * (3.0 + 0.6 * np.sqrt(x))
    return np.clip(x, 0, 255).astype(np.uint8)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- run
def _model(name: str):  # noqa: ANN202
    if name == "local-contrast":
        return LocalContrast()
    import omniem

    return omniem.load(name)


def _source(path: str, slices: int | None):  # noqa: ANN202
    if not slices:
        return path
    from em5m.io import open_volume

    vol = open_volume(path)
    return vol.data[:slices]


PREDICT_ARGS = {"tile": 256, "overlap": 0.25, "batch_size": 8, "dtype": "auto"}


def child_plan(args: argparse.Namespace) -> None:
    from omniem.engine import plan

    p = plan(_model(args.model), _source(args.volume, args.slices), args.target, **PREDICT_ARGS)
    print(json.dumps({k: p[k] for k in ("peak_ram_bytes", "memory", "n_blocks", "block_shape")}))


def child_predict(args: argparse.Namespace) -> None:
    from omniem.engine import predict

    t0 = time.perf_counter()
    predict(_model(args.model), _source(args.volume, args.slices), args.target, **PREDICT_ARGS)
    print(json.dumps({"predict_s": time.perf_counter() - t0}))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "prediction.ome.zarr"
    _rm(target)
    common = [args.volume, "--model", args.model, "--target", str(target)]
    if args.slices:
        common += ["--slices", str(args.slices)]
    me = [sys.executable, __file__]
    planned = json.loads(
        subprocess.run(me + ["_plan", *common], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    t0 = time.perf_counter()
    res = subprocess.run(
        ["/usr/bin/time", "-v", *me, "_predict", *common], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"predict failed:\n{res.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    measured = rss_kb * 1024
    from em5m.io import open_volume

    shape = tuple(open_volume(args.volume).data.shape)
    if args.slices:
        shape = (min(args.slices, shape[0]), *shape[1:])
    voxels = int(np.prod(shape))
    ratio = planned["peak_ram_bytes"] / measured
    return {
        "benchmark": "engine_memory",
        "volume": args.volume,
        "volume_bytes_on_disk": _du(Path(args.volume)),
        "shape": shape,
        "voxels": voxels,
        "model": args.model,
        "predict": PREDICT_ARGS,
        "plan": planned,
        "planned_peak_bytes": planned["peak_ram_bytes"],
        "measured_max_rss_bytes": measured,
        "plan_over_measured": round(ratio, 3),
        "plan_within_30pct": abs(ratio - 1) <= 0.30,
        "rss_within_3gb": measured <= 3 * 2**30,
        "wall_s": round(wall, 1),
        "voxels_per_s": round(voxels / wall),
        "output_complete": (target / ".omniem" / "complete").exists(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("volume")
    m.add_argument("--gb", type=float, default=16.0)
    m.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("volume")
    r.add_argument("--model", default="local-contrast")
    r.add_argument("--slices", type=int)
    r.add_argument("--out", default="engine-memory-out")
    for name in ("_plan", "_predict"):
        c = sub.add_parser(name)
        c.add_argument("volume")
        c.add_argument("--model", required=True)
        c.add_argument("--target", required=True)
        c.add_argument("--slices", type=int)
    args = ap.parse_args(argv)
    if args.cmd == "make":
        print(json.dumps(make(Path(args.volume), args.gb, args.seed), indent=1))
    elif args.cmd == "run":
        print(json.dumps(run(args), indent=1))
    elif args.cmd == "_plan":
        child_plan(args)
    else:
        child_predict(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
