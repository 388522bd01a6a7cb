"""Resumable runs: which output blocks of a prediction are written, kept next to the output.

Layout inside the output directory (``<target>/.omniem/``):

- ``ledger.jsonl``: line 1 is the header ``{"kind": "header", "params_hash": ..., "params": ...,
  "n_blocks": ...}``; then one ``{"kind": "block", "id": i, ...}`` line per finished block,
  appended, flushed and fsynced only *after* that block's data is written (and its chunk files
  fsynced), so a recorded block is always on disk. A torn last line (a crash while appending) is
  ignored: that block is simply computed again.
- ``complete``: written (and fsynced) only after every block is recorded. Its presence is what
  makes an output complete.

A rerun with the same parameters (same ``params_hash``: model weights, source identity and every
setting that changes the numbers) skips the recorded blocks; different parameters are refused
(`LedgerMismatchError`) rather than mixing two runs in one output.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omniem.errors import OmniEMError

__all__ = ["LEDGER_DIR", "Ledger", "LedgerMismatchError", "params_hash"]

#: Folder of the ledger inside the output.
LEDGER_DIR = ".omniem"
LEDGER_FILE = "ledger.jsonl"
COMPLETE_FILE = "complete"


class LedgerMismatchError(OmniEMError, FileExistsError):
    """An incomplete output exists from a run with different parameters."""


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``params`` (sorted keys, no spaces).

    Examples:
        >>> params_hash({"b": 1, "a": [1, 2]}) == params_hash({"a": [1, 2], "b": 1})
        True
        >>> len(params_hash({}))
        64
    """
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class Ledger:
    """The ledger of one output directory (``root`` is the output, not ``.omniem``).

    Examples:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> led = Ledger.create(root, {"tile": 64}, n_blocks=2)
        >>> led.record(0); led.done(), led.is_complete
        ({0}, False)
        >>> led.record(1); led.mark_complete(); Ledger.open(root).is_complete
        True
    """

    def __init__(self, root: Path, header: dict[str, Any]) -> None:
        self.root = Path(root)
        self.header = header

    # ------------------------------------------------------------------ paths
    @staticmethod
    def dir_of(root: str | os.PathLike[str]) -> Path:
        return Path(root) / LEDGER_DIR

    @property
    def path(self) -> Path:
        return self.dir_of(self.root) / LEDGER_FILE

    @property
    def complete_path(self) -> Path:
        return self.dir_of(self.root) / COMPLETE_FILE

    @property
    def params_hash(self) -> str:
        return str(self.header["params_hash"])

    @property
    def n_blocks(self) -> int:
        return int(self.header["n_blocks"])

    # ------------------------------------------------------------------ create / open
    @classmethod
    def exists(cls, root: str | os.PathLike[str]) -> bool:
        return (cls.dir_of(root) / LEDGER_FILE).is_file()

    @classmethod
    def create(cls, root: str | os.PathLike[str], params: Mapping[str, Any], *, n_blocks: int):
        """Start a ledger (the output directory must exist; an old ledger is replaced)."""
        d = cls.dir_of(root)
        d.mkdir(parents=True, exist_ok=True)
        header = {
            "kind": "header",
            "format": "omniem.ledger/1",
            "params_hash": params_hash(params),
            "params": dict(params),
            "n_blocks": int(n_blocks),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = d / (LEDGER_FILE + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(header, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / LEDGER_FILE)
        (d / COMPLETE_FILE).unlink(missing_ok=True)
        _fsync_dir(d)
        return cls(Path(root), header)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> Ledger:
        """Read an existing ledger.

        Raises:
            OmniEMError: no ledger, or its header is unreadable.
        """
        path = cls.dir_of(root) / LEDGER_FILE
        try:
            first = path.read_text().split("\n", 1)[0]
            header = json.loads(first)
        except (OSError, ValueError) as err:
            raise OmniEMError(f"{path}: not a readable omniem ledger ({err})") from err
        if header.get("kind") != "header" or "params_hash" not in header:
            raise OmniEMError(f"{path}: first line is not an omniem ledger header")
        # A crash while appending leaves a line without its newline: end it, so the next
        # record starts on a line of its own (the torn one is then skipped as unreadable).
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        return cls(Path(root), header)

    def check(self, params: Mapping[str, Any]) -> None:
        """Refuse to resume with parameters other than the recorded ones.

        Raises:
            LedgerMismatchError: the hashes differ; names the parameters that changed.
        """
        if params_hash(params) == self.params_hash:
            return
        old = self.header.get("params", {})
        changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        raise LedgerMismatchError(
            f"{self.root}: an incomplete output of a run with other parameters is there "
            f"(changed: {', '.join(changed) or 'unknown'}); rerun with the same parameters to "
            "resume it, or pass overwrite=True to start over"
        )

    # ------------------------------------------------------------------ blocks
    def done(self) -> set[int]:
        """Ids of the recorded blocks (a torn or unreadable line is skipped)."""
        return set(self.blocks())

    def blocks(self) -> dict[int, dict[str, Any]]:
        """The recorded blocks' lines by id (a torn or unreadable line is skipped)."""
        out: dict[int, dict[str, Any]] = {}
        try:
            lines = self.path.read_text().splitlines()[1:]
        except OSError:
            return out
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "block":
                out[int(rec["id"])] = rec
        return out

    def record(self, block_id: int, **info: Any) -> None:
        """Append one finished block, flushed and fsynced before returning."""
        rec = {"kind": "block", "id": int(block_id), **info}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @property
    def is_complete(self) -> bool:
        return self.complete_path.is_file()

    def mark_complete(self, **info: Any) -> None:
        """Write the ``complete`` marker (only call when every block is recorded)."""
        missing = set(range(self.n_blocks)) - self.done()
        if missing:
            raise OmniEMError(
                f"{self.root}: cannot mark complete, {len(missing)} of {self.n_blocks} blocks "
                "are not recorded"
            )
        body = {"params_hash": self.params_hash, "n_blocks": self.n_blocks, **info}
        body["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tmp = self.complete_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(body, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.complete_path)
        _fsync_dir(self.complete_path.parent)
