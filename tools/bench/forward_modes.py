"""How fast can one model's tiles go on this machine? Execution modes against fp32, same run.

Usage::

    python tools/bench/forward_modes.py [--model mito-2d] [--tile 256] [--batch-size 8]

Times a batch of ``--batch-size`` tiles through the model (after a warm-up) in each mode:

- ``fp32``: one process, all cores (the baseline: what MONAI's sliding window runs);
- ``bf16``: bf16 autocast, one process, all cores (the engine's default);
- ``bf16_channels_last``: the same with channels-last tensors (oneDNN's preferred layout);
- ``bf16_processes``: bf16, one process per core with one torch thread each, all busy at once
  (the engine's ``--devices cpu:N``); its time per batch is the wall time / batches done;
- ``bf16_processes_channels_last``: the same with channels-last tensors.

Prints one JSON object with seconds per batch and ``speedup_vs_fp32`` per mode: the ceiling of
``ratio_vs_monai`` in `tools/bench/inference.py`, whose MONAI side runs the same forward in fp32.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def _load(name: str) -> torch.nn.Module:
    import omniem

    return omniem.load(name).eval()


def _time(net: torch.nn.Module, x: torch.Tensor, bf16: bool, reps: int) -> float:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            net(x)
    return (time.perf_counter() - t0) / reps


def _worker(name: str, tile: int, batch: int, reps: int, cl: bool, start, out) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    net = _load(name)
    x = torch.rand(batch, 1, tile, tile, generator=torch.Generator().manual_seed(0))
    if cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    start.wait()
    out.put(_time(net, x, True, reps))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mito-2d")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    net = _load(args.model)
    x = torch.rand(
        args.batch_size, 1, args.tile, args.tile, generator=torch.Generator().manual_seed(0)
    )
    res: dict[str, float] = {}
    res["fp32"] = _time(net, x, False, args.reps)
    res["bf16"] = _time(net, x, True, args.reps)
    net_cl = net.to(memory_format=torch.channels_last)
    res["bf16_channels_last"] = _time(
        net_cl, x.contiguous(memory_format=torch.channels_last), True, args.reps
    )
    del net, net_cl
    ctx = mp.get_context("spawn")
    for cl in (False, True):
        start, out = ctx.Barrier(cores + 1), ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker,
                args=(args.model, args.tile, args.batch_size, args.reps, cl, start, out),
            )
            for _ in range(cores)
        ]
        for p in procs:
            p.start()
        start.wait()
        per_proc = [out.get() for _ in procs]
        for p in procs:
            p.join()
        # cores processes each finish one batch every per_proc seconds, at the same time.
        res["bf16_processes" + ("_channels_last" if cl else "")] = max(per_proc) / cores
    print(
        json.dumps(
            {
                "benchmark": "forward_modes",
                "model": args.model,
                "tile": args.tile,
                "batch_size": args.batch_size,
                "cores": cores,
                "seconds_per_batch": {k: round(v, 3) for k, v in res.items()},
                "speedup_vs_fp32": {k: round(res["fp32"] / v, 3) for k, v in res.items()},
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
