"""OmniEM's large-volume inference engine: tiled, blended, out-of-core and resumable.

- `predict`: run a 2D model over an image or volume (numpy result, or an OME-Zarr written block
  by block and resumable after a crash).
- `plan`: what a run would do (blocks, tiles, memory, disk, optionally time) without running it.
- `omniem.engine.tiles`: the tile grid and blending weights (MONAI-compatible Gaussian).
- `omniem.engine.ledger`: the record of finished blocks that makes runs resumable.
- `omniem.engine.devices`: ``devices=`` (one device, ``cpu:N`` worker processes,
  ``cuda:0,cuda:1``, ``dask://HOST:PORT``), memory available and per-worker peak RAM.
- `omniem.engine.distributed`: the worker-process and dask.distributed backends (same blocks, same
  bits as one device; the parent alone keeps the ledger).
"""

from omniem.engine.ledger import Ledger, LedgerMismatchError
from omniem.engine.plan import plan
from omniem.engine.run import Block, BlockError, predict

__all__ = ["Block", "BlockError", "Ledger", "LedgerMismatchError", "plan", "predict"]
