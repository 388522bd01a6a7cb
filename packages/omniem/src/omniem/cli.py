"""The `omniem` command line: train, evaluate, predict, plan, list, info.

Exit codes: 0 success, 2 bad input (the message names the file or option and what is wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from omniem import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniem", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", help="recipe file or bundled recipe name (mito_2d, ...)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. optim.total_steps=100 (repeatable)",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="score a model on labelled images")
    p.add_argument("--model", required=True, help="registered name or model file")
    p.add_argument("--images", required=True, help="directory of 2D images, TIFF stack or Zarr")
    p.add_argument("--labels", required=True, help="labels (or restoration targets), same layout")
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--tile", type=int, help="tile side in pixels (default: the model's, else 256)")
    p.add_argument(
        "--overlap", type=float, help="tile overlap fraction (default: the model's, else 0.25)"
    )
    _dtype_option(p)
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over the 8 flips/rotations of each image (8x time)",
    )

    p = sub.add_parser(
        "predict",
        help="predict a whole image or volume into an OME-Zarr (tiled, out of core, resumable)",
    )
    p.add_argument("input", help="image or volume (any file em5m.open_volume reads)")
    p.add_argument("output", help="OME-Zarr to write (an interrupted run is resumed)")
    _engine_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.add_argument(
        "--force", action="store_true", help="run even if the plan needs more memory than is free"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("plan", help="what `omniem predict` would do: blocks, tiles, memory, time")
    p.add_argument("input", help="image or volume (any file em5m.open_volume reads)")
    _engine_options(p)
    p.add_argument("--time", action="store_true", help="time one batch to estimate the run time")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser("list", help="registered models")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("info", help="one model's card and configuration")
    p.add_argument("name")
    return parser


def _dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="compute precision; auto (default): bf16 autocast where the device computes bf16 "
        "natively (AVX512-BF16/AMX CPUs, recent GPUs), else fp32 (emulated bf16 is far slower)",
    )


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered name (omniem list) or model file")
    p.add_argument(
        "--devices",
        default="cpu",
        help="cpu (default), cpu:N (N worker processes), cuda:0,cuda:1 (one process per GPU) "
        "or dask://HOST:PORT (a dask.distributed cluster)",
    )
    _dtype_option(p)
    p.add_argument(
        "--tile", type=int, help="tile side in model pixels (default: the model's, else 256)"
    )
    p.add_argument(
        "--overlap",
        type=float,
        help="tile overlap fraction in [0, 1) (default: the model's, else 0.25)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument(
        "--tile-z", type=int, help="slices per tile of a 3D model (default 16; 2D models ignore it)"
    )
    p.add_argument(
        "--voxel-size", metavar="Z,Y,X", help="voxel size in nm (Z,Y,X, Y,X or one number)"
    )
    p.add_argument(
        "--no-resample",
        action="store_true",
        help="do not resample to the model's voxel size when they differ",
    )
    p.add_argument(
        "--output-kind",
        dest="output_kind",
        choices=["probabilities", "labels", "image", "instances"],
        help="default by task: labels (semantic), image (restoration), instances (instances: "
        "ids stitched across blocks), else probabilities",
    )
    p.add_argument("--block", metavar="SLICES,PIXELS", help="output block, default 8,1024")
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory the run may use, e.g. 8G (default: $OMNIEM_MAX_MEMORY, else the RAM "
        "available now)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over the 8 flips/rotations of each tile (8x time)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model with inductor freezing (compiles for tens of seconds in "
        "every worker, then runs faster; for long runs)",
    )
    p.add_argument(
        "--orthoplanes",
        action="store_true",
        help="run a 2D model on xy, xz and yz planes and average them (isotropic volumes; ~3x "
        "the compute; --tile-z defaults to --tile)",
    )


class _CliError(Exception):
    """A bad input or option; the message names it (printed as one line, exit 2)."""


def _floats(option: str, text: str | None, n: tuple[int, ...]) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) not in n or any(not v > 0 for v in vals):
        counts = " or ".join(", ".join(map(str, n)).rsplit(", ", 1))
        raise _CliError(f"{option} {text!r}: expected {counts} positive numbers")
    return vals


def _engine_kwargs(args: argparse.Namespace) -> dict:
    """The engine arguments of the shared options (validated, errors name the option)."""
    import os

    from omniem.engine.devices import parse_devices

    try:
        parse_devices(args.devices)
    except ValueError as err:
        raise _CliError(f"--devices {args.devices}: {err}") from None
    voxel = _floats("--voxel-size", args.voxel_size, (1, 2, 3))
    block = _floats("--block", args.block, (2,))
    if block is not None and any(b != int(b) for b in block):
        raise _CliError(f"--block {args.block!r}: expected two positive integers")
    for option, value, ok in (
        ("--tile", args.tile, args.tile is None or args.tile >= 8),
        ("--overlap", args.overlap, args.overlap is None or 0.0 <= args.overlap < 1.0),
        ("--batch-size", args.batch_size, args.batch_size >= 1),
        ("--tile-z", args.tile_z, args.tile_z is None or args.tile_z >= 1),
    ):
        if not ok:
            raise _CliError(
                f"{option} {value}: expected "
                + {"--tile": "an integer >= 8", "--overlap": "a fraction in [0, 1)"}.get(
                    option, "a positive integer"
                )
            )
    if not _is_uri(args.input) and not os.path.exists(args.input.split("::")[0]):
        raise _CliError(f"input {args.input}: no such file or directory")
    return {
        "tile": args.tile,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "devices": args.devices,
        "dtype": args.dtype,
        "voxel_size": voxel[0] if voxel is not None and len(voxel) == 1 else voxel,
        "resample": not args.no_resample,
        "output": args.output_kind,
        "block": None if block is None else tuple(int(b) for b in block),
        "tile_z": args.tile_z,
        "tta": args.tta,
        "orthoplanes": args.orthoplanes,
        "compile": args.compile,
    }


def _is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _check_model(name: str) -> None:
    from omniem.registry import resolve_model_path

    try:
        resolve_model_path(name)
    except KeyError as err:  # UnknownModelError: its text names the model
        raise _CliError(f"--model {name}: {err}") from None
    except ValueError as err:  # ModelFileError: not bundled, missing or unreadable file
        raise _CliError(f"--model {name}: {err}") from None


def _check_input(path: str) -> None:
    import logging

    from em5m.io import open_volume

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # em5m's error says it in one line
    try:
        open_volume(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        msg = str(err)
        raise _CliError(msg if path in msg else f"input {path}: {msg}") from None


def _check_output(output: str, overwrite: bool) -> None:
    """Fail before any work when OUTPUT cannot be written (the engine checks again)."""
    import os

    from omniem.engine import Ledger

    if overwrite or not os.path.lexists(output):
        return
    if not Ledger.exists(output):
        raise _CliError(
            f"{output}: already exists and is not a resumable omniem output (no "
            ".omniem/ledger.jsonl in it); pass --overwrite to replace it"
        )
    if Ledger(Path(output), {}).is_complete:
        raise _CliError(
            f"{output}: a complete prediction is already there; pass --overwrite to replace it"
        )


def _memory_limit(args: argparse.Namespace) -> tuple[int | None, str]:
    import os

    from omniem.engine.devices import available_memory, parse_bytes

    for text, where in (
        (args.max_memory, "--max-memory"),
        (os.environ.get("OMNIEM_MAX_MEMORY"), "OMNIEM_MAX_MEMORY"),
    ):
        if text:
            try:
                return parse_bytes(text), where
            except ValueError as err:
                raise _CliError(f"{where}: {err}") from None
    return available_memory(), "available RAM"


def _plan(args: argparse.Namespace, target: str | None, *, time_batch: bool = False) -> dict:
    from omniem.engine import plan
    from omniem.engine.devices import parse_devices, peak_ram

    kwargs = _engine_kwargs(args)
    _check_model(args.model)
    _check_input(args.input)
    p = plan(args.model, args.input, target or "omniem-plan.zarr", time_batch=time_batch, **kwargs)
    spec = parse_devices(args.devices)
    p["devices"] = spec.describe()
    p["workers"] = spec.n_workers
    p["peak_ram_bytes_all_workers"] = peak_ram(p, spec)
    limit, where = _memory_limit(args)
    p["memory_limit_bytes"], p["memory_limit_from"] = limit, where
    return p


def _human_plan(p: dict, args: argparse.Namespace) -> str:
    from omniem.engine.devices import format_bytes as fb

    mem = ", ".join(f"{k} {fb(v)}" for k, v in p["memory"].items() if v)
    lines = [
        f"input     {args.input} {tuple(p['source_shape'])}, intensity {p['intensity']['kind']}",
        f"model     {args.model} on {p['devices']}"
        + (f" (resampled to {tuple(p['model_hw'])})" if p["resampled"] else ""),
        f"output    {p['output']} {tuple(p['output_shape'])} {p['output_dtype']}, "
        f"{fb(p['output_bytes'])} uncompressed",
        f"blocks    {p['n_blocks']} of {tuple(p['block_shape'])} (z, y, x)",
        f"tiles     {p['tiles_per_slice']} per slice of {p['tile']} px, {p['tile_runs']} runs "
        f"(halo overhead {p['halo_overhead']}), {p['n_batches']} batches",
        f"memory    peak ~{fb(p['peak_ram_bytes_all_workers'])}"
        + (f" for {p['workers']} workers" if p["workers"] > 1 else "")
        + f" ({mem}); limit "
        + (fb(p["memory_limit_bytes"]) if p["memory_limit_bytes"] else "unknown")
        + f" ({p['memory_limit_from']})",
    ]
    if "estimated_seconds" in p:
        lines.append(
            f"time      ~{p['estimated_seconds']:.0f} s ({p['seconds_per_batch']:.3f} s per batch "
            "on one device)"
        )
    return "\n".join(lines)


def _plan_cmd(args: argparse.Namespace) -> int:
    p = _plan(args, None, time_batch=args.time)
    if args.json:
        print(json.dumps(p, indent=2, default=str))
    else:
        print(_human_plan(p, args))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from omniem.engine import Ledger, predict
    from omniem.engine.devices import format_bytes
    from omniem.progress import TqdmProgress

    t0 = time.perf_counter()
    _check_output(args.output, args.overwrite)
    p = _plan(args, args.output)
    need, limit = p["peak_ram_bytes_all_workers"], p["memory_limit_bytes"]
    if limit is not None and need > limit and not args.force:
        raise _CliError(
            f"{args.input} -> {args.output}: the plan needs ~{format_bytes(need)} of memory, "
            f"more than the {format_bytes(limit)} allowed ({p['memory_limit_from']}); use a "
            "smaller --tile, --batch-size or --block, fewer --devices workers, or --force"
        )
    kwargs = _engine_kwargs(args)
    bar = TqdmProgress(f"predict {args.output}", disable=args.quiet)
    done = 0
    if not args.overwrite and Ledger.exists(args.output):  # a resumed run: start the bar there
        with contextlib.suppress(Exception):
            done = len(Ledger.open(args.output).done())
    bar.start(p["n_blocks"], min(done, p["n_blocks"]))
    try:
        out = predict(
            args.model,
            args.input,
            args.output,
            overwrite=args.overwrite,
            progress=bar,
            **kwargs,
        )
    finally:
        bar.close()
    print(
        f"omniem predict: wrote {out} ({p['output']} {tuple(p['output_shape'])} "
        f"{p['output_dtype']}, {p['n_blocks']} blocks on {p['devices']}) in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


def _engine_cmd(handler):
    """Run ``predict``/``plan``: every failure a user can fix is one line naming its cause."""

    def run(args: argparse.Namespace) -> int:
        from omniem.errors import OmniEMError

        try:
            return handler(args)
        except _CliError as err:
            msg = str(err)
        except (OmniEMError, ValueError, OSError, KeyError, NotImplementedError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            msg = str(msg).replace("overwrite=True", "--overwrite")
        print(f"omniem {args.command}: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2

    return run


def _train(args: argparse.Namespace) -> int:
    from omniem.train import load_config, train

    cfg = load_config(args.config, args.set)

    def show(rec: dict) -> None:
        if not args.quiet:
            print(json.dumps(rec), flush=True)

    path = train(cfg, args.out, resume=args.resume, progress=show)
    print(f"model: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from omniem.evaluate import evaluate

    res = evaluate(
        args.model,
        args.images,
        args.labels,
        json_out=args.json,
        tile=args.tile,
        overlap=args.overlap,
        dtype=args.dtype,
        tta=args.tta,
    )
    print(json.dumps(res, indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    from omniem.registry import info, list_models

    rows = [info(n) for n in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'name':<16}{'task':<12}{'bundled':<9}description")
    for r in rows:
        print(
            f"{r['name']:<16}{r.get('task', ''):<12}{'yes' if r['bundled'] else 'no':<9}"
            f"{r.get('description', '')}"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from omniem.registry import info

    print(json.dumps(info(args.name), indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "train": _train,
        "evaluate": _evaluate,
        "predict": _engine_cmd(_predict),
        "plan": _engine_cmd(_plan_cmd),
        "list": _list,
        "info": _info,
    }
    if args.command not in handlers:
        parser.print_help()
        return 0
    from omniem.errors import OmniEMError

    try:
        return handlers[args.command](args)
    except (OmniEMError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"omniem {args.command}: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
