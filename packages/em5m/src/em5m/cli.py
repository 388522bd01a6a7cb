"""The ``em5m`` command line: inspect, convert and make EM volumes; list reference datasets.

Errors about the user's input (a missing file, a broken TIFF, ...) print one clear line and exit
with status 2; they are never shown as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from em5m import __version__
from em5m.errors import EMDataError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers like 40,4,4, got {text!r}") from err


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected integers like 32,512,512, got {text!r}"
        ) from err


def _cmd_info(args: argparse.Namespace) -> int:
    from em5m.io import open_volume

    vol = open_volume(args.uri, level=args.level)
    info = {
        "source": vol.source,
        "shape": list(vol.shape),
        "axes": "".join(vol.axes),
        "dtype": str(vol.dtype),
        "voxel_size_nm": list(vol.voxel_size) if vol.voxel_size else None,
        "chunks": [list(c[:1]) for c in vol.data.chunks],
        "format": vol.metadata.get("format"),
        "levels": vol.metadata.get("levels"),
    }
    print(json.dumps(info, indent=2, default=str))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from em5m.io import open_volume
    from em5m.write import save_volume

    vol = open_volume(args.src, level=args.level)
    if args.voxel_size is not None:
        vol = vol.replace(voxel_size=args.voxel_size)
    out = save_volume(vol, args.dst, overwrite=args.overwrite, label=args.labels)
    print(f"wrote {out} ({'x'.join(map(str, vol.shape))} {vol.dtype}, voxel {vol.voxel_size} nm)")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from em5m import datasets

    if args.name:
        print(json.dumps(datasets.info(args.name).describe(), indent=2, default=str))
        return 0
    for name in datasets.list_datasets():
        info = datasets.info(name)
        print(f"{name:24s} {info.title}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from em5m import synth
    from em5m.write import save_volume

    p = synth.phantom(
        args.shape, voxel_size=args.voxel_size, modality=args.modality, seed=args.seed
    )
    out = save_volume(p.to_volume(), args.out, overwrite=args.overwrite)
    print(f"wrote {out}: {args.modality} phantom {'x'.join(map(str, args.shape))}")
    return 0


def _cmd_curate(args: argparse.Namespace) -> int:
    from em5m.curate import CurateConfig, SampleOptions, curate
    from em5m.curate.report import summarize

    cfg = CurateConfig(sample=SampleOptions(unit_tiles=args.unit_tiles))
    report = curate(
        args.catalog,
        args.out,
        config=cfg,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=not args.quiet,
    )
    if args.quiet:
        print(summarize(report))
    return 0 if report["complete"] or not args.strict else 1


def _cmd_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from em5m.curate.stats import corpus_stats, histogram_png

    stats = corpus_stats(args.dir)
    png = histogram_png(stats, args.png or Path(args.dir) / "pixel_size_hist.png")
    stats["histogram_png"] = str(png)
    print(json.dumps(stats, indent=2))
    return 0


def _cmd_montage(args: argparse.Namespace) -> int:
    from em5m.curate.stats import montage

    path = montage(args.dir, args.out, n=args.n, seed=args.seed, tile_px=args.tile_px)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="em5m", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a volume (shape, axes, voxel size, levels)")
    p.add_argument("uri")
    p.add_argument("--level", type=int, default=0)
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="convert any readable volume to OME-Zarr or TIFF")
    p.add_argument("src")
    p.add_argument("dst", help="*.ome.zarr / *.zarr or *.tif")
    p.add_argument("--level", type=int, default=0)
    p.add_argument("--voxel-size", type=_floats, help="override, nm per spatial axis (z,y,x)")
    p.add_argument("--labels", action="store_true", help="integer labels: nearest-sample pyramid")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("datasets", help="list the reference EM datasets, or describe one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("phantom", help="write a procedural EM phantom volume")
    p.add_argument("out")
    p.add_argument("--shape", type=_ints, default=(32, 512, 512))
    p.add_argument("--voxel-size", type=_floats, default=(20.0, 5.0, 5.0))
    p.add_argument("--modality", choices=("sem", "tem"), default="sem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("curate", help="curate a dataset catalog into sharded 2D tiles + manifest")
    p.add_argument("catalog", help="catalog YAML")
    p.add_argument("--out", required=True, help="output directory (an earlier run is resumed)")
    p.add_argument("--scheduler", help="dask.distributed scheduler address (default: threads)")
    p.add_argument("--workers", type=int, help="local threads (default: CPU count)")
    p.add_argument("--unit-tiles", type=int, default=256, help="at most this many tiles per unit")
    p.add_argument("--quiet", action="store_true", help="no progress bars, summary only")
    p.add_argument("--strict", action="store_true", help="exit 1 when anything failed")
    p.set_defaults(func=_cmd_curate)

    p = sub.add_parser("stats", help="corpus counts by modality/species/organ; pixel-size PNG")
    p.add_argument("dir", help="curation output directory")
    p.add_argument("--png", help="histogram path (default DIR/pixel_size_hist.png)")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("montage", help="grid PNG of random tiles of a curated corpus")
    p.add_argument("dir", help="curation output directory")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile-px", type=int, default=128, help="size of each tile in the grid")
    p.set_defaults(func=_cmd_montage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EMDataError as err:
        print(f"em5m: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
