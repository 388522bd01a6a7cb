"""The engine on several workers: CPU worker processes and a dask.distributed cluster.

Real processes and a real `distributed.LocalCluster` on Lucchi++ val crops with a tiny random
OmniEM (fp32): every backend writes output bit-identical to one worker in this process, resumes
runs started elsewhere, and reports a failing block by name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from omniem.engine import BlockError, predict
from omniem.engine.devices import (
    WORKER_OVERHEAD_BYTES,
    DeviceSpec,
    parse_bytes,
    parse_devices,
    peak_ram,
)
from omniem.engine.ledger import Ledger
from omniem.nets import NetConfig, build

KW = {"tile": 64, "overlap": 0.25, "dtype": "fp32", "batch_size": 4, "block": (1, 64)}


@pytest.fixture(scope="module")
def em(emssl_data) -> np.ndarray:
    """Lucchi++ val, a 2 x 100 x 130 uint8 crop: 2 x 2 x 3 = 12 blocks of 1 x 64 x 64."""
    import em5m.datasets

    img = em5m.datasets.load("lucchi_pp", split="val").image[:2, 300:400, 400:530]
    return np.ascontiguousarray(img)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    cfg = NetConfig(backbone="vit_tiny_patch8.random", out_channels=2, feature_size=8)
    return build(cfg, img_size=64).eval()


@pytest.fixture(scope="module", autouse=True)
def _worker_threads():
    """This process uses as many torch threads as each of two workers: CPU kernels may sum in
    another order with another thread count, so bit-identity holds at equal thread counts."""
    n = torch.get_num_threads()
    torch.set_num_threads(parse_devices("cpu:2").threads)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(net, em) -> np.ndarray:
    return predict(net, em, output="probabilities", **KW)


def test_parse_devices() -> None:
    assert parse_devices("cpu") == DeviceSpec("local", ("cpu",))
    assert parse_devices(["cuda:1"]).kind == "local"
    s = parse_devices("cpu:3")
    assert s.kind == "processes" and s.devices == ("cpu",) * 3 and s.threads >= 1
    assert s.parent_device == "cpu" and s.device_type == "cpu" and s.n_workers == 3
    g = parse_devices("cuda:0, cuda:1")
    assert (
        g.devices == ("cuda:0", "cuda:1") and g.device_type == "cuda" and g.parent_device == "cpu"
    )
    d = parse_devices("dask://10.0.0.1:8786")
    assert d.kind == "dask" and d.address == "tcp://10.0.0.1:8786" and d.n_workers == 0
    assert parse_devices("cuda", scheduler="tls://h:1").devices == ("cuda",)
    for bad, match in [
        ("cpu:0", "N >= 1"),
        ("gpu", "not a torch device"),
        ("cpu:2,cuda:0", "cannot be combined"),
        ("cuda:0,cuda:0", "twice"),
        ("cuda:0,cpu", "mixes device types"),
        ("dask://", "scheduler address"),
        ("", "no device"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_devices(bad)
    with pytest.raises(ValueError, match="each dask worker"):
        parse_devices("cpu:2", scheduler="h:1")


def test_memory_estimate_and_sizes(net, em) -> None:
    from omniem.engine import plan

    p = plan(net, em, "x.zarr", **KW)
    one = peak_ram(p, parse_devices("cpu"))
    two = peak_ram(p, parse_devices("cpu:2"))
    m = p["memory"]
    assert one == p["peak_ram_bytes"] == sum(m.values())
    assert m["process"] > 100 * 2**20  # this process really holds torch and the libraries
    # Each worker process: its model copy, one block, one batch and a fresh interpreter.
    per_worker = sum(m[k] for k in ("params", "source", "accumulators", "output_block", "batch"))
    here = m["process"] + m["params"] + m["result"]
    assert two == here + 2 * (per_worker + WORKER_OVERHEAD_BYTES)
    assert peak_ram(p, parse_devices("dask://h:1")) == here
    assert parse_bytes("1.5K") == 1536 and parse_bytes("2GiB") == 2 * 2**30
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


def test_cpu_workers_resume_a_crashed_run_bit_identical(net, em, reference, tmp_path) -> None:
    """Half the blocks in this process (then a crash), the rest in 2 worker processes."""
    target = tmp_path / "p.ome.zarr"

    class Crash(Exception):
        pass

    def crash(done: int, total: int) -> None:
        if done == total // 2:
            raise Crash

    with pytest.raises(Crash):
        predict(net, em, target, output="probabilities", progress=crash, **KW)
    assert len(Ledger.open(target).done()) == 6
    seen: list[tuple[int, int]] = []
    out = predict(
        net,
        em,
        target,
        output="probabilities",
        devices="cpu:2",
        progress=lambda d, t: seen.append((d, t)),
        **KW,
    )
    assert [d for d, _ in seen] == list(range(7, 13)) and seen[-1][1] == 12
    led = Ledger.open(out)
    assert led.is_complete and led.done() == set(range(12))
    got = zarr.open_group(out, mode="r")["s0"][:]
    assert got.dtype == np.float32 and np.array_equal(got, reference)


def test_cpu_worker_failure_names_the_block(em, tmp_path) -> None:
    def fails_on_bright_tiles(x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 0.7:
            raise RuntimeError("simulated model failure")
        return x

    img = em[:1].copy()
    img[0, 64:, 64:] = 255  # the tiles of the last blocks are bright
    target = tmp_path / "f.zarr"
    with pytest.raises(BlockError, match=r"block \d+ \(z 0:1.*simulated model failure") as e:
        predict(fails_on_bright_tiles, img, target, devices="cpu:2", **KW)
    assert e.value.stage == "compute"
    led = Ledger.open(target)
    assert not led.is_complete and e.value.block.id not in led.done()


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cl,
        Client(cl) as client,
    ):
        yield cl, client


def test_dask_cluster_is_bit_identical_to_one_worker(net, em, reference, cluster, tmp_path):
    cl, client = cluster
    seen: list[int] = []
    out = predict(
        net,
        em,
        tmp_path / "d.ome.zarr",
        output="probabilities",
        scheduler=client,
        progress=lambda d, t: seen.append(d),
        **KW,
    )
    assert sorted(seen) == list(range(1, 13)) and Ledger.open(out).is_complete
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["s0"][:], reference)
    # The model plugin is gone from the workers after the run.
    assert len(client.nthreads()) == 2
    assert not any(
        p.startswith("omniem-engine")
        for ps in client.run(lambda dask_worker: list(dask_worker.plugins)).values()
        for p in ps
    )
    # By address, without a target: the blocks come back to this process.
    address = cl.scheduler_address.split("://", 1)[1]
    mem = predict(net, em, output="probabilities", devices=f"dask://{address}", **KW)
    np.testing.assert_array_equal(mem, reference)
