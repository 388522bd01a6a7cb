"""Where `omniem.engine.predict` runs: one device, worker processes, or a dask cluster.

``devices`` (an argument of `predict` / `plan`, the ``--devices`` option of ``omniem predict``):

- ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``: one device, in this process (the default).
- ``"cpu:N"``: N CPU worker processes, each with ``max(1, cores // N)`` torch threads.
- ``"cuda:0,cuda:1"`` (or a list of devices): one worker process per device, each with
  ``max(1, cores // N)`` torch threads for its host-side work.
- ``"dask://HOST:PORT"`` (or ``predict(..., scheduler=client_or_address)``): the blocks run as
  tasks on a dask.distributed cluster; each dask worker loads the model once (on ``"cpu"``, or
  on the device named by ``devices`` when ``scheduler`` is passed, e.g. ``"cuda"``).

Worker processes are started with ``spawn``: a script that calls ``predict(devices="cpu:N")``
needs the usual ``if __name__ == "__main__":`` guard. Worker processes and dask workers compute
whole output blocks with the same code as one device, so the output is bit-identical to a
single-device run with the same torch thread count per process (CPU kernels may sum in another
order with another thread count).
See `omniem.engine.distributed`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "WORKER_OVERHEAD_BYTES",
    "DeviceSpec",
    "available_memory",
    "cpu_cores",
    "format_bytes",
    "parse_bytes",
    "parse_devices",
    "peak_ram",
]

#: Resident memory of one extra worker process before it holds any data (Python + torch).
WORKER_OVERHEAD_BYTES = 400 * 2**20


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed ``devices`` argument.

    Attributes:
        kind: ``"local"`` (this process), ``"processes"`` (worker processes) or ``"dask"``.
        devices: the torch device of each worker process (``"local"``: the one device;
            ``"dask"``: the device every dask worker uses).
        threads: torch threads per worker process (``None``: leave torch's default).
        address: the dask scheduler address (``"dask"`` with an address).
        client: a ``distributed.Client`` (or cluster) passed as ``scheduler``.
    """

    kind: Literal["local", "processes", "dask"]
    devices: tuple[str, ...]
    threads: int | None = None
    address: str | None = None
    client: Any = field(default=None, compare=False, repr=False)

    @property
    def n_workers(self) -> int:
        """Worker processes started here (1 for ``local``; 0 for ``dask``: the cluster's)."""
        return {"local": 1, "processes": len(self.devices), "dask": 0}[self.kind]

    @property
    def parent_device(self) -> str:
        """The device of the model in this process (workers load their own copies)."""
        return self.devices[0] if self.kind == "local" else "cpu"

    @property
    def device_type(self) -> str:
        """``cpu``/``cuda``/...: part of a run's parameters (it can change the numbers)."""
        import torch

        return torch.device(self.devices[0]).type

    def describe(self) -> str:
        if self.kind == "local":
            return self.devices[0]
        if self.kind == "processes":
            return (
                f"{len(self.devices)} worker processes ({', '.join(self.devices)}; "
                f"{self.threads} torch thread(s) each)"
            )
        where = self.address or type(self.client).__name__
        return f"dask cluster {where} (workers on {self.devices[0]})"


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _dask_address(text: str) -> str:
    rest = text[len("dask://") :]
    if not rest:
        raise ValueError("devices='dask://': give the scheduler address, e.g. dask://host:8786")
    return rest if "://" in rest else f"tcp://{rest}"


_CPU_N = re.compile(r"^cpu:(\d+)$")


def parse_devices(devices: Any = "cpu", *, scheduler: Any = None) -> DeviceSpec:
    """Parse ``devices`` (and ``scheduler``) into a `DeviceSpec`.

    Raises:
        ValueError: an unknown or malformed device, ``cpu:0``, mixed forms.

    Examples:
        >>> parse_devices("cpu").kind
        'local'
        >>> s = parse_devices("cpu:2"); (s.kind, s.devices, s.threads >= 1)
        ('processes', ('cpu', 'cpu'), True)
        >>> parse_devices("cuda:0,cuda:1").devices
        ('cuda:0', 'cuda:1')
        >>> parse_devices("dask://127.0.0.1:8786").address
        'tcp://127.0.0.1:8786'
    """
    import torch

    if isinstance(devices, DeviceSpec):
        if scheduler is not None and devices.kind != "dask":
            raise ValueError("scheduler= needs devices to be one device type, e.g. 'cpu'")
        return devices
    if scheduler is not None:
        if isinstance(scheduler, str):
            address = scheduler if "://" in scheduler else f"tcp://{scheduler}"
            address = _dask_address(address) if address.startswith("dask://") else address
            client = None
        else:
            address, client = None, scheduler
        dev = "cpu" if devices in (None, "") else devices
        if not isinstance(dev, str) or "," in dev or _CPU_N.match(dev) or "://" in dev:
            raise ValueError(
                f"devices={devices!r} with scheduler=: name the device each dask worker uses, "
                "e.g. 'cpu' or 'cuda' (the cluster decides how many workers there are)"
            )
        _check_device(torch, dev)
        return DeviceSpec("dask", (dev,), None, address, client)
    if isinstance(devices, torch.device):
        devices = str(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text.startswith("dask://"):
            return DeviceSpec("dask", ("cpu",), None, _dask_address(text))
        m = _CPU_N.match(text)
        if m:
            n = int(m.group(1))
            if n < 1:
                raise ValueError(f"devices={devices!r}: cpu:N needs N >= 1 worker processes")
            return DeviceSpec("processes", ("cpu",) * n, max(1, cpu_cores() // n))
        parts = [p.strip() for p in text.split(",") if p.strip()]
    elif isinstance(devices, Sequence):
        parts = [str(p).strip() for p in devices]
    else:
        raise ValueError(
            f"devices={devices!r}: expected 'cpu', 'cpu:N', 'cuda:0,cuda:1' or 'dask://HOST:PORT'"
        )
    if not parts:
        raise ValueError(f"devices={devices!r}: no device given")
    for p in parts:
        if _CPU_N.match(p) or p.startswith("dask://"):
            raise ValueError(
                f"devices={devices!r}: {p!r} cannot be combined with other devices; pass it alone"
            )
        _check_device(torch, p)
    if len(parts) == 1:
        return DeviceSpec("local", (parts[0],))
    types = {torch.device(p).type for p in parts}
    if len(types) > 1:
        raise ValueError(
            f"devices={devices!r}: mixes device types ({', '.join(sorted(types))}); use one type "
            "so every block is computed the same way"
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"devices={devices!r}: a device is listed twice; use cpu:N for CPUs")
    return DeviceSpec("processes", tuple(parts), max(1, cpu_cores() // len(parts)))


def _check_device(torch: Any, name: str) -> None:
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"devices: {name!r} is not a torch device; expected e.g. 'cpu', 'cpu:4', "
            "'cuda:0,cuda:1' or 'dask://HOST:PORT'"
        ) from None


# --------------------------------------------------------------------------- memory


def available_memory() -> int | None:
    """Bytes of RAM available now (psutil, else ``MemAvailable`` of /proc/meminfo), or None."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: try /proc
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str | int) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1000"`` -> bytes (binary units).

    Examples:
        >>> parse_bytes("2G"), parse_bytes("1.5KiB"), parse_bytes(10)
        (2147483648, 1536, 10)
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size; expected e.g. 512M, 2G, 1.5GiB or bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    """Human size, binary units.

    Examples:
        >>> format_bytes(1536), format_bytes(3 * 2**30)
        ('1.5 KiB', '3.0 GiB')
    """
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def peak_ram(plan: Mapping[str, Any], spec: DeviceSpec) -> int:
    """Peak RAM of a run on this machine for `omniem.engine.plan`'s estimate and ``spec``.

    ``local``: the plan's ``peak_ram_bytes``. ``processes``: the model and result in this process
    plus, per worker, its model copy, one block with its halo, one batch and
    `WORKER_OVERHEAD_BYTES`. ``dask``: only what stays here (model and result); the workers'
    memory is the cluster's.
    """
    m = plan["memory"]
    if spec.kind == "local":
        return int(plan["peak_ram_bytes"])
    here = int(m.get("process", 0)) + int(m["params"]) + int(m["result"])
    if spec.kind == "dask":
        return here
    per = sum(int(m[k]) for k in ("params", "source", "accumulators", "output_block", "batch"))
    return here + spec.n_workers * (per + WORKER_OVERHEAD_BYTES)
