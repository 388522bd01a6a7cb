"""Running `omniem.engine.predict`'s blocks in worker processes or on a dask.distributed cluster.

Both backends share one worker (`WorkerState`): it loads the model once, lays out the same grid
and blocks as the parent (`omniem.engine.run.prepare` with the parent's arguments and intensity
window, checked against the parent's model digest and block grid), then computes whole blocks
with `omniem.engine.run.compute_block`, the code of a single-device run, so every block is
bit-identical to one computed in the parent (same tiles, same order; same torch thread count on
CPU).

Writing: with a target, each worker writes its blocks into the OME-Zarr itself. Blocks are
shard-aligned (one shard per block and channel), so no two processes ever touch the same file,
and a worker fsyncs its shard files before it reports the block. Only the parent appends to the
ledger (`omniem.engine.ledger`), as blocks are reported, and marks the output complete. A worker
that crashes mid-block leaves that block unrecorded: a rerun computes it again. Without a target,
workers send their blocks back to the parent.

- `run_processes`: ``devices="cpu:N"`` or ``"cuda:0,cuda:1"``; spawned processes
  (``torch.multiprocessing``) take block ids from one shared queue, each limited to
  `omniem.engine.devices.DeviceSpec.threads` torch threads.
- `run_dask`: ``devices="dask://HOST:PORT"`` or ``scheduler=``; blocks are dask tasks, each dask
  worker loads the model once through a worker plugin (dropped at the end of the run), and the
  parent records blocks as their futures complete. The target must be on a file system the
  workers share with the parent.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from omniem.engine.devices import DeviceSpec, cpu_cores
from omniem.errors import OmniEMError

__all__ = ["WorkerState", "make_job", "run_dask", "run_processes"]

#: Seconds a stopping worker may take to finish its block before it is terminated.
STOP_GRACE_S = 5.0


# --------------------------------------------------------------------------- the job


def make_job(
    model: Any,
    source: Any,
    setup: Any,
    target: Path | None,
    kwargs: Mapping[str, Any],
) -> bytes:
    """What every worker needs to rebuild ``setup``, as bytes (cloudpickle).

    A model or source given as a path travels as the path (each worker opens it); anything else
    (a module, a callable, an array) is pickled.

    Raises:
        ValueError: the model or source cannot be pickled (pass a model file or a path).
    """
    import cloudpickle

    if isinstance(model, (str, os.PathLike)):
        m: tuple[str, Any] = ("path", _absolute(model))
    else:
        try:
            m = ("pickle", cloudpickle.dumps(model))
        except Exception as err:
            raise ValueError(
                f"model {setup.runner.name}: cannot be sent to worker processes ({err}); pass a "
                "model file or registry name, or use devices='cpu'"
            ) from err
    src = _absolute(source) if isinstance(source, (str, os.PathLike)) else source
    kw = dict(kwargs)
    if setup.norm["kind"] == "window":  # workers use the parent's window, not a new estimate
        kw["intensity"] = (float(setup.norm["low"]), float(setup.norm["high"]))
    job = {
        "model": m,
        "source": src,
        "kwargs": kw,
        "target": None if target is None else str(target),
        "expect": {
            "digest": setup.runner.digest,
            "blocks": [(b.z, b.y, b.x) for b in setup.blocks],
            "out_shape": tuple(setup.out_shape),
            "model_hw": tuple(setup.model_hw),
        },
    }
    try:
        return cloudpickle.dumps(job)
    except Exception as err:
        raise ValueError(
            f"source {setup.source_name}: cannot be sent to worker processes ({err}); pass a "
            "path or a numpy array, or use devices='cpu'"
        ) from err


def _absolute(path: str | os.PathLike[str]) -> str:
    """A local path made absolute (workers may run elsewhere); names and URIs as they are."""
    text = os.fspath(path)
    if "://" in text:
        return text
    local, sep, inner = text.partition("::")
    return os.path.abspath(local) + sep + inner if os.path.exists(local) else text


class WorkerState:
    """One worker's model, grid, blending weights and output array (built once per worker)."""

    def __init__(self, setup: Any, weight: Any, writer: Any) -> None:
        self.setup, self.weight, self.writer = setup, weight, writer

    @classmethod
    def create(cls, job: bytes, device: str, threads: int | None) -> WorkerState:
        import torch

        from omniem.engine import run as R
        from omniem.engine.tiles import blend_weights

        if threads:
            torch.set_num_threads(int(threads))
        spec = pickle.loads(job)
        kind, m = spec["model"]
        model = m if kind == "path" else pickle.loads(m)
        with warnings.catch_warnings():  # the parent has shown them already
            warnings.simplefilter("ignore")
            setup = R.prepare(model, spec["source"], devices=device, **spec["kwargs"])
        exp = spec["expect"]
        got = {
            "digest": setup.runner.digest,
            "blocks": [(b.z, b.y, b.x) for b in setup.blocks],
            "out_shape": tuple(setup.out_shape),
            "model_hw": tuple(setup.model_hw),
        }
        diff = [k for k in exp if exp[k] != got[k]]
        if diff:
            raise OmniEMError(
                f"worker on {device}: model {setup.runner.name} / source {setup.source_name} do "
                f"not match the parent's ({', '.join(diff)} differ)"
            )
        if setup.runner.module is not None:
            setup.runner.module.eval()
        weight = blend_weights(setup.tile_shape, setup.blend, device=setup.runner.device)
        writer = None
        if spec["target"] is not None:
            writer = R._ZarrWriter.open(setup, Path(spec["target"]))
        return cls(setup, weight, writer)

    def run(self, block_id: int) -> tuple[str, Any]:
        """Compute (and write) one block: ``("done", data or None)`` or ``("error", (stage,
        message))`` (errors travel as text: exception types do not always pickle)."""
        from omniem.engine.run import BlockError, compute_block

        blk = self.setup.blocks[block_id]
        try:
            data = compute_block(self.setup, blk, self.weight)
        except BlockError as err:
            return "error", (err.stage, str(err))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
            return "error", ("compute", f"{blk.describe()}: {type(err).__name__}: {err}")
        if self.writer is None:
            return "done", data
        try:
            self.writer.write(blk, data)
        except Exception as err:  # noqa: BLE001
            return "error", (
                "write",
                f"{blk.describe()}: writing the output to {self.writer.root} failed: "
                f"{type(err).__name__}: {err}",
            )
        return "done", None


# --------------------------------------------------------------------------- processes


def _process_main(
    wid: int,
    job: bytes,
    device: str,
    threads: int | None,
    tasks: Any,
    results: Any,
    stop: Any,
) -> None:
    """A worker process: build the state once, then take block ids until None or stop."""
    try:
        state = WorkerState.create(job, device, threads)
    except BaseException as err:  # noqa: BLE001 - reported, the parent raises
        results.put(("init_error", wid, None, f"{type(err).__name__}: {err}"))
        return
    while not stop.is_set():
        bid = tasks.get()
        if bid is None:
            break
        results.put(("start", wid, bid, None))
        kind, payload = state.run(bid)
        results.put((kind, wid, bid, payload))
        if kind == "error":
            break
    results.put(("exit", wid, None, None))


def run_processes(
    job: bytes, spec: DeviceSpec, setup: Any, todo: list[int]
) -> Iterator[tuple[Any, np.ndarray | None]]:
    """Run blocks ``todo`` in ``spec.devices`` worker processes; yields ``(block, data)`` as
    blocks finish (``data`` is None when the worker wrote it to the target).

    Raises:
        BlockError: a block failed in a worker, or its worker died (names the block).
        OmniEMError: a worker could not start (names the device and the reason).
    """
    import torch.multiprocessing as mp

    from omniem.engine.run import BlockError

    by_id = {b.id: b for b in setup.blocks}
    n = min(spec.n_workers, len(todo))
    if n == 0:
        return
    ctx = mp.get_context("spawn")
    tasks, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    for bid in todo:
        tasks.put(bid)
    for _ in range(n):
        tasks.put(None)
    procs: list[Any] = []
    try:
        for wid in range(n):
            p = ctx.Process(
                target=_process_main,
                args=(wid, job, spec.devices[wid], spec.threads, tasks, results, stop),
                name=f"omniem-worker-{wid}",
                daemon=True,
            )
            p.start()
            procs.append(p)
        exited: set[int] = set()
        current: dict[int, int] = {}
        suspect: set[int] = set()
        error: Exception | None = None
        done: set[int] = set()
        while len(exited) < n:
            try:
                kind, wid, bid, payload = results.get(timeout=1.0)
            except queue.Empty:
                for wid, p in enumerate(procs):
                    if wid in exited or p.is_alive():
                        continue
                    if wid not in suspect:  # one more wait: its last messages may be in transit
                        suspect.add(wid)
                        continue
                    exited.add(wid)
                    stop.set()
                    bid = current.pop(wid, None)
                    what = (
                        f"worker process {wid} ({spec.devices[wid]}) died (exit code {p.exitcode})"
                    )
                    if bid is not None:
                        err: Exception = BlockError(
                            f"{by_id[bid].describe()}: {what}", block=by_id[bid], stage="compute"
                        )
                    else:
                        err = OmniEMError(what)
                    error = error or err
                continue
            if kind == "start":
                current[wid] = bid
            elif kind == "done":
                current.pop(wid, None)
                done.add(bid)
                yield by_id[bid], payload
            elif kind == "error":
                current.pop(wid, None)
                stage, message = payload
                error = error or BlockError(message, block=by_id[bid], stage=stage)
                stop.set()
            elif kind == "init_error":
                exited.add(wid)
                stop.set()
                error = error or OmniEMError(
                    f"worker process {wid} ({spec.devices[wid]}) could not start: {payload}"
                )
            elif kind == "exit":
                exited.add(wid)
        if error is not None:
            raise error
        missing = set(todo) - done
        if missing:  # pragma: no cover - every path above either finishes or raises
            raise OmniEMError(f"{len(missing)} blocks were not computed by the worker processes")
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=STOP_GRACE_S)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
        for q in (tasks, results):
            q.cancel_join_thread()
            q.close()


# --------------------------------------------------------------------------- dask


def _host(address: str) -> str:
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0]


try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency of em5m
    _WorkerPlugin = object  # type: ignore[assignment,misc]


class EnginePlugin(_WorkerPlugin):  # type: ignore[misc,valid-type]
    """Holds one run's `WorkerState` on a dask worker; built on the worker's first block."""

    def __init__(self, job: bytes, device: str, workers_per_host: Mapping[str, int]) -> None:
        self.job = job
        self.device = device
        self.workers_per_host = dict(workers_per_host)
        self._state: WorkerState | None = None
        self._lock: threading.Lock | None = None
        self._address = ""

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("job", "device", "workers_per_host")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._state, self._lock, self._address = None, threading.Lock(), ""

    def setup(self, worker: Any) -> None:
        self._address = str(worker.address)
        self._lock = self._lock or threading.Lock()

    def teardown(self, worker: Any) -> None:
        self._state = None

    def state(self) -> WorkerState:
        assert self._lock is not None
        with self._lock:
            if self._state is None:
                n = self.workers_per_host.get(_host(self._address), 1)
                self._state = WorkerState.create(self.job, self.device, max(1, cpu_cores() // n))
            return self._state


def _dask_block(plugin_name: str, block_id: int) -> tuple[str, Any]:
    """A dask task: one block on this worker (its model is loaded once, by the plugin)."""
    from distributed import get_worker

    plugin = get_worker().plugins[plugin_name]
    try:
        state = plugin.state()
    except Exception as err:  # noqa: BLE001
        return "init_error", f"{type(err).__name__}: {err}"
    return state.run(block_id)


def run_dask(
    job: bytes, spec: DeviceSpec, setup: Any, todo: list[int]
) -> Iterator[tuple[Any, np.ndarray | None]]:
    """Run blocks ``todo`` as tasks on a dask.distributed cluster; yields ``(block, data)`` as
    futures complete (``data`` is None when the worker wrote it to the target).

    Raises:
        BlockError: a block failed on a worker, or its task was lost (names the block).
        OmniEMError: no scheduler at the address, no workers, or a worker could not load the
            model.
    """
    from distributed import Client, as_completed

    from omniem.engine.run import BlockError

    by_id = {b.id: b for b in setup.blocks}
    if not todo:
        return
    own = False
    client = spec.client
    try:
        if client is None:
            client = Client(spec.address, timeout="30s", set_as_default=False)
            own = True
        elif not isinstance(client, Client):  # a cluster object
            client = Client(client, set_as_default=False)
            own = True
    except OSError as err:
        raise OmniEMError(
            f"devices=dask://: no dask scheduler reachable at {spec.address}: {err}"
        ) from err
    name = f"omniem-engine-{uuid.uuid4().hex[:12]}"
    futures: dict[Any, int] = {}
    registered = False
    try:
        nthreads = client.nthreads()
        if not nthreads:
            client.wait_for_workers(1, timeout=60)
            nthreads = client.nthreads()
        per_host = Counter(_host(a) for a in nthreads)
        client.register_plugin(EnginePlugin(job, spec.devices[0], per_host), name=name)
        registered = True
        for i, bid in enumerate(todo):
            fut = client.submit(
                _dask_block, name, bid, key=f"{name}-block-{bid}", pure=False, priority=-i
            )
            futures[fut] = bid
        for fut in as_completed(list(futures)):
            bid = futures[fut]
            blk = by_id[bid]
            try:
                kind, payload = fut.result()
            except Exception as err:  # a lost worker (KilledWorker), a cancelled task
                raise BlockError(
                    f"{blk.describe()}: dask task failed: {type(err).__name__}: {err}",
                    block=blk,
                    stage="compute",
                ) from err
            if kind == "init_error":
                raise OmniEMError(f"a dask worker could not load the model: {payload}")
            if kind == "error":
                stage, message = payload
                raise BlockError(message, block=blk, stage=stage)
            yield blk, payload
    finally:
        if futures:  # best effort when the cluster is gone
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
        if registered:
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(name)
        if own:
            client.close()
